"""Property tests against two independent implementations: pyca/cryptography and pycryptodome."""

from __future__ import annotations

import os

import numpy as np
import pytest
from Crypto.Cipher import AES
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings, strategies as st

import engine

keys = st.binary(min_size=32, max_size=32)
nonces = st.sampled_from([8, 12, 16, 24, 64, 128]).flatmap(lambda n: st.binary(min_size=n, max_size=n))
payloads = st.one_of(st.binary(max_size=256), st.binary(min_size=256, max_size=64 * 1024))
aads = st.one_of(st.none(), st.binary(max_size=512))


def pycryptodome_seal(key, nonce, data, aad):
    c = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=16)
    if aad:
        c.update(aad)
    ct, tag = c.encrypt_and_digest(data)
    return ct + tag


def pycryptodome_open(key, nonce, sealed, aad):
    c = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=16)
    if aad:
        c.update(aad)
    return c.decrypt_and_verify(sealed[:-16], sealed[-16:])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=keys, nonce=nonces, data=payloads, aad=aads)
def test_three_implementations_agree(key, nonce, data, aad):
    ours = engine.AesGcm(key).encrypt(nonce, data, aad)
    assert ours == AESGCM(key).encrypt(nonce, data, aad)
    assert ours == pycryptodome_seal(key, nonce, data, aad)
    assert engine.AesGcm(key).decrypt(nonce, pycryptodome_seal(key, nonce, data, aad), aad) == data
    assert AESGCM(key).decrypt(nonce, ours, aad) == data
    assert pycryptodome_open(key, nonce, ours, aad) == data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=keys,
    values=st.lists(st.binary(max_size=3000), max_size=40),
    nonce_size=st.sampled_from([12, 16, 32]),
    shared_aad=aads,
    threads=st.integers(1, 4),
)
def test_batch_equals_single_record_results(key, values, nonce_size, shared_aad, threads):
    a = engine.AesGcm(key)
    sealed = a.seal_batch(values, shared_aad, nonce_size=nonce_size, threads=threads)
    ref = AESGCM(key)
    for i, v in enumerate(values):
        nonce = sealed.nonces[i].tobytes()
        one = sealed.ciphertexts[i].tobytes() + sealed.tags[i].tobytes()
        assert one == a.encrypt(nonce, v, shared_aad) == ref.encrypt(nonce, v, shared_aad)
    assert a.open_batch(sealed, shared_aad, threads=threads).to_list() == values


# ---- per-record AAD: each record against the single-record reference ----
# A round trip cannot see a bug that seal and open share (the wrong record's AAD, AAD bytes
# taken from the wrong place, header and AAD joined in the wrong order). Each record is
# therefore compared with cryptography's AESGCM given the same key, nonce and AAD, in both
# directions; on the token path the AAD is header || the caller's AAD (header alone without one).

per_record = st.lists(st.tuples(st.binary(max_size=600), st.binary(max_size=80)), max_size=40)


def token_parts(token: bytes, header_len: int, nonce_len: int):
    return token[header_len:header_len + nonce_len], token[header_len + nonce_len:]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=keys, records=per_record, nonce_size=st.sampled_from([12, 16, 32]),
       threads=st.integers(1, 3))
def test_batch_with_per_record_aad_equals_the_reference(key, records, nonce_size, threads):
    values, aads = [r[0] for r in records], [r[1] for r in records]
    ref = AESGCM(key)
    sealed = engine.AesGcm(key).seal_batch(values, aads, nonce_size=nonce_size, threads=threads)
    check_sealed_against_reference(ref, sealed, values, aads)
    check_opening_reference_records(engine.AesGcm(key), ref, values, aads, nonce_size, threads)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=keys, records=per_record, header=st.binary(max_size=12), bind=st.booleans(),
       nonce_size=st.sampled_from([12, 16]), threads=st.integers(1, 3))
def test_tokens_with_per_record_aad_equal_the_reference(key, records, header, bind, nonce_size,
                                                        threads):
    values, aads = [r[0] for r in records], [r[1] for r in records]
    check_tokens_against_reference(engine.AesGcm(key), AESGCM(key), values, aads, header, bind,
                                   nonce_size, threads)


