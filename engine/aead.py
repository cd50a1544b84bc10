"""AES-256-GCM: :class:`AesGcm`, a drop-in for ``cryptography``'s ``AESGCM`` with batch methods.

Arguments are checked here, once, against sizes read from the native library; only then does
anything reach :mod:`engine._native`. The native calls release the GIL, and one :class:`AesGcm`
may be shared by any number of Python threads.
"""

from __future__ import annotations

import os
from typing import Any, NoReturn

import numpy as np

from . import _native
from .batch import Batch, SealedBatch, as_batch, fixed_width
from .buffers import byte_view, check_threads, default_threads, empty_bytes, is_arrow, offsets_of
from .errors import (
    BackendUnavailable,
    BatchInvalidTag,
    InvalidArgument,
    InvalidArgumentType,
    MessageTooLong,
)

__all__ = ["AesGcm", "backend_info", "default_threads", "random_bytes", "selected_backend"]

KEY_BYTES = _native.KEY_BYTES
TAG_BYTES = _native.TAG_BYTES
NONCE_MIN_BYTES = _native.NONCE_MIN_BYTES
NONCE_MAX_BYTES = _native.NONCE_MAX_BYTES
MESSAGE_MAX_BYTES = _native.MESSAGE_MAX_BYTES
CHUNK_BYTES = _native.CHUNK_BYTES
CHUNK_SEALED_BYTES = _native.CHUNK_SEALED_BYTES
CHUNK_NONCE_BYTES = _native.CHUNK_NONCE_BYTES
CHUNK_MAX = _native.CHUNK_MAX
MAX_HEADER_BYTES = 4096
# From this average record size on, a list of bytes objects is sealed from the objects' own storage
# (packing them into one buffer first would copy as many bytes as sealing reads); below it the
# packing copy is cheap beside the per-record work.
_SEAL_IN_PLACE_MIN_AVERAGE = 64 * 1024  # token headers are a few bytes; this bounds the AAD scratch per thread

BACKEND_ENV = "ENGINE_BACKEND"
_BACKEND_ALIASES = {"ipsec-mb": "ipsec-mb", "ipsecmb": "ipsec-mb", "ipsec_mb": "ipsec-mb",
                    "openssl": "openssl"}


def selected_backend(name: str | None = None) -> str:
    """The backend to use: ``name``, else ``$ENGINE_BACKEND``, else the fastest this CPU runs.

    Raises:
        InvalidArgument: an unknown backend name.
        BackendUnavailable: the backend asked for is not built in or cannot run on this CPU.
    """
    requested = name if name is not None else os.environ.get(BACKEND_ENV, "auto")
    if not isinstance(requested, str):
        raise InvalidArgumentType(
            f"backend must be a name (auto, ipsec-mb, openssl), not {type(requested).__name__}"
        )
    key = requested.strip().lower()
    if key in ("", "auto"):
        return _native.default_backend()
    if key not in _BACKEND_ALIASES:
        raise InvalidArgument(
            f"unknown backend {requested!r} (from {BACKEND_ENV} or backend=); "
            f"use one of: auto, ipsec-mb, openssl"
        )
    chosen = _BACKEND_ALIASES[key]
    if not _native.backend_available(chosen):
        raise BackendUnavailable(
            f"backend {chosen!r} is not available here (not built, or the CPU lacks AES-NI)"
        )
    return chosen


def backend_info(backend: str | None = None) -> dict[str, Any]:
    """What the engine runs on: backend name and version, instruction set, default threads."""
    name = selected_backend(backend)
    version, isa = _native.backend_details(name)
    return {
        "backend": name,
        "version": version,
        "isa": isa,
        "threads": default_threads(),
        "available": [b for b in _native.BACKENDS if _native.backend_available(b)],
    }


def random_bytes(n: int) -> bytes:
    """n bytes from OpenSSL's CSPRNG."""
    if not isinstance(n, int) or n < 0:
        raise InvalidArgument("n must be a non-negative integer")
    buf = bytearray(n)
    _native.random_into(buf)
    return bytes(buf)


def _check_nonce_size(size: int) -> None:
    if type(size) is not int:
        raise InvalidArgumentType(f"nonce_size must be an int, not {type(size).__name__}")
    if not NONCE_MIN_BYTES <= size <= NONCE_MAX_BYTES:
        raise InvalidArgument(
            f"nonce must be {NONCE_MIN_BYTES} to {NONCE_MAX_BYTES} bytes, got {size}"
        )


