"""Hazardous materials: primitives that take raw keys and raw nonces from the caller.

Nothing here can tell when it is misused, and misuse is silent: a nonce sealed twice under one
key gives away the authentication key and the XOR of the two plaintexts; a key or base nonce
given to :class:`ChunkCipher` for two messages does the same. These calls exist for protocols,
formats and known-answer tests built on top of the engine (as ``cryptography.hazmat`` and
``argon2.low_level`` do for theirs). Applications use :class:`engine.EncryptionService`,
:meth:`engine.AesGcm.seal_batch` (native random nonces) or :mod:`engine.stream`'s
:func:`~engine.stream.encrypt`, which choose nonces themselves.

- :func:`seal_batch_with_keys` / :func:`open_batch_with_keys`: record i under ``keys[i]`` and
  the caller's ``nonces[i]``, in one native call;
- :class:`ChunkCipher`: C2SP chunked encryption's raw mode (key and base nonce given, no salt
  and no commitment).
"""

from __future__ import annotations

from typing import Any

from .aead import AesGcm
from .batch import Batch, SealedBatch
from .errors import InvalidArgumentType
from .stream.cobblestone import ChunkCipher

__all__ = ["ChunkCipher", "open_batch_with_keys", "seal_batch_with_keys"]


def seal_batch_with_keys(keys: Any, batch: Any, nonces: Any, associated_data: Any = None, *,
                         cipher: type[AesGcm] = AesGcm, nonce_size: int | None = None,
                         backend: str | None = None,
                         threads: int | None = None) -> SealedBatch:
    """Seals record i of ``batch`` under ``keys[i]`` and ``nonces[i]`` in one native call: a
    key handle is made for each record on the thread that seals it, and wiped after it.

    For data kept under a key of its own per record, and for checks over many keys (the
    accumulated XAES-256-GCM test seals a million records under a million keys this way).

    Args:
        keys: n keys of 32 bytes (an ``n x 32`` uint8 array, a list of bytes, a
            ``fixed_size_binary(32)`` column).
        batch: the plaintexts (a Batch, a pyarrow binary array or a list of bytes).
        nonces: n nonces of ``nonce_size`` bytes (default ``cipher.NONCE_SIZE``), laid out as
            ``keys``. A nonce used twice under one key destroys GCM's security.
        associated_data: one value for all records, or n values.
        cipher: :class:`~engine.AesGcm` (the default) or :class:`~engine.XAesGcm`.
        backend, threads: as for :class:`~engine.AesGcm` and its ``seal_batch``.

    Returns:
        A :class:`~engine.SealedBatch` holding the given nonces.

    Raises:
        InvalidArgument: keys or nonces not n values of the right size.
    """
    return _cipher(cipher)._seal_batch_with_keys(keys, batch, nonces, associated_data,
                                                 nonce_size=nonce_size, backend=backend,
                                                 threads=threads)


def open_batch_with_keys(keys: Any, sealed: SealedBatch, associated_data: Any = None, *,
                         cipher: type[AesGcm] = AesGcm, backend: str | None = None,
                         threads: int | None = None) -> Batch:
    """Opens record i of ``sealed`` under ``keys[i]`` in one native call (the reverse of
    :func:`seal_batch_with_keys`, with the same ``cipher``).

    Raises:
        InvalidArgument: keys not n values of 32 bytes.
        BatchInvalidTag: a record failed authentication (its index in ``failed``).
    """
    return _cipher(cipher)._open_batch_with_keys(keys, sealed, associated_data,
                                                 backend=backend, threads=threads)


def _cipher(cipher: Any) -> type[AesGcm]:
    if isinstance(cipher, type) and issubclass(cipher, AesGcm):
        return cipher
    raise InvalidArgumentType(f"cipher must be AesGcm or XAesGcm, not {cipher!r}")
