"""Known-answer tests: NIST CAVP and Wycheproof (carried in tests/data/wycheproof),
through the single-message API and the batch API, valid and invalid records alike."""

from __future__ import annotations

import numpy as np
import pytest

import engine

from vectors import GcmVector, cavp, wycheproof_aes_gcm

CAVP_ENCRYPT = cavp("gcmEncryptExtIV256.rsp")
CAVP_DECRYPT = cavp("gcmDecrypt256.rsp")
WYCHEPROOF = wycheproof_aes_gcm()

pytestmark = pytest.mark.vectors  # a skipped test here fails the run (tests/conftest.py)


def usable(v: GcmVector) -> bool:
    return engine.aead.NONCE_MIN_BYTES <= len(v.iv) <= engine.aead.NONCE_MAX_BYTES


def test_vector_files_cover_what_we_claim():
    ivs = {len(v.iv) for v in CAVP_ENCRYPT}
    assert {12, 128} <= ivs  # 96-bit and 1024-bit IVs
    assert len(CAVP_ENCRYPT) > 1000
    assert sum(not v.valid for v in CAVP_DECRYPT) > 100
    assert len(WYCHEPROOF) == 105 and sum(not v.valid for v in WYCHEPROOF) > 20


@pytest.mark.parametrize("v", CAVP_ENCRYPT, ids=lambda v: v.id)
def test_cavp_encrypt(v: GcmVector):
    a = engine.AesGcm(v.key)
    if not usable(v):
        with pytest.raises(engine.InvalidArgument):
            a.encrypt(v.iv, v.plaintext, v.aad)
        return
    assert a.encrypt(v.iv, v.plaintext, v.aad) == v.ciphertext + v.tag
    assert a.decrypt(v.iv, v.ciphertext + v.tag, v.aad) == v.plaintext


@pytest.mark.parametrize("v", CAVP_DECRYPT, ids=lambda v: v.id)
def test_cavp_decrypt(v: GcmVector):
    a = engine.AesGcm(v.key)
    if not usable(v):
        with pytest.raises(engine.InvalidArgument):
            a.decrypt(v.iv, v.ciphertext + v.tag, v.aad)
    elif v.valid:
        assert a.decrypt(v.iv, v.ciphertext + v.tag, v.aad) == v.plaintext
    else:
        with pytest.raises(engine.InvalidTag):
            a.decrypt(v.iv, v.ciphertext + v.tag, v.aad)


# ---- through the batch API: every vector inside a real multi-record batch ----
# CAVP gives every record its own key, and a batch has one key and one nonce size, so each
# vector is sealed and opened inside a batch of its own key and nonce size where it appears
# three times (first, middle, last) among unrelated records: other vectors' plaintexts and AADs
# (other lengths), fresh nonces, and one large record that makes the native code split the batch
# across two threads with the vector on both sides of the split. Every record carries its own
# AAD. The vector's copies must give the known answer at every position; the other records must
# match cryptography's AESGCM given the same nonce and AAD.

SPLIT_FILLER = bytes(range(256)) * 2400  # ~600 KB: two threads' worth of work
LAYOUT = ["v", 0, 1, "big", "v", 2, 3, "v"]
POSITIONS = [i for i, part in enumerate(LAYOUT) if part == "v"]
USABLE = [v for v in CAVP_ENCRYPT + CAVP_DECRYPT if usable(v)]


def kat_batch(v: GcmVector, rng, big: bytes):
    """(plaintexts, aads, nonces) of the batch around vector ``v``; fillers from other vectors."""
    others = rng.sample(USABLE, 4)
    plaintexts, aads, nonces = [], [], []
    for part in LAYOUT:
        if part == "v":
            plaintexts.append(v.plaintext), aads.append(v.aad), nonces.append(v.iv)
        else:
            other = others[0] if part == "big" else others[part]
            plaintexts.append(big if part == "big" else other.plaintext or other.ciphertext)
            aads.append(other.aad)
            nonces.append(rng.randbytes(len(v.iv)))
    return plaintexts, aads, np.frombuffer(b"".join(nonces), np.uint8).reshape(len(LAYOUT), -1)


def same(view, data: bytes) -> bool:
    return np.array_equal(np.asarray(view), np.frombuffer(data, np.uint8))


@pytest.mark.parametrize("threads", [1, 2])
def test_cavp_inside_multi_record_batches(threads):
    import random

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    rng = random.Random(2024)
    big = SPLIT_FILLER if threads > 1 else SPLIT_FILLER[:1000]  # one thread: no split to force
    out = np.zeros(2 * len(SPLIT_FILLER), np.uint8)  # reused: no fresh pages to fault in each time
    for v in USABLE:
        a, ref = engine.AesGcm(v.key), AESGCM(v.key)
        plaintexts, aads, nonces = kat_batch(v, rng, big)
        aads = engine.Batch.from_list(aads)
        expected = [v.ciphertext + v.tag if i in POSITIONS else ref.encrypt(n.tobytes(), p, aad)
                    for i, (n, p, aad) in enumerate(zip(nonces, plaintexts, aads.to_list()))]
        if v.valid:
            sealed = a.seal_batch_into(plaintexts, out, aads, nonce_size=len(v.iv), nonces=nonces,
                                       threads=threads)
            for i, want in enumerate(expected):
                assert same(sealed.ciphertexts[i], want[:-16]) and same(sealed.tags[i], want[-16:]), (
                    v.id, i)
            result = a.open_batch_into(sealed, out, aads, threads=threads)  # in place
        else:
            sealed = engine.SealedBatch(nonces=nonces, tags=[e[-16:] for e in expected],
                                        ciphertexts=[e[:-16] for e in expected])
            with pytest.raises(engine.BatchInvalidTag) as err:
                a.open_batch_into(sealed, out, aads, threads=threads)
            assert err.value.failed.tolist() == POSITIONS, v.id
            result = err.value.result
            for i in POSITIONS:
                plaintexts[i] = bytes(len(v.ciphertext))
        for i, plaintext in enumerate(plaintexts):
            assert same(result[i], plaintext), (v.id, i)


@pytest.mark.parametrize("v", WYCHEPROOF, ids=lambda v: v.id)
def test_wycheproof(v: GcmVector):
    a = engine.AesGcm(v.key)
    if not usable(v):
        # IVs under 8 bytes (including empty) or over 128 bytes are refused before any crypto.
        with pytest.raises(engine.InvalidArgument):
            a.decrypt(v.iv, v.ciphertext + v.tag, v.aad)
        return
    if v.valid:
        assert a.encrypt(v.iv, v.plaintext, v.aad) == v.ciphertext + v.tag
        assert a.decrypt(v.iv, v.ciphertext + v.tag, v.aad) == v.plaintext
    else:
        with pytest.raises(engine.InvalidTag):
            a.decrypt(v.iv, v.ciphertext + v.tag, v.aad)
