"""XAES-256-GCM (c2sp.org/XAES-256-GCM): :class:`XAesGcm`, AES-256-GCM with 24-byte nonces.

One AES-256-GCM key with random 12- or 16-byte nonces is good for 2**32 messages (NIST SP
800-38D 8.3). XAES-256-GCM derives each message's AES-256-GCM key from the key and the first 12
bytes of a 24-byte nonce (a NIST SP 800-108r1 counter KDF with CMAC-AES-256: two AES block
encryptions) and uses the last 12 as the GCM nonce, so random nonces are safe for practically
unlimited messages under one key (2**80 at a collision risk of 2**-32). It costs a key
expansion and two AES blocks per message; it is neither key-committing nor nonce-misuse
resistant. The derivation runs natively, per record, inside the same batch calls as AES-GCM.
"""

from __future__ import annotations

from . import _native
from .aead import AesGcm
from .errors import InvalidArgument, InvalidArgumentType

__all__ = ["NONCE_BYTES", "XAesGcm"]

NONCE_BYTES = _native.XAES_NONCE_BYTES


class XAesGcm(AesGcm):
    """XAES-256-GCM with a 32-byte key and 24-byte nonces, in the shape of :class:`AesGcm`.

    Every method of :class:`AesGcm` works the same way (``encrypt``/``decrypt``, the batch,
    in-place and token calls; per-record keys through :mod:`engine.hazmat`), with nonces of
    exactly 24 bytes: drawn natively when a batch or token is sealed, given by the caller for
    single messages. The subkey of the derivation is computed once, here; each message key is
    expanded on the thread that uses it and wiped when that thread's records are done.
    :meth:`derive` gives an :class:`AesGcm`.

    Args:
        key: 32 bytes, any bytes-like object.
        backend: ``"ipsec-mb"``, ``"openssl"`` or ``None`` (``$ENGINE_BACKEND``, else the fastest).

    Raises:
        InvalidArgumentType: ``key`` is not bytes-like.
        InvalidArgument: ``key`` is not 32 bytes, or an unknown backend.
        BackendUnavailable: the backend asked for cannot run here.
    """

    __slots__ = ()

    ALGORITHM = "xaes-256-gcm"
    NONCE_SIZE = NONCE_BYTES

    @classmethod
    def _nonce_size(cls, size: int | None) -> int:
        if size is None:
            return NONCE_BYTES
        if type(size) is not int:
            raise InvalidArgumentType(f"nonce_size must be an int, not {type(size).__name__}")
        if size != NONCE_BYTES:
            raise InvalidArgument(f"XAES-256-GCM nonces are {NONCE_BYTES} bytes, got {size}")
        return size
