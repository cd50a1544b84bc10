"""XAES-256-GCM (engine.XAesGcm): the published vectors, the accumulated randomized test (10,000
iterations here, 1,000,000 through one batch call in the ``slow`` run), and differential tests
against an independent implementation on pyca/cryptography (tests/xaes_reference.py)."""

from __future__ import annotations

import hashlib
import os
import pickle

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import engine
from engine import (
    AesGcm,
    Batch,
    BatchInvalidTag,
    InvalidArgument,
    InvalidTag,
    SealedBatch,
    XAesGcm,
    hazmat,
)

import xaes_reference as ref
from vectors import XAES_ACCUMULATED, XaesVector, xaes

VECTORS = xaes()


# ---------------------------------------------------------------- the published vectors


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v.id)
def test_reference_reproduces_the_intermediate_values(v: XaesVector):
    assert ref.subkey(v.key) == (v.l, v.k1)
    assert ref.derive(v.key, v.nonce) == (v.kx, v.nx)
    assert ref.seal(v.key, v.nonce, v.plaintext, v.aad) == v.sealed


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v.id)
def test_vector_single_message(v: XaesVector):
    x = XAesGcm(v.key)
    assert x.encrypt(v.nonce, v.plaintext, v.aad) == v.sealed
    assert x.decrypt(v.nonce, v.sealed, v.aad) == v.plaintext
    # the derived key and nonce are plain AES-256-GCM
    assert AesGcm(v.kx).encrypt(v.nx, v.plaintext, v.aad) == v.sealed


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v.id)
@pytest.mark.parametrize("threads", [1, 2])
def test_vector_batch_paths(v: XaesVector, threads: int):
    x = XAesGcm(v.key)
    n = 300  # enough records for two threads
    nonces = np.frombuffer(v.nonce * n, np.uint8).reshape(n, 24)
    plain = Batch.from_list([v.plaintext] * n)
    sealed = x.seal_batch_into(plain, np.empty(plain.nbytes, np.uint8), v.aad, nonces=nonces,
                               threads=threads)
    assert {bytes(c) + t.tobytes() for c, t in zip(sealed.ciphertexts, sealed.tags)} == {v.sealed}
    assert x.open_batch(sealed, v.aad, threads=threads).to_list() == [v.plaintext] * n
    keys = np.frombuffer(v.key * n, np.uint8).reshape(n, 32)
    keyed = hazmat.seal_batch_with_keys(keys, plain, nonces, v.aad, threads=threads,
                                        cipher=XAesGcm)
    assert np.array_equal(keyed.tags, sealed.tags)
    assert keyed.ciphertexts == sealed.ciphertexts
    opened = hazmat.open_batch_with_keys(keys, keyed, v.aad, cipher=XAesGcm)
    assert opened.to_list() == [v.plaintext] * n


# ---------------------------------------------------------------- the accumulated test


def accumulated_inputs(n: int):
    """keys (n x 32), nonces (n x 24), plaintexts and AADs of the accumulated test: one SHAKE-128
    stream over empty input, read per iteration as key, nonce, a length byte and that many
    plaintext bytes, a length byte and that many AAD bytes."""
    from Crypto.Hash import SHAKE128

    xof = SHAKE128.new()
    stream = bytearray()
    most = 32 + 24 + 1 + 255 + 1 + 255
    key_at, pt_at, pt_len, aad_at, aad_len = [], [], [], [], []
    pos = 0
    for _ in range(n):
        if pos + most > len(stream):
            stream += xof.read(1 << 20)
        key_at.append(pos)
        pos += 56
        size = stream[pos]
        pt_at.append(pos + 1)
        pt_len.append(size)
        pos += 1 + size
        size = stream[pos]
        aad_at.append(pos + 1)
        aad_len.append(size)
        pos += 1 + size
    data = np.frombuffer(stream, np.uint8)
    at = np.array(key_at, np.int64)[:, None]
    whole = Batch(data, [0, data.shape[0]])
    return (data[at + np.arange(32)], data[at + 32 + np.arange(24)],
            whole.slices(pt_at, pt_len), whole.slices(aad_at, aad_len))