def _check_record_sizes(batch: Batch) -> None:
    if batch.nbytes > MESSAGE_MAX_BYTES and int(batch.lengths().max()) > MESSAGE_MAX_BYTES:
        raise MessageTooLong(f"a record exceeds GCM's limit of {MESSAGE_MAX_BYTES} bytes")


def _batch_aad(associated_data: Any, n: int) -> tuple[Any, Any, int]:
    """(buffer, offsets or None, length) for the native call: one value for all, or n values."""
    if associated_data is None:
        return None, None, 0
    if isinstance(associated_data, Batch) or is_arrow(associated_data):
        aad = as_batch(associated_data, "associated_data")
        if len(aad) != n:
            raise InvalidArgument(
                f"associated_data has {len(aad)} values for {n} records; give one per record "
                f"or a single bytes value for all"
            )
        return aad.data, aad.offsets, 0
    if isinstance(associated_data, (list, tuple)):
        return _batch_aad(Batch.from_list(associated_data), n)
    view = byte_view(associated_data, "associated_data")
    return view, None, view.shape[0]


def _placements(out_starts: Any, sizes: np.ndarray, capacity: int) -> np.ndarray:
    """``out_starts`` as int64 if each record of ``sizes`` bytes fits in ``capacity`` bytes at
    its start and no two overlap (threads write them at once).

    Raises:
        InvalidArgumentType: not integers (floats would be truncated silently).
        InvalidArgument: not one per record, outside the buffer, or overlapping.
    """
    given = np.asarray(out_starts)
    if given.size and (given.dtype.kind not in "iu" or (
            given.dtype == np.uint64 and int(given.max()) >= 1 << 63)):
        raise InvalidArgumentType(f"out_starts must be integers, not {given.dtype}")
    starts = np.ascontiguousarray(given, dtype=np.int64)
    n = sizes.shape[0]
    # compared without adding starts + sizes, which could wrap around in int64
    if starts.shape != (n,) or (n and (int(starts.min()) < 0 or
                                       bool((starts > capacity - sizes).any()))):
        raise InvalidArgument("out_starts must place every plaintext inside out")
    written = sizes > 0
    s, z = (starts, sizes) if bool(written.all()) else (starts[written], sizes[written])
    if s.shape[0] > 1:
        if not bool((s[1:] >= s[:-1]).all()):  # in order already on the engine's own paths
            order = np.argsort(s, kind="stable")
            s, z = s[order], z[order]
        if bool((s[1:] < s[:-1] + z[:-1]).any()):
            raise InvalidArgument("out_starts place two plaintexts over each other")
    return starts


def _output(out: Any, size: int, name: str) -> np.ndarray:
    view = byte_view(out, name, writable=True)
    if view.shape[0] < size:
        raise InvalidArgument(f"{name} holds {view.shape[0]} bytes; {size} are needed")
    return view