def check_sealed_against_reference(ref, sealed, values, aads):
    for i, (value, aad) in enumerate(zip(values, aads)):
        got = sealed.ciphertexts[i].tobytes() + sealed.tags[i].tobytes()
        assert got == ref.encrypt(sealed.nonces[i].tobytes(), value, aad), i


def check_opening_reference_records(aead, ref, values, aads, nonce_size, threads):
    """Records sealed by the reference open with their own AAD, and a record given its
    neighbour's AAD fails alone."""
    nonces = [os.urandom(nonce_size) for _ in values]
    theirs = [ref.encrypt(n, v, aad) for n, v, aad in zip(nonces, values, aads)]
    sealed = engine.SealedBatch(
        nonces=np.frombuffer(b"".join(nonces), np.uint8).reshape(len(values), nonce_size),
        tags=[t[-16:] for t in theirs], ciphertexts=[t[:-16] for t in theirs])
    assert aead.open_batch(sealed, aads, threads=threads).to_list() == values
    if len(values) >= 2 and aads[0] != aads[1]:
        swapped = [aads[1], aads[0], *aads[2:]]
        try:
            aead.open_batch(sealed, swapped, threads=threads)
        except engine.BatchInvalidTag as err:
            assert err.failed.tolist() == [0, 1]
        else:
            raise AssertionError("records opened under each other's AAD")


def check_tokens_against_reference(aead, ref, values, aads, header, bind, nonce_size, threads):
    tokens = aead.seal_tokens(values, header, aads, bind_header=bind, nonce_size=nonce_size,
                              threads=threads)
    for i, (value, aad) in enumerate(zip(values, aads)):
        token = tokens[i].tobytes()
        assert token[:len(header)] == header
        nonce, sealed = token_parts(token, len(header), nonce_size)
        assert ref.decrypt(nonce, sealed, header + aad if bind else aad) == value, i
    theirs = []
    for value, aad in zip(values, aads):
        nonce = os.urandom(nonce_size)
        theirs.append(header + nonce + ref.encrypt(nonce, value, header + aad if bind else aad))
    opened = aead.open_tokens(theirs, len(header), aads, bind_header=bind, nonce_size=nonce_size,
                              threads=threads)
    assert opened.to_list() == values


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_large_batches_with_per_record_aad_equal_the_reference_at_every_position(threads):
    """Thousands of records of mixed sizes: the batch is split across threads, so every record
    position, both sides of each split, is compared with the reference."""
    rng = np.random.default_rng(threads)
    values = [os.urandom(int(n)) for n in rng.integers(0, 700, 2500)]
    aads = [os.urandom(int(n)) for n in rng.integers(0, 90, 2500)]
    key = os.urandom(32)
    aead, ref = engine.AesGcm(key), AESGCM(key)
    check_sealed_against_reference(ref, aead.seal_batch(values, aads, threads=threads), values, aads)
    check_opening_reference_records(aead, ref, values, aads, 16, threads)
    check_tokens_against_reference(aead, ref, values, aads, b"\xef\x01\x00\x00\x00\x07", True, 16,
                                   threads)


@pytest.mark.parametrize("threads", [1, 2])
def test_encrypt_many_with_per_record_aad_binds_header_and_aad(threads):
    from engine.formats.wire import token_header
    from engine.keys import StaticKeyProvider
    from engine.service import EncryptionService

    key = os.urandom(32)
    service = EncryptionService(StaticKeyProvider({1: key}), threads=threads, metrics=False)
    values = [os.urandom(n % 300) for n in range(2000)]
    aads = [f"row:{n}".encode() for n in range(2000)]
    tokens = service.encrypt_many(values, aads, binary=True)
    header, ref = token_header(1), AESGCM(key)
    for i in range(0, 2000, 7):
        token = tokens[i].tobytes()
        nonce, sealed = token_parts(token, len(header), 16)
        assert token[:len(header)] == header
        assert ref.decrypt(nonce, sealed, header + aads[i]) == values[i]