def accumulated_digest(sealed: SealedBatch) -> str:
    h = hashlib.shake_128()
    ct = memoryview(sealed.ciphertexts.data)
    for (a, b), tag in zip(zip(sealed.ciphertexts.offsets.tolist(),
                               sealed.ciphertexts.offsets[1:].tolist()), sealed.tags):
        h.update(ct[a:b])
        h.update(tag)
    return h.hexdigest(32)


def test_accumulated_10000_one_message_at_a_time():
    keys, nonces, plain, aad = accumulated_inputs(10_000)
    h = hashlib.shake_128()
    for key, nonce, p, a in zip(keys, nonces, plain, aad):
        h.update(XAesGcm(key).encrypt(nonce, p, a))
    assert h.hexdigest(32) == XAES_ACCUMULATED[10_000]


def test_accumulated_10000_in_one_batch():
    keys, nonces, plain, aad = accumulated_inputs(10_000)
    sealed = hazmat.seal_batch_with_keys(keys, plain, nonces, aad, cipher=XAesGcm)
    assert accumulated_digest(sealed) == XAES_ACCUMULATED[10_000]
    assert hazmat.open_batch_with_keys(keys, sealed, aad, cipher=XAesGcm) == plain


@pytest.mark.slow
def test_accumulated_1000000_in_one_batch():
    """A million records under a million keys and nonces in one native call: each record's key
    handle (subkey), derivation, key set-up and GCM run on the native threads."""
    keys, nonces, plain, aad = accumulated_inputs(1_000_000)
    sealed = hazmat.seal_batch_with_keys(keys, plain, nonces, aad, cipher=XAesGcm)
    assert accumulated_digest(sealed) == XAES_ACCUMULATED[1_000_000]


# ---------------------------------------------------------------- against the reference


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), nonce=st.binary(min_size=24, max_size=24),
       plaintext=st.binary(max_size=3000), aad=st.binary(max_size=100))
def test_single_messages_match_the_reference(key, nonce, plaintext, aad):
    sealed = XAesGcm(key).encrypt(nonce, plaintext, aad)
    assert sealed == ref.seal(key, nonce, plaintext, aad)
    assert XAesGcm(key).decrypt(nonce, sealed, aad) == plaintext


@settings(max_examples=40, deadline=None)
@given(key=st.binary(min_size=32, max_size=32),
       records=st.lists(st.binary(max_size=1500), max_size=40),
       per_record_aad=st.booleans(), threads=st.integers(1, 3))
def test_batches_match_the_reference(key, records, per_record_aad, threads):
    x = XAesGcm(key)
    aad = [os.urandom(i % 7) for i in range(len(records))] if per_record_aad else b"table:users"
    sealed = x.seal_batch(records, aad, threads=threads)
    assert sealed.nonces.shape == (len(records), 24)
    for i, (nonce, ct, tag) in enumerate(zip(sealed.nonces, sealed.ciphertexts, sealed.tags)):
        a = aad[i] if per_record_aad else aad
        assert bytes(ct) + tag.tobytes() == ref.seal(key, nonce.tobytes(), records[i], a)
    assert x.open_batch(sealed, aad, threads=threads).to_list() == records


@settings(max_examples=30, deadline=None)
@given(records=st.lists(st.binary(max_size=300), min_size=1, max_size=20))
def test_tokens_match_the_reference(records):
    key = os.urandom(32)
    x = XAesGcm(key)
    header = b"\xef\x03\x00\x00\x00\x07"
    tokens = x.seal_tokens(records, header, b"ctx")
    for record, token in zip(records, tokens):
        token = bytes(token)
        assert token[:6] == header and len(token) == 6 + 24 + len(record) + 16
        assert ref.open(key, token[6:30], token[30:], header + b"ctx") == record
    assert x.open_tokens(tokens, 6, b"ctx").to_list() == records
    text = x.seal_text_token(header, records[0], b"ctx", prefix=b"ef1:")
    assert x.open_text_token(text, 6, b"ctx", prefix=b"ef1:") == records[0]


