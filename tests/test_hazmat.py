"""engine.hazmat: the calls that take raw keys and nonces live there and nowhere friendlier."""

from __future__ import annotations

import pytest

import engine
from engine import AesGcm, InvalidArgumentType, hazmat, stream


def test_raw_key_and_nonce_calls_are_only_in_hazmat():
    assert sorted(hazmat.__all__) == ["ChunkCipher", "open_batch_with_keys",
                                      "seal_batch_with_keys"]
    for name in hazmat.__all__:
        assert not hasattr(engine, name) and name not in engine.__all__
        assert not hasattr(stream, name) and name not in stream.__all__
        assert not hasattr(AesGcm, name)


def test_seal_batch_with_keys_round_trips_and_refuses_a_non_cipher():
    keys = [bytes([i]) * 32 for i in range(3)]
    nonces = [bytes([i]) * 16 for i in range(3)]
    sealed = hazmat.seal_batch_with_keys(keys, [b"a", b"bb", b"ccc"], nonces, b"aad")
    assert AesGcm(keys[2]).decrypt(nonces[2], bytes(sealed.ciphertexts[2])
                                   + sealed.tags[2].tobytes(), b"aad") == b"ccc"
    assert hazmat.open_batch_with_keys(keys, sealed, b"aad").to_list() == [b"a", b"bb", b"ccc"]
    with pytest.raises(InvalidArgumentType, match="cipher must be"):
        hazmat.seal_batch_with_keys(keys, [b"a"] * 3, nonces, cipher="aes-256-gcm")
