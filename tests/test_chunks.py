"""AesGcm.seal_chunks_into / open_chunks_into (runs of C2SP chunked-encryption chunks, nonces
derived natively) against pyca/cryptography's AESGCM, one chunk at a time, on every backend
built here."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings, strategies as st

import engine
from engine import _native

BACKENDS = [b for b in _native.BACKENDS if _native.backend_available(b)]
CHUNK, SEALED = 16384, 16400
LAST = 1 << 38  # chunk indexes stay below this


def reference_seal(key: bytes, base: bytes, first: int, data: bytes, final: bool) -> bytes:
    aead, out = AESGCM(key), []
    n = len(data) // CHUNK + (1 if final else 0)
    for j in range(n):
        nonce = (int.from_bytes(base, "big") ^ (first + j)).to_bytes(12, "big")
        out.append(aead.encrypt(nonce, data[j * CHUNK:(j + 1) * CHUNK], b""))
    return b"".join(out)


runs = st.tuples(st.integers(0, 4), st.booleans(), st.integers(0, CHUNK - 1)).map(
    lambda t: (t[0] * CHUNK + (t[2] if t[1] else 0), t[1]))
firsts = st.one_of(st.integers(0, 1000), st.integers(LAST - 6, LAST - 5), st.integers(0, LAST - 6))


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), base=st.binary(min_size=12, max_size=12),
       first=firsts, run=runs, threads=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_runs_match_cryptography(backend, key, base, first, run, threads, seed):
    size, final = run
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    aead = engine.AesGcm(key, backend=backend)
    out = bytearray(size + 16 * 6)
    written = aead.seal_chunks_into(base, first, data, out, final=final, threads=threads)
    expected = reference_seal(key, base, first, data, final)
    assert written == len(expected) and bytes(out[:written]) == expected
    back = np.full(size + 1, 0xEE, dtype=np.uint8)
    n = size // CHUNK + (1 if final else 0)
    assert aead.open_chunks_into(base, first, expected, back, final=final, threads=threads) == n
    assert back[:size].tobytes() == data and back[size] == 0xEE


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bad_chunk_stops_the_run_and_nothing_after_it_is_released(backend):
    key, base = bytes(range(32)), bytes(range(12))
    aead = engine.AesGcm(key, backend=backend)
    data = np.random.default_rng(1).integers(0, 256, 5 * CHUNK + 77, dtype=np.uint8).tobytes()
    sealed = bytearray(reference_seal(key, base, 40, data, True))
    for bad, where in ((0, 3), (2, CHUNK + 15), (5, len(sealed) - 1)):
        tampered = bytearray(sealed)
        tampered[bad * SEALED + where if bad < 5 else where] ^= 1
        out = np.full(len(data), 0xEE, dtype=np.uint8)
        assert aead.open_chunks_into(base, 40, tampered, out, final=True, threads=2) == bad
        assert out[:bad * CHUNK].tobytes() == data[:bad * CHUNK]
        assert not out[bad * CHUNK:].any()  # the failed chunk and every later one: zeros
    # a run opened at another index, or as not final, fails at its first chunk
    out = np.empty(len(data), dtype=np.uint8)
    assert aead.open_chunks_into(base, 41, sealed, out, final=True) == 0 and not out.any()
    assert aead.open_chunks_into(base, 40, sealed[:5 * SEALED], out[:5 * CHUNK]) == 5
    assert aead.open_chunks_into(base, 40, sealed[SEALED:3 * SEALED], out[:2 * CHUNK]) == 0


def test_arguments():
    aead = engine.AesGcm(bytes(32))
    data, out = bytes(CHUNK), bytearray(2 * SEALED)
    with pytest.raises(engine.InvalidArgument):
        aead.seal_chunks_into(bytes(11), 0, data, out)
    with pytest.raises(engine.InvalidArgument):
        aead.seal_chunks_into(bytes(12), 0, data[:-1], out)  # not whole chunks, not final
    with pytest.raises(engine.InvalidArgument):
        aead.seal_chunks_into(bytes(12), -1, data, out)
    with pytest.raises(engine.InvalidArgument):
        aead.seal_chunks_into(bytes(12), 0, data, bytearray(SEALED - 1))
    with pytest.raises(engine.InvalidArgument):  # output over the input
        buf = bytearray(2 * SEALED)
        aead.seal_chunks_into(bytes(12), 0, memoryview(buf)[:CHUNK], memoryview(buf)[100:])
    with pytest.raises(engine.MessageTooLong):
        aead.seal_chunks_into(bytes(12), LAST - 1, data, out, final=True)  # index 2**38
    assert aead.seal_chunks_into(bytes(12), LAST - 1, data, out) == SEALED
    with pytest.raises(engine.InvalidArgument):
        aead.open_chunks_into(bytes(12), 0, bytes(SEALED + 15), out, final=True)
    with pytest.raises(engine.InvalidArgument):
        aead.open_chunks_into(bytes(12), 0, bytes(SEALED + 16), out)
    with pytest.raises(engine.InvalidArgument):
        aead.open_chunks_into(bytes(12), 0, bytes(SEALED), bytes(CHUNK))  # read-only output
    with pytest.raises(engine.InvalidArgumentType):
        aead.seal_chunks_into("base nonce!!", 0, data, out)
    with pytest.raises(engine.InvalidArgument):  # chunked encryption is AES-256-GCM only
        engine.XAesGcm(bytes(32)).seal_chunks_into(bytes(12), 0, data, out)
    # empty final chunk: its tag alone
    assert aead.seal_chunks_into(bytes(12), 0, b"", out, final=True) == 16
    assert bytes(out[:16]) == AESGCM(bytes(32)).encrypt(bytes(12), b"", b"")
