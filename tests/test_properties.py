"""Property tests against two independent implementations: pyca/cryptography and pycryptodome."""

from __future__ import annotations

from Crypto.Cipher import AES
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
