"""AesGcm.derive (native HKDF-Expand-SHA512 from a key handle) against pyca/cryptography's
HKDFExpand and AESGCM, on every backend built here."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from hypothesis import given, settings, strategies as st

import engine
from engine import _native

BACKENDS = [b for b in _native.BACKENDS if _native.backend_available(b)]


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), info=st.binary(max_size=3000),
       extra=st.integers(0, 224), message=st.binary(max_size=200))
def test_derive_matches_cryptography(backend, key, info, extra, message):
    derived, extra_bytes = engine.AesGcm(key, backend=backend).derive(info, extra=extra)
    okm = HKDFExpand(hashes.SHA512(), 32 + extra, info).derive(key)
    assert extra_bytes == okm[32:]
    assert derived.backend == backend
    nonce = bytes(12)
    assert derived.encrypt(nonce, message) == AESGCM(okm[:32]).encrypt(nonce, message, None)
    batch = engine.Batch.from_list([message, message[:5]])
    nonces = np.frombuffer(bytes(range(24)), dtype=np.uint8).reshape(2, 12)
    sealed = derived.seal_batch_into(batch, bytearray(batch.nbytes), nonces=nonces, nonce_size=12)
    assert bytes(sealed.ciphertexts[1]) + sealed.tags[1].tobytes() == \
        AESGCM(okm[:32]).encrypt(bytes(range(12, 24)), message[:5], None)


def test_derive_arguments():
    aead = engine.AesGcm(bytes(32))
    with pytest.raises(engine.InvalidArgumentType):
        aead.derive("text")
    for bad in (-1, 225, 1.0, True):
        with pytest.raises(engine.InvalidArgument):
            aead.derive(b"", extra=bad)
    derived, extra = aead.derive(memoryview(b"info"), extra=0)
    assert extra == b"" and repr(derived) == f"<AesGcm backend={aead.backend!r}>"
    with pytest.raises(TypeError):
        __import__("pickle").dumps(derived)
