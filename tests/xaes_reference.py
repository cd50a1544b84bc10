"""An independent implementation of c2sp.org/XAES-256-GCM, written from the specification on
pyca/cryptography's AES-ECB (the derivation) and AESGCM (the rest), for differential tests.
Short and slow on purpose: one message at a time, no shared code with the engine."""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def _aes(key: bytes, block: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def subkey(key: bytes) -> tuple[bytes, bytes]:
    """(L, K1): L = AES-256_K(0^128), K1 = L << 1, with 0x87 folded in when L's top bit is set."""
    l_block = _aes(key, bytes(16))
    k1 = int.from_bytes(l_block, "big") << 1
    if k1 >> 128:
        k1 ^= (1 << 128) | 0x87
    return l_block, k1.to_bytes(16, "big")


def derive(key: bytes, nonce: bytes) -> tuple[bytes, bytes]:
    """(Kx, Nx) for a 24-byte nonce."""
    assert len(key) == 32 and len(nonce) == 24
    _, k1 = subkey(key)
    m1 = b"\x00\x01X\x00" + nonce[:12]
    m2 = b"\x00\x02X\x00" + nonce[:12]
    xor = lambda a, b: bytes(x ^ y for x, y in zip(a, b))  # noqa: E731
    return _aes(key, xor(m1, k1)) + _aes(key, xor(m2, k1)), nonce[12:]


def seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """ciphertext || tag."""
    kx, nx = derive(key, nonce)
    return AESGCM(kx).encrypt(nx, plaintext, aad)


def open(key: bytes, nonce: bytes, sealed: bytes, aad: bytes = b"") -> bytes:  # noqa: A001
    """The plaintext; raises cryptography's InvalidTag."""
    kx, nx = derive(key, nonce)
    return AESGCM(kx).decrypt(nx, sealed, aad)