class AesGcm:
    """AES-256-GCM with a 32-byte key, a drop-in for ``cryptography``'s ``AESGCM``.

    The key schedule and GHASH tables are computed once, here, in native memory that is wiped
    when the object is collected. Instances cannot be pickled.

    Args:
        key: 32 bytes (AES-256), any bytes-like object.
        backend: ``"ipsec-mb"``, ``"openssl"`` or ``None`` (``$ENGINE_BACKEND``, else the fastest).

    Raises:
        InvalidArgumentType: ``key`` is not bytes-like.
        InvalidArgument: ``key`` is not 32 bytes, or an unknown backend.
        BackendUnavailable: the backend asked for cannot run here.
    """

    __slots__ = ("_key", "_address", "__weakref__")

    ALGORITHM = "aes-256-gcm"
    #: Nonce bytes of batches and tokens when none are asked for (the 128-bit IV of the token and JSON formats).
    NONCE_SIZE = 16

    def __init__(self, key: Any, *, backend: str | None = None) -> None:
        key = byte_view(key, "key")
        if key.shape[0] != KEY_BYTES:
            raise InvalidArgument(f"{type(self).__name__} key must be {KEY_BYTES} bytes (AES-256)")
        self._key = _native.KeyHandle(key, selected_backend(backend), self.ALGORITHM)
        self._address = self._key.address

    @staticmethod
    def generate_key(bit_length: int = 256) -> bytes:
        """A fresh random key; only 256 bits is supported (AES-256-GCM is the only algorithm)."""
        if bit_length != 256:
            raise InvalidArgument("only 256-bit keys are supported (AES-256-GCM)")
        return random_bytes(KEY_BYTES)

    @property
    def backend(self) -> str:
        """The native backend this key runs on."""
        return self._key.backend

    def __repr__(self) -> str:
        return f"<{type(self).__name__} backend={self.backend!r}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} objects hold key material and cannot be pickled")

    # ---- one message ----

    def encrypt(self, nonce: Any, data: Any, associated_data: Any = None) -> bytes:
        """Encrypts ``data``; returns the ciphertext followed by the 16-byte tag.

        Args:
            nonce: 8 to 128 bytes (12 is GCM's native size); never reuse one under a key.
            data, associated_data: any C-contiguous bytes-like objects (associated_data may be
                None).

        Raises:
            InvalidArgument: nonce not 8 to 128 bytes, or a buffer that is not C-contiguous.
            MessageTooLong: data over 2**36 - 32 bytes.
            InvalidArgumentType: an argument is not bytes-like.
        """
        return _native.seal_message(self._address, nonce, data, associated_data)

    def decrypt(self, nonce: Any, data: Any, associated_data: Any = None) -> bytes:
        """Decrypts ciphertext-and-tag ``data`` and checks its tag.

        Raises:
            InvalidTag: authentication failed (wrong key, nonce, data, tag or associated data),
                or ``data`` is shorter than the 16-byte tag.
            InvalidArgument: nonce not 8 to 128 bytes.
            InvalidArgumentType: an argument is not bytes-like.
        """
        return _native.open_message(self._address, nonce, data, associated_data)

    # ---- batches ----

    def seal_batch(self, batch: Any, associated_data: Any = None, *,
                   nonce_size: int | None = None, threads: int | None = None) -> SealedBatch:
        """Seals every record of ``batch`` under a fresh random nonce, in one native call.

        Args:
            batch: an :class:`~engine.Batch`, a pyarrow binary array or a list of bytes.
            associated_data: one bytes value for all records, or n values (a Batch or a list).
            nonce_size: bytes per nonce (default :attr:`NONCE_SIZE`: 16, the 128-bit IV of the token
                and JSON formats; 12 is GCM's native size).
            threads: worker threads (``None``: all cores); records are split by bytes.

        Returns:
            A :class:`~engine.SealedBatch` whose ciphertexts have the input's offsets.
        """
        if isinstance(batch, (list, tuple)):
            layout = _native.bytes_layout(batch, _SEAL_IN_PLACE_MIN_AVERAGE)
            if layout is not None:  # large bytes objects: sealed from where they are
                return self._seal_list(batch, np.frombuffer(layout, np.int64), associated_data,
                                       nonce_size, threads)
        batch = as_batch(batch, "batch")
        _check_record_sizes(batch)
        out = empty_bytes(batch.nbytes)
        return self._seal(batch, out, associated_data, nonce_size, threads, None)

    def _seal_list(self, values: list[Any] | tuple[Any, ...], offsets: np.ndarray,
                   associated_data: Any, nonce_size: int | None,
                   threads: int | None) -> SealedBatch:
        n = len(values)
        nonce_size = self._nonce_size(nonce_size)
        if int(np.diff(offsets).max()) > MESSAGE_MAX_BYTES:
            raise MessageTooLong(f"a record exceeds GCM's limit of {MESSAGE_MAX_BYTES} bytes")
        threads = check_threads(threads)
        aad, aad_offsets, aad_len = _batch_aad(associated_data, n)
        out = empty_bytes(int(offsets[-1]))
        nonces = empty_bytes(n * nonce_size).reshape(n, nonce_size)
        tags = empty_bytes(n * TAG_BYTES).reshape(n, TAG_BYTES)
        _native.seal_list(self._address, values, offsets, out, nonces, True, tags, aad,
                          aad_offsets, aad_len, threads)
        return SealedBatch._trusted(nonces, tags, Batch._trusted(out, offsets))

    def seal_batch_into(self, batch: Any, out: Any, associated_data: Any = None, *,
                        nonce_size: int | None = None, threads: int | None = None,
                        nonces: Any = None) -> SealedBatch:
        """Like :meth:`seal_batch`, writing ciphertexts into ``out`` (may be the batch's own data
        buffer: sealing in place allocates nothing the size of the data).

        Args:
            out: a writable buffer of at least ``batch.nbytes`` bytes; record i goes to
                ``offsets[i] - offsets[0]``. Either exactly the records' own memory (``out``
                starts at ``batch.data[offsets[0]]``: in place) or memory that shares no byte
                with the batch, the AAD or the nonces; anything in between is refused.
            nonces: caller-chosen ``n x nonce_size`` nonces, for known-answer tests and interop
                only. A nonce used twice under one key destroys GCM's security.
        """
        batch = as_batch(batch, "batch")
        _check_record_sizes(batch)
        target = _output(out, batch.nbytes, "out")
        return self._seal(batch, target, associated_data, nonce_size, threads, nonces)

    def _seal(self, batch: Batch, out: np.ndarray, associated_data: Any, nonce_size: int | None,
              threads: int | None, nonces: Any) -> SealedBatch:
        n = len(batch)
        threads = check_threads(threads)
        aad, aad_offsets, aad_len = _batch_aad(associated_data, n)
        nonce_size = self._nonce_size(nonce_size)
        if nonces is None:
            nonce_arr = empty_bytes(n * nonce_size).reshape(n, nonce_size)
        else:
            nonce_arr = np.ascontiguousarray(fixed_width(nonces, n, nonce_size, "nonces"))
        tags = empty_bytes(n * TAG_BYTES).reshape(n, TAG_BYTES)
        _native.seal_batch(self._key, n, batch.data, batch.offsets, out, nonce_arr, nonce_size,
                           nonces is None, tags, aad, aad_offsets, aad_len, threads)
        return SealedBatch._trusted(nonce_arr, tags, Batch._trusted(out, _rebased(batch.offsets)))

    def open_batch(self, sealed: SealedBatch, associated_data: Any = None, *,
                   threads: int | None = None) -> Batch:
        """Opens every record of ``sealed`` in one native call.

        Returns:
            A :class:`~engine.Batch` of plaintexts with the ciphertexts' offsets (for one
            ``bytes`` object per record, :meth:`open_list` is faster than ``.to_list()``).

        Raises:
            BatchInvalidTag: some records failed; ``.failed`` lists them and ``.result`` holds
                the batch with those records zero-filled.
        """
        self._check_sealed(sealed)
        out = empty_bytes(sealed.ciphertexts.nbytes, secret=True)
        return self._open(sealed, out, associated_data, threads)

    def open_batch_into(self, sealed: SealedBatch, out: Any, associated_data: Any = None, *,
                        threads: int | None = None) -> Batch:
        """Like :meth:`open_batch`, writing plaintexts into ``out``: exactly the ciphertexts'
        own memory (in place), or memory that shares no byte with any input.

        A record that fails authentication is zero-filled in a separate ``out``; in place it is
        left as the ciphertext it was, so that it can still be opened with the right key or AAD.

        Raises:
            InvalidArgument: ``out`` overlaps an input other than exactly in place.
            BatchInvalidTag: as :meth:`open_batch`.
        """
        self._check_sealed(sealed)
        target = _output(out, sealed.ciphertexts.nbytes, "out")
        return self._open(sealed, target, associated_data, threads)

    def open_list(self, sealed: SealedBatch, associated_data: Any = None, *,
                  threads: int | None = None) -> list[bytes]:
        """Opens every record of ``sealed`` straight into one ``bytes`` object per record, in
        one native call: what ``open_batch(sealed).to_list()`` gives, without the intermediate
        buffer and its copy (for large records, about twice as fast).

        Raises:
            BatchInvalidTag: some records failed; ``.failed`` lists them and ``.result`` is the
                list with those records zero-filled.
        """
        self._check_sealed(sealed)
        ct = sealed.ciphertexts
        aad, aad_offsets, aad_len = _batch_aad(associated_data, len(ct))
        if aad is not None and aad_offsets is None and aad_len == 0:
            aad = None
        values, failed = _native.open_list(self._address, ct.data, ct.offsets, sealed.nonces,
                                           sealed.tags, aad, aad_offsets, check_threads(threads))
        if failed is not None:
            raise BatchInvalidTag(np.flatnonzero(np.frombuffer(failed, np.uint8)), values)
        return values

    @classmethod
    def _nonce_size(cls, size: int | None) -> int:
        """The nonce size to use: ``size`` checked, or :attr:`NONCE_SIZE`."""
        if size is None:
            return cls.NONCE_SIZE
        _check_nonce_size(size)
        return size

    @classmethod
    def _check_sealed(cls, sealed: Any) -> None:
        if not isinstance(sealed, SealedBatch):
            raise InvalidArgumentType(
                f"expected an engine.SealedBatch, not {type(sealed).__name__}"
            )
        n = len(sealed.ciphertexts)
        for name, arr, width in (("nonces", sealed.nonces, sealed.nonce_size),
                                 ("tags", sealed.tags, TAG_BYTES)):
            if (arr.dtype != np.uint8 or arr.shape != (n, width)
                    or not arr.flags.c_contiguous):
                raise InvalidArgument(f"sealed.{name} must be a C-contiguous ({n}, {width}) uint8 array")
        cls._nonce_size(sealed.nonce_size)
        _check_record_sizes(sealed.ciphertexts)

    def _open(self, sealed: SealedBatch, out: np.ndarray, associated_data: Any,
              threads: int | None) -> Batch:
        ct = sealed.ciphertexts
        n = len(ct)
        threads = check_threads(threads)
        aad, aad_offsets, aad_len = _batch_aad(associated_data, n)
        failed = np.empty(n, dtype=np.uint8)
        nfailed = _native.open_batch(self._key, n, ct.data, ct.offsets, out,
                                     sealed.nonces, sealed.nonce_size,
                                     sealed.tags, aad, aad_offsets, aad_len,
                                     failed, threads)
        result = Batch._trusted(out, _rebased(ct.offsets))
        if nfailed:
            raise BatchInvalidTag(np.flatnonzero(failed), result)
        return result


    # ---- a key of its own per record: public as engine.hazmat.seal_batch_with_keys ----

    @classmethod
    def _seal_batch_with_keys(cls, keys: Any, batch: Any, nonces: Any,
                              associated_data: Any = None, *, nonce_size: int | None = None,
                              backend: str | None = None,
                              threads: int | None = None) -> SealedBatch:
        """See :func:`engine.hazmat.seal_batch_with_keys`."""
        batch = as_batch(batch, "batch")
        _check_record_sizes(batch)
        n = len(batch)
        nonce_size = cls._nonce_size(nonce_size)
        key_arr = np.ascontiguousarray(fixed_width(keys, n, KEY_BYTES, "keys"))
        nonce_arr = np.ascontiguousarray(fixed_width(nonces, n, nonce_size, "nonces"))
        aad, aad_offsets, aad_len = _batch_aad(associated_data, n)
        out = empty_bytes(batch.nbytes)
        tags = empty_bytes(n * TAG_BYTES).reshape(n, TAG_BYTES)
        _native.seal_batch_keys(selected_backend(backend), cls.ALGORITHM, n, key_arr, batch.data,
                                batch.offsets, out, nonce_arr, nonce_size, tags, aad,
                                aad_offsets, aad_len, check_threads(threads))
        return SealedBatch._trusted(nonce_arr, tags, Batch._trusted(out, _rebased(batch.offsets)))

    @classmethod
    def _open_batch_with_keys(cls, keys: Any, sealed: SealedBatch, associated_data: Any = None,
                              *, backend: str | None = None, threads: int | None = None) -> Batch:
        """See :func:`engine.hazmat.open_batch_with_keys`."""
        cls._check_sealed(sealed)
        ct = sealed.ciphertexts
        n = len(ct)
        key_arr = np.ascontiguousarray(fixed_width(keys, n, KEY_BYTES, "keys"))
        aad, aad_offsets, aad_len = _batch_aad(associated_data, n)
        out = empty_bytes(ct.nbytes, secret=True)
        failed = np.empty(n, dtype=np.uint8)
        nfailed = _native.open_batch_keys(selected_backend(backend), cls.ALGORITHM, n, key_arr,
                                          ct.data, ct.offsets, out, sealed.nonces,
                                          sealed.nonce_size, sealed.tags, aad, aad_offsets,
                                          aad_len, failed, check_threads(threads))
        result = Batch._trusted(out, _rebased(ct.offsets))
        if nfailed:
            raise BatchInvalidTag(np.flatnonzero(failed), result)
        return result

    # ---- tokens: header || nonce || ciphertext || tag, one buffer ----

    def seal_tokens(self, batch: Any, header: bytes, associated_data: Any = None, *,
                    bind_header: bool = True, nonce_size: int | None = None, out: Any = None,
                    out_starts: Any = None, threads: int | None = None) -> Batch | None:
        """Seals every record into a self-contained token ``header || nonce || ciphertext ||
        tag`` in one native pass (fresh random nonces, drawn in one CSPRNG call).

        Args:
            batch: the plaintexts (a Batch, a pyarrow binary array or a list of bytes).
            header: bytes written at the start of every token (format marker, key version).
            associated_data: one value for all records or n values; with ``bind_header`` the
                AAD of each record is ``header || associated_data``.
            bind_header: authenticate the header (editing it then fails decryption).
            out, out_starts: write token i at ``out[out_starts[i]:]`` of a caller buffer that
                shares no byte with the inputs (to lay tokens out with gaps, as the rows of an
                Arrow column with NULLs); returns None then.

        Returns:
            A :class:`~engine.Batch` of n tokens (unless ``out`` is given).

        Raises:
            InvalidArgument: ``out_starts`` places a token outside ``out``, or ``out`` overlaps
                an input.
        """
        batch = as_batch(batch, "batch")
        _check_record_sizes(batch)
        nonce_size = self._nonce_size(nonce_size)
        header = bytes(byte_view(header, "header"))
        if len(header) > MAX_HEADER_BYTES:
            raise InvalidArgument(f"header must be at most {MAX_HEADER_BYTES} bytes")
        n = len(batch)
        aad, aad_offsets, aad_len = _batch_aad(associated_data, n)
        sizes = batch.lengths() + (len(header) + nonce_size + TAG_BYTES)
        result = None
        if out is None:
            off = offsets_of(sizes)
            target = empty_bytes(int(off[-1]))
            starts = off[:-1]
            result = Batch._trusted(target, off)
        else:
            target = byte_view(out, "out", writable=True)
            starts = np.ascontiguousarray(out_starts, dtype=np.int64)
            # compared without adding starts + sizes, which could wrap around in int64
            if starts.shape != (n,) or (n and (int(starts.min()) < 0 or
                                               bool((starts > target.shape[0] - sizes).any()))):
                raise InvalidArgument("out_starts must place every token inside out")
            if any(np.may_share_memory(target, np.asarray(buf)) for buf in (batch.data, aad)
                   if buf is not None):
                raise InvalidArgument("out must share no byte with the records or the AAD")
        _native.seal_tokens(self._key, n, batch.data, batch.offsets, header, bind_header,
                            nonce_size, target, starts, aad, aad_offsets, aad_len,
                            check_threads(threads))
        return result

    def open_tokens(self, tokens: Any, header_size: int, associated_data: Any = None, *,
                    bind_header: bool = True, nonce_size: int | None = None, out: Any = None,
                    out_starts: Any = None, threads: int | None = None) -> Batch | None:
        """Opens tokens made by :meth:`seal_tokens` in one native pass.

        Args:
            tokens: a Batch of tokens, each at least ``header_size + nonce_size + 16`` bytes.
            header_size: bytes of header before each nonce (the token's own header is the start
                of its AAD when ``bind_header``).
            associated_data: as for :meth:`seal_tokens`.
            out, out_starts: write plaintext i at ``out[out_starts[i]:]`` of a caller buffer
                (for gathering groups into one result; both or neither; no two plaintexts may
                overlap); returns None then.

        Returns:
            A :class:`~engine.Batch` of plaintexts (unless ``out`` is given).

        Raises:
            InvalidArgument: a token is too short to hold header, nonce and tag; ``out_starts``
                that place a plaintext outside ``out`` or over another.
            InvalidArgumentType: ``out`` without ``out_starts`` or the reverse, or starts that
                are not integers.
            BatchInvalidTag: some tokens failed; ``.failed`` lists them, ``.result`` holds the
                others (failed ones zero-filled).
        """
        tokens = as_batch(tokens, "tokens")
        nonce_size = self._nonce_size(nonce_size)
        if type(header_size) is not int or not 0 <= header_size <= MAX_HEADER_BYTES:
            raise InvalidArgument(f"header_size must be an integer from 0 to {MAX_HEADER_BYTES}")
        n = len(tokens)
        overhead = header_size + nonce_size + TAG_BYTES
        sizes = tokens.lengths() - overhead
        if n and int(sizes.min()) < 0:
            bad = int(np.flatnonzero(sizes < 0)[0])
            raise InvalidArgument(f"token {bad} is shorter than its {overhead} bytes of overhead")
        aad, aad_offsets, aad_len = _batch_aad(associated_data, n)
        result = None
        if (out is None) != (out_starts is None):
            raise InvalidArgumentType("out and out_starts go together: give both or neither")
        if out is None:
            off = offsets_of(sizes)
            target = empty_bytes(int(off[-1]), secret=True)
            starts = off[:-1]
            result = Batch._trusted(target, off)
        else:
            target = byte_view(out, "out", writable=True)
            starts = _placements(out_starts, sizes, target.shape[0])
        failed = np.empty(n, dtype=np.uint8)
        nfailed = _native.open_tokens(self._key, n, tokens.data, tokens.offsets, header_size,
                                      bind_header, nonce_size, target, starts, aad, aad_offsets,
                                      aad_len, failed, check_threads(threads))
        if nfailed:
            raise BatchInvalidTag(np.flatnonzero(failed), result)
        return result

    # ---- runs of chunks of a C2SP chunked message (the building block of engine.stream) ----

    def seal_chunks_into(self, base_nonce: Any, first: int, data: Any, out: Any, *,
                         final: bool = False, threads: int | None = None) -> int:
        """Seals ``data`` as chunks ``first, first + 1, ...`` of a C2SP chunked-encryption
        message (c2sp.org/chunked-encryption) into ``out``, in the message layout (each chunk's
        body followed by its tag), in one native call.

        Chunks are :data:`CHUNK_BYTES` (16 KiB) of plaintext; chunk i is sealed with empty AAD
        under the nonce ``base_nonce`` XOR i, derived natively. A building block for
        :mod:`engine.stream`, which applications use instead: a key and base nonce must never
        seal two messages.

        Args:
            base_nonce: 12 bytes.
            first: the index of the first chunk (indexes stay below 2**38).
            data: whole chunks; with ``final``, the end of the message: whole chunks and then the
                final chunk, shorter than 16 KiB and possibly empty.
            out: a writable buffer of at least ``len(data) + 16 * chunks`` bytes that shares no
                byte with ``data``.
            final: ``data`` ends the message.
            threads: worker threads (``None``: all cores).

        Returns:
            The bytes written to ``out``.

        Raises:
            InvalidArgument: a base nonce that is not 12 bytes, ``data`` that is not whole chunks
                without ``final``, ``out`` too small or overlapping, a key that is not AES-256-GCM.
            MessageTooLong: a chunk index reaches 2**38.
        """
        data = byte_view(data, "data")
        size = data.shape[0]
        n, rest = divmod(size, CHUNK_BYTES)
        if final:
            n += 1
        elif rest:
            raise InvalidArgument(f"data must be whole chunks of {CHUNK_BYTES} bytes unless final")
        self._check_chunk_run(base_nonce, first, n)
        sealed = size + n * TAG_BYTES
        _native.chunks_seal(self._key, base_nonce, first, n, data, size,
                            _output(out, sealed, "out"), check_threads(threads))
        return sealed

    def open_chunks_into(self, base_nonce: Any, first: int, sealed: Any, out: Any, *,
                         final: bool = False, threads: int | None = None) -> int:
        """Opens chunks ``first, first + 1, ...`` of a C2SP chunked-encryption message from the
        message layout in ``sealed`` into ``out``: the reverse of :meth:`seal_chunks_into`.

        Args:
            base_nonce, first, threads: as for :meth:`seal_chunks_into`.
            sealed: whole sealed chunks (16,400 bytes each); with ``final``, followed by the
                message's final chunk (16 to 16,399 bytes).
            out: a writable buffer of at least ``len(sealed) - 16 * chunks`` bytes that shares
                no byte with ``sealed``.
            final: ``sealed`` ends the message.

        Returns:
            How many leading chunks authenticated (all of them, or the index of the first that
            failed): ``out`` holds their plaintext and zeros after it. Chunks after a failed one
            are never released.

        Raises:
            InvalidArgument: as for :meth:`seal_chunks_into`, or a length that no run of chunks
                has.
            MessageTooLong: a chunk index reaches 2**38.
        """
        sealed = byte_view(sealed, "sealed")
        size = sealed.shape[0]
        n, rest = divmod(size, CHUNK_SEALED_BYTES)
        if final:
            if rest < TAG_BYTES:
                raise InvalidArgument(f"a final chunk holds at least its {TAG_BYTES}-byte tag")
            n += 1
        elif rest:
            raise InvalidArgument(
                f"sealed must be whole chunks of {CHUNK_SEALED_BYTES} bytes unless final")
        self._check_chunk_run(base_nonce, first, n)
        return _native.chunks_open(self._key, base_nonce, first, n, sealed, size,
                                   _output(out, size - n * TAG_BYTES, "out"),
                                   check_threads(threads))

    def _check_chunk_run(self, base_nonce: Any, first: int, n: int) -> None:
        if self.ALGORITHM != AesGcm.ALGORITHM:
            raise InvalidArgument("chunked encryption runs on AES-256-GCM keys")
        if byte_view(base_nonce, "base_nonce").shape[0] != CHUNK_NONCE_BYTES:
            raise InvalidArgument(f"the base nonce is {CHUNK_NONCE_BYTES} bytes")
        if type(first) is not int or first < 0:
            raise InvalidArgument("first must be a non-negative integer")
        if first + n > CHUNK_MAX:
            raise MessageTooLong("a chunked message holds at most 2**38 chunks")

    # ---- key derivation ----

    def derive(self, info: Any, *, extra: int = 0) -> tuple["AesGcm", bytes]:
        """HKDF-Expand with SHA-512 (RFC 5869, no Extract step) keyed with this key: a new
        :class:`AesGcm` on the first 32 output bytes, and the ``extra`` bytes that follow.

        The derived key is computed and kept in native memory, like this one: no key bytes
        reach Python. This key must be uniformly random (a CSPRNG or KDF output), as every
        engine key is.

        Args:
            info: the HKDF ``info`` (bytes-like, any length).
            extra: output bytes wanted after the key (0 to 224), for values that are not secret
                (nonces, key commitments).

        Returns:
            ``(cipher, extra_bytes)``; the cipher runs on this key's backend.

        Raises:
            InvalidArgumentType: ``info`` is not bytes-like.
            InvalidArgument: ``extra`` out of range.
        """
        info = byte_view(info, "info")
        info_len = info.shape[0]
        if type(extra) is not int or not 0 <= extra <= _native.DERIVE_EXTRA_MAX:
            raise InvalidArgument(f"extra must be an integer from 0 to {_native.DERIVE_EXTRA_MAX}")
        handle, extra_bytes = _native.derive_key(self._key, info, info_len, extra)
        derived = AesGcm.__new__(AesGcm)  # no key bytes to hand to __init__
        derived._key, derived._address = handle, handle.address
        return derived, extra_bytes


    # ---- one token as text: prefix || base64url(header || nonce || ciphertext || tag) ----

    def seal_text_token(self, header: bytes, data: Any, associated_data: Any = None, *,
                        prefix: bytes = b"") -> str:
        """Seals one value into a text token under a fresh random 16-byte nonce, in one native
        call (the single-value twin of :meth:`seal_tokens` followed by base64url).

        Args:
            header: bytes written before the nonce, and the start of the AAD.
            data, associated_data: str (as UTF-8) or bytes-like; associated_data may be None.
            prefix: ASCII text put before the base64url body.

        Raises:
            InvalidArgumentType: an argument is neither str nor bytes-like.
            InvalidArgument: a str that UTF-8 cannot encode (the message shows no text).
        """
        return _native.seal_text_token(self._address, header, data, associated_data, prefix)

    def open_text_token(self, token: Any, header_size: int, associated_data: Any = None,
                        bind_header: bool = True, prefix: bytes = b"",
                        text: bool = False) -> str | bytes | None:
        """Opens one token made by :meth:`seal_text_token` (``bind_header``: its own header
        starts the AAD).

        Returns:
            The plaintext (``str`` when ``text``), or None when ``token`` is not ``prefix`` and
            strict base64url of at least header, nonce and tag (parse it to learn why).

        Raises:
            InvalidTag: authentication failed.
            InvalidArgument: ``text`` and the plaintext is not UTF-8 (the message shows none).
        """
        return _native.open_text_token(self._address, token, associated_data, prefix,
                                       header_size, bind_header, text)


def text_token_header(token: Any, prefix: bytes, header_size: int) -> bytes | None:
    """The first ``header_size`` bytes (a multiple of 3) of a text token's binary form, decoded
    natively from its first characters; None when it is not ``prefix`` and strict base64url."""
    return _native.token_header(token, prefix, header_size)


def _rebased(offsets: np.ndarray) -> np.ndarray:
    """Offsets of the output buffer, where record 0 starts at byte 0."""
    return offsets if offsets[0] == 0 else offsets - offsets[0]