def test_reference_ciphertexts_open_in_the_engine():
    key, nonces = os.urandom(32), [os.urandom(24) for _ in range(50)]
    records = [os.urandom(i * 37 % 2000) for i in range(50)]
    sealed = [ref.seal(key, n, r, b"aad") for n, r in zip(nonces, records)]
    batch = SealedBatch(nonces=nonces, tags=[s[-16:] for s in sealed],
                        ciphertexts=[s[:-16] for s in sealed])
    assert XAesGcm(key).open_batch(batch, b"aad").to_list() == records


# Batches of short records (at most 64 bytes of text and of AAD) take a path of their own on the
# ipsec-mb backend: two records at a time, key derivation and GCM in one native function.
SHORT_TEXT = list(range(0, 70)) + [127, 128, 191, 192, 255, 256, 300]
SHORT_AAD = [0, 1, 15, 16, 17, 33, 48, 63, 64, 65, 200]


@pytest.mark.parametrize("threads", [1, 2])
def test_every_short_shape_matches_the_reference(threads):
    """Every text length around the short paths' limits with every AAD length around them, in a
    shuffled order so that short records pair with short and with long ones; sealed as the
    reference seals, opened in place."""
    rng = np.random.default_rng(threads)
    shapes = [(n, a) for n in SHORT_TEXT for a in SHORT_AAD]
    shapes = [shapes[i] for i in rng.permutation(len(shapes))]
    key = os.urandom(32)
    x = XAesGcm(key)
    records = [os.urandom(n) for n, _ in shapes]
    aads = [os.urandom(a) for _, a in shapes]
    out = np.zeros(sum(n for n, _ in shapes), np.uint8)
    sealed = x.seal_batch_into(records, out, aads, threads=threads)
    for i, (nonce, ct, tag) in enumerate(zip(sealed.nonces, sealed.ciphertexts, sealed.tags)):
        assert bytes(ct) + tag.tobytes() == ref.seal(key, nonce.tobytes(), records[i], aads[i]), shapes[i]
    assert x.open_batch_into(sealed, out, aads, threads=threads).to_list() == records


@pytest.mark.parametrize("bad", [[0], [1], [0, 1], [3, 4], [6], [2, 5, 6]])
def test_tampered_short_records_fail_alone(bad):
    """A record that fails fails alone, whichever place it has in a pair: zeroed in a separate
    output, left as its ciphertext in place; its partner opens."""
    x = XAesGcm(os.urandom(32))
    records = [os.urandom(n) for n in (0, 5, 16, 64, 33, 64, 1)]
    aads = [os.urandom(n) for n in (3, 0, 64, 17, 0, 1, 50)]
    out = np.zeros(sum(map(len, records)), np.uint8)
    sealed = x.seal_batch_into(records, out, aads)
    ciphertexts = sealed.ciphertexts.to_list()
    tags = sealed.tags.copy()
    for i in bad:
        tags[i, 15] ^= 1
    tampered = SealedBatch(nonces=sealed.nonces, tags=tags, ciphertexts=sealed.ciphertexts)
    with pytest.raises(BatchInvalidTag) as err:
        x.open_batch(tampered, aads)
    assert err.value.failed.tolist() == bad
    assert err.value.result.to_list() == [bytes(len(r)) if i in bad else r for i, r in enumerate(records)]
    with pytest.raises(BatchInvalidTag) as err:
        x.open_batch_into(tampered, out, aads)  # in place
    assert err.value.result.to_list() == [ciphertexts[i] if i in bad else r for i, r in enumerate(records)]


# ---------------------------------------------------------------- refusals and tampering


def test_every_nonce_byte_is_authenticated():
    key, nonce = os.urandom(32), os.urandom(24)
    x = XAesGcm(key)
    sealed = x.encrypt(nonce, b"secret", b"aad")
    for i in range(24):
        bad = bytearray(nonce)
        bad[i] ^= 0x80
        with pytest.raises(InvalidTag):
            x.decrypt(bytes(bad), sealed, b"aad")
    with pytest.raises(InvalidTag):
        XAesGcm(os.urandom(32)).decrypt(nonce, sealed, b"aad")


