"""Known-answer tests: NIST CAVP (always) and Wycheproof (when ../shared/vectors exists),
through the single-message API and the batch API, valid and invalid records alike."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from vectors import GcmVector, SHARED_VECTORS, cavp, wycheproof_aes_gcm

CAVP_ENCRYPT = cavp("gcmEncryptExtIV256.rsp")
CAVP_DECRYPT = cavp("gcmDecrypt256.rsp")
WYCHEPROOF = wycheproof_aes_gcm()


def usable(v: GcmVector) -> bool:
    return engine.aead.NONCE_MIN_BYTES <= len(v.iv) <= engine.aead.NONCE_MAX_BYTES


def test_vector_files_cover_what_we_claim():
    ivs = {len(v.iv) for v in CAVP_ENCRYPT}
    assert {12, 128} <= ivs  # 96-bit and 1024-bit IVs
    assert len(CAVP_ENCRYPT) > 1000
    assert sum(not v.valid for v in CAVP_DECRYPT) > 100


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


def _by_key_and_iv_size(vectors):
    groups: dict[tuple[bytes, int], list[GcmVector]] = {}
    for v in vectors:
        if usable(v):
            groups.setdefault((v.key, len(v.iv)), []).append(v)
    return groups


@pytest.mark.parametrize("threads", [1, 2])
def test_cavp_through_the_batch_path(threads):
    """Every usable CAVP record, sealed and opened in batches (one batch per key and IV size),
    with the vectors' own nonces; invalid decrypt records must be exactly the failed ones."""
    for (key, iv_size), vs in _by_key_and_iv_size(CAVP_ENCRYPT + CAVP_DECRYPT).items():
        a = engine.AesGcm(key)
        nonces = np.frombuffer(b"".join(v.iv for v in vs), np.uint8).reshape(len(vs), iv_size)
        aad = engine.Batch.from_list([v.aad for v in vs])
        valid = [v for v in vs if v.valid]
        if valid:
            idx = [i for i, v in enumerate(vs) if v.valid]
            sealed = a.seal_batch_into(
                [v.plaintext for v in valid],
                np.empty(sum(len(v.plaintext) for v in valid), np.uint8),
                [v.aad for v in valid],
                nonce_size=iv_size,
                nonces=nonces[idx],
                threads=threads,
            )
            assert sealed.ciphertexts.to_list() == [v.ciphertext for v in valid]
            assert [t.tobytes() for t in sealed.tags] == [v.tag for v in valid]
        sealed = engine.SealedBatch(
            nonces=nonces,
            tags=[v.tag for v in vs],
            ciphertexts=[v.ciphertext for v in vs],
        )
        expected_failed = [i for i, v in enumerate(vs) if not v.valid]
        if expected_failed:
            with pytest.raises(engine.BatchInvalidTag) as err:
                a.open_batch(sealed, aad, threads=threads)
            assert err.value.failed.tolist() == expected_failed
            result = err.value.result
        else:
            result = a.open_batch(sealed, aad, threads=threads)
        for i, v in enumerate(vs):
            assert result[i].tobytes() == (v.plaintext if v.valid else bytes(len(v.ciphertext)))


@pytest.mark.skipif(not WYCHEPROOF, reason=f"Wycheproof vectors not found in {SHARED_VECTORS}")
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
