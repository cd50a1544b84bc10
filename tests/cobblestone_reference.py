"""An independent implementation of c2sp.org/chunked-encryption (Cobblestone-256), written from
the specification on pyca/cryptography's HKDFExpand and AESGCM, for differential tests. Short
and slow on purpose: one chunk at a time, no shared code with the engine."""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

CHUNK = 16384
LABEL = b"c2sp.org/chunked-encryption@v1+" + b"AEAD_AES_256_GCM" + b"\x00"


class Invalid(Exception):
    pass


def keys(key: bytes, salt: bytes, context: bytes) -> tuple[bytes, bytes, bytes]:
    okm = HKDFExpand(hashes.SHA512(), 32 + 12 + 32, LABEL + salt + context).derive(key)
    return okm[:32], okm[32:44], okm[44:]


def nonce(base: bytes, i: int) -> bytes:
    return (int.from_bytes(base, "big") ^ i).to_bytes(12, "big")


def raw_seal(aead_key: bytes, base: bytes, message: bytes) -> bytes:
    aead, out, i = AESGCM(aead_key), [], 0
    while True:
        part = message[i * CHUNK:(i + 1) * CHUNK]
        out.append(aead.encrypt(nonce(base, i), part, b""))
        if len(part) < CHUNK:
            return b"".join(out)
        i += 1


def raw_open(aead_key: bytes, base: bytes, chunks: bytes) -> bytes:
    aead, out, i, pos = AESGCM(aead_key), [], 0, 0
    while True:
        part = chunks[pos:pos + CHUNK + 16]
        if len(part) < 16:
            raise Invalid("truncated")
        try:
            out.append(aead.decrypt(nonce(base, i), part, b""))
        except Exception:
            raise Invalid(f"chunk {i}") from None
        pos += len(part)
        if len(part) < CHUNK + 16:
            if pos != len(chunks):
                raise Invalid("trailing data")
            return b"".join(out)
        i += 1


def seal(key: bytes, message: bytes, context: bytes, salt: bytes) -> bytes:
    aead_key, base, commitment = keys(key, salt, context)
    return salt + commitment + raw_seal(aead_key, base, message)


def open_(key: bytes, ciphertext: bytes, context: bytes) -> bytes:
    if len(key) != 32:
        raise Invalid("key size")
    if len(ciphertext) < 56:
        raise Invalid("header")
    aead_key, base, commitment = keys(key, ciphertext[:24], context)
    if not hmac.compare_digest(commitment, ciphertext[24:56]):
        raise Invalid("commitment")
    return raw_open(aead_key, base, ciphertext[56:])