def test_a_tampered_batch_record_is_reported_and_zeroed():
    x = XAesGcm(os.urandom(32))
    sealed = x.seal_batch([b"alice", b"bob", b"carol"])
    tags = sealed.tags.copy()
    tags[1, 3] ^= 1
    with pytest.raises(BatchInvalidTag) as err:
        x.open_batch(SealedBatch(nonces=sealed.nonces, tags=tags,
                                 ciphertexts=sealed.ciphertexts))
    assert err.value.failed.tolist() == [1]
    assert err.value.result.to_list() == [b"alice", bytes(3), b"carol"]


@pytest.mark.parametrize("size", [0, 12, 16, 23, 25, 32])
def test_nonces_must_be_24_bytes(size):
    x = XAesGcm(os.urandom(32))
    with pytest.raises(InvalidArgument, match="24 bytes"):
        x.encrypt(bytes(size), b"data")
    with pytest.raises(InvalidArgument, match="24 bytes"):
        x.decrypt(bytes(size), bytes(20))
    with pytest.raises(InvalidArgument, match="24 bytes"):
        x.seal_batch([b"data"], nonce_size=size)
    with pytest.raises(InvalidArgument, match="24 bytes"):
        x.seal_tokens([b"data"], b"h", nonce_size=size)
    sealed = AesGcm(os.urandom(32)).seal_batch([b"data"], nonce_size=16)
    with pytest.raises(InvalidArgument, match="24 bytes"):
        x.open_batch(sealed)


def test_xaes_and_aes_gcm_do_not_open_each_other():
    key, nonce = os.urandom(32), os.urandom(24)
    sealed = XAesGcm(key).encrypt(nonce, b"data")
    with pytest.raises(InvalidTag):
        AesGcm(key).decrypt(nonce, sealed)


def test_keyed_batches_check_their_keys():
    with pytest.raises(InvalidArgument, match="keys"):
        hazmat.seal_batch_with_keys(np.zeros((2, 31), np.uint8), [b"a", b"b"],
                                    np.zeros((2, 24), np.uint8), cipher=XAesGcm)
    with pytest.raises(InvalidArgument, match="nonces"):
        hazmat.seal_batch_with_keys(np.zeros((2, 32), np.uint8), [b"a", b"b"],
                                    np.zeros((2, 16), np.uint8), cipher=XAesGcm)
    keys = np.frombuffer(os.urandom(64), np.uint8).reshape(2, 32)
    sealed = hazmat.seal_batch_with_keys(keys, [b"a", b"b"], np.zeros((2, 24), np.uint8),
                                         cipher=XAesGcm)
    swapped = keys[::-1].copy()
    with pytest.raises(BatchInvalidTag) as err:
        hazmat.open_batch_with_keys(swapped, sealed, cipher=XAesGcm)
    assert err.value.failed.tolist() == [0, 1]
    # the same call does AES-256-GCM on AesGcm
    plain = hazmat.seal_batch_with_keys(keys, [b"a", b"b"], np.zeros((2, 16), np.uint8))
    second = bytes(plain.ciphertexts[1]) + plain.tags[1].tobytes()
    assert AesGcm(keys[1]).decrypt(bytes(16), second) == b"b"


def test_shape_of_the_class():
    x = XAesGcm(XAesGcm.generate_key())
    assert isinstance(x, AesGcm) and x.ALGORITHM == "xaes-256-gcm" and x.NONCE_SIZE == 24
    assert XAesGcm.encrypt is AesGcm.encrypt  # ordinary methods, shared
    assert not hasattr(x, "__dict__")
    assert repr(x) == f"<XAesGcm backend={x.backend!r}>"
    with pytest.raises(TypeError):
        pickle.dumps(x)
    with pytest.raises(InvalidArgument, match="32 bytes"):
        XAesGcm(bytes(16))
    derived, _ = x.derive(b"info")
    assert type(derived) is AesGcm
    assert engine.XAesGcm is XAesGcm
