"""Batches of records in Arrow's layout: one contiguous ``uint8`` buffer plus ``int64`` offsets.

A :class:`Batch` never copies its data buffer; it checks its offsets once, when it is built, and
keeps them in a read-only array so that nothing done to the caller's arrays afterwards can make
the native code read outside the buffer. :class:`SealedBatch` is what sealing returns: the
ciphertexts (a :class:`Batch` with the plaintext's offsets), an ``n x nonce_size`` nonce array
and an ``n x 16`` tag array, each of which can be stored as a column and handed back later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

from . import _native
from .buffers import (
    byte_view,
    check_threads,
    empty_bytes,
    is_arrow,
    offsets_of,
    readonly,
)
from .errors import InvalidArgument, InvalidArgumentType

__all__ = ["Batch", "SealedBatch", "as_batch", "fixed_width"]


def _pack_one(text: str) -> np.ndarray:
    """One str as UTF-8, encoded by the C packer (a lone surrogate is a typed error that does
    not carry the text)."""
    out = np.empty(_native.packed_size([text], False), dtype=np.uint8)
    _native.pack_into([text], out, None)
    return out


def _checked_offsets(offsets: Any, data_len: int, name: str) -> np.ndarray:
    try:
        arr = np.asarray(offsets)
    except Exception:
        raise InvalidArgumentType(f"{name} must be an array of integers") from None
    if arr.ndim != 1 or arr.shape[0] < 1:
        raise InvalidArgument(f"{name} must be a 1-D array of n+1 integers")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InvalidArgumentType(f"{name} must hold integers, not {arr.dtype}")
    # Our own read-only copy: later changes to the caller's array cannot reach the native code.
    arr = readonly(np.array(arr, dtype=np.int64, copy=True))
    _check_bounds(arr, data_len, name)
    return arr


def _check_bounds(offsets: np.ndarray, data_len: int, name: str) -> None:
    if offsets[0] < 0:
        raise InvalidArgument(f"{name} must not be negative")
    if offsets.shape[0] > 1 and bool((offsets[1:] < offsets[:-1]).any()):
        raise InvalidArgument(f"{name} must be non-decreasing (monotonic)")
    if offsets[-1] > data_len:
        raise InvalidArgument(
            f"{name} run past the end of the data buffer ({int(offsets[-1])} > {data_len})"
        )


def _not_a_number(value: Any, i: int) -> Any:
    """``value`` unless it is a number that exposes its memory (a numpy scalar such as
    ``np.float64(1.5)``, or a 0-d array): packed, it would be its 8 raw bytes, not a record."""
    if (isinstance(value, np.generic) and not isinstance(value, (bytes, str))) or (
            isinstance(value, np.ndarray) and value.ndim == 0):
        raise InvalidArgumentType(
            f"record {i} is a number ({type(value).__name__}), not bytes or str; convert it "
            f"first (str(value) or value.tobytes()) to say which bytes are meant")
    return value


class Batch:
    """Many records packed Arrow-style: ``data`` (``uint8``) and ``offsets`` (``int64``, n+1).

    Record ``i`` is ``data[offsets[i]:offsets[i+1]]``. Building a batch never copies ``data``.

    Args:
        data: any C-contiguous buffer (bytes, bytearray, memoryview, numpy array).
        offsets: n+1 non-decreasing integers within ``data``; copied and checked once.

    Raises:
        InvalidArgumentType: ``data`` is not bytes-like, or ``offsets`` are not integers.
        InvalidArgument: offsets negative, decreasing, or past the end of ``data``.
    """

    __slots__ = ("_data", "_offsets")

    def __init__(self, data: Any, offsets: Any) -> None:
        self._data = byte_view(data, "data")
        self._offsets = _checked_offsets(offsets, self._data.shape[0], "offsets")

    @classmethod
    def _trusted(cls, data: np.ndarray, offsets: np.ndarray) -> "Batch":
        """A batch from arrays this package built itself and already knows to be consistent."""
        self = cls.__new__(cls)
        self._data = data
        self._offsets = readonly(offsets)
        return self

    @classmethod
    def from_list(cls, values: Sequence[Any]) -> "Batch":
        """Packs a list or tuple of records: bytes-like values, or ``str`` (encoded as UTF-8).

        The bytes are copied once into one buffer; no per-record object is kept. Lists of str,
        bytes and bytearray are packed by one C pass (large buffers come from pyarrow's memory
        pool when it is installed, whose pages are reused from one batch to the next); other
        buffers (memoryview, numpy arrays) are joined.

        Raises:
            InvalidArgumentType: not a list or tuple, or a value that is None, a number (numpy
                scalars included) or not bytes-like.
            InvalidArgument: a str that UTF-8 cannot encode (the message shows no text).
        """
        if not isinstance(values, (list, tuple)):
            raise InvalidArgumentType(
                f"from_list takes a list or tuple of records, not {type(values).__name__}"
            )
        size = _native.packed_size(values, False)
        if size is not None:
            out = empty_bytes(size)
            offsets = np.frombuffer(_native.pack_into(values, out, None), dtype=np.int64)
            return cls._trusted(out, offsets)
        items = [_pack_one(v) if isinstance(v, str) else byte_view(_not_a_number(v, i),
                                                                    f"record {i}")
                 for i, v in enumerate(values)]  # a clear error for None, int, ...
        lengths = np.fromiter((v.shape[0] for v in items), dtype=np.int64, count=len(items))
        joined = b"".join(v.data for v in items)
        return cls._trusted(np.frombuffer(joined, dtype=np.uint8), offsets_of(lengths))

    @classmethod
    def from_arrow(cls, array: Any) -> "Batch":
        """Wraps a pyarrow ``binary``/``large_binary`` (or string) array without copying its data.

        ``large_binary`` offsets are used as they are; ``binary`` offsets (``int32``) are widened
        to ``int64`` (8 bytes per record). A chunked array of several chunks is combined first
        (one copy). Arrays with nulls are refused: a null has no ciphertext.

        Raises:
            InvalidArgumentType: not a pyarrow binary or string array.
            InvalidArgument: the array has nulls.
        """
        import pyarrow as pa

        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
        if not isinstance(array, pa.Array):
            raise InvalidArgumentType(f"expected a pyarrow Array, not {type(array).__name__}")
        t = array.type
        width: type[np.signedinteger[Any]]
        if pa.types.is_large_binary(t) or pa.types.is_large_string(t):
            width = np.int64
        elif pa.types.is_binary(t) or pa.types.is_string(t):
            width = np.int32
        else:
            raise InvalidArgumentType(f"expected a binary or string array, not {t}")
        if array.null_count:
            raise InvalidArgument(f"the array has {array.null_count} null(s); nulls cannot be sealed")
        _, off_buf, data_buf = array.buffers()
        n = len(array)
        offsets = np.frombuffer(off_buf, dtype=width)[array.offset : array.offset + n + 1]
        data = (
            np.frombuffer(data_buf, dtype=np.uint8)
            if data_buf is not None
            else np.empty(0, dtype=np.uint8)
        )
        # Offsets are copied (8 bytes a record) and checked: Arrow buffers can be views of
        # writable memory, and a later change there must not reach the native code.
        return cls(data, offsets)

    def to_arrow(self, *, text: bool = False) -> pa.Array:
        """A pyarrow ``large_binary`` array over the same memory (no copy); with ``text=True`` a
        ``large_string`` array, after checking that every record is valid UTF-8.

        Raises:
            InvalidArgument: ``text=True`` and a record is not UTF-8 (no content is shown).
        """
        import pyarrow as pa

        arr = pa.Array.from_buffers(
            pa.large_string() if text else pa.large_binary(),
            len(self),
            [None, pa.py_buffer(self._offsets), pa.py_buffer(self._data)],
        )
        if text:
            try:
                arr.validate(full=True)
            except pa.ArrowInvalid:
                raise InvalidArgument("a record is not valid UTF-8 text") from None
        return arr

    @property
    def data(self) -> np.ndarray:
        """The underlying ``uint8`` buffer (a view, not a copy)."""
        return self._data

    @property
    def offsets(self) -> np.ndarray:
        """The ``int64`` offsets, n+1 of them (read-only)."""
        return self._offsets

    @property
    def nbytes(self) -> int:
        """Bytes covered by the records, ``offsets[-1] - offsets[0]``."""
        return int(self._offsets[-1] - self._offsets[0])

    def lengths(self) -> np.ndarray:
        """The length of each record."""
        return np.diff(self._offsets)

    def __len__(self) -> int:
        return int(self._offsets.shape[0]) - 1

    def __getitem__(self, i: int) -> memoryview:
        n = len(self)
        if not -n <= i < n:
            raise IndexError("batch index out of range")
        i %= n
        return self._data.data[self._offsets[i] : self._offsets[i + 1]]

    def __iter__(self) -> Iterator[memoryview]:
        view = self._data.data
        bounds = self._offsets.tolist()
        for a, b in zip(bounds, bounds[1:]):
            yield view[a:b]

    def slices(self, starts: Any, lengths: Any, *, threads: int | None = None) -> "Batch":
        """A new packed batch of ``data[starts[i] : starts[i] + lengths[i]]`` (native copies).

        Raises:
            InvalidArgument: a slice reaches outside the data buffer.
        """
        starts = np.ascontiguousarray(starts, dtype=np.int64)
        lengths = np.ascontiguousarray(lengths, dtype=np.int64)
        if starts.shape != lengths.shape or starts.ndim != 1:
            raise InvalidArgument("starts and lengths must be 1-D arrays of the same length")
        n = starts.shape[0]
        # compared without adding starts + lengths, which could wrap around in int64
        if n and (int(starts.min()) < 0 or int(lengths.min()) < 0
                  or bool((starts > self._data.shape[0] - lengths).any())):
            raise InvalidArgument("a slice reaches outside the data buffer")
        off = offsets_of(lengths)
        out = empty_bytes(int(off[-1]), secret=True)  # the records may be plaintext
        if n:
            _native.gather(n, self._data, starts, lengths, out, off[:-1], check_threads(threads))
        return Batch._trusted(out, off)

    def take(self, indices: Any, *, threads: int | None = None) -> "Batch":
        """The records at ``indices`` (in that order), packed into a new batch by native code.

        Raises:
            InvalidArgument: an index is outside the batch (negative indices count from the end).
            InvalidArgumentType: the indices are not integers.
        """
        arr = np.asarray(indices)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise InvalidArgumentType(f"indices must be integers, not {arr.dtype}")
        idx = arr.astype(np.int64).reshape(-1)
        n = len(self)
        if idx.size and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise InvalidArgument(f"an index is outside the batch of {n} records")
        idx = np.where(idx < 0, idx + n, idx)
        lengths = self.lengths()[idx]
        off = offsets_of(lengths)
        out = empty_bytes(int(off[-1]), secret=True)  # the records may be plaintext
        if idx.shape[0]:
            _native.gather(idx.shape[0], self._data, self._offsets[:-1][idx], lengths, out,
                           off[:-1], check_threads(threads))
        return Batch._trusted(out, off)

    def to_list(self) -> list[bytes]:
        """Each record as ``bytes`` (a copy)."""
        view = self._data.data
        bounds = self._offsets.tolist()
        return [view[a:b].tobytes() for a, b in zip(bounds, bounds[1:])]

    def __repr__(self) -> str:
        return f"<Batch records={len(self)} bytes={self.nbytes}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Batch):
            return NotImplemented
        if len(self) != len(other) or not np.array_equal(self.lengths(), other.lengths()):
            return False
        a, b = self._offsets, other._offsets
        return bool(
            np.array_equal(self._data[a[0] : a[-1]], other._data[b[0] : b[-1]])
        )

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        # through the checking constructor: an unpickled batch's offsets are copied, checked
        # and locked again (a pickle restores plain, writable arrays)
        return Batch, (self._data, self._offsets)


def as_batch(values: Any, name: str) -> Batch:
    """A :class:`Batch` from a Batch, a pyarrow array or a sequence of bytes-like values."""
    if isinstance(values, Batch):
        return values
    if is_arrow(values):
        return Batch.from_arrow(values)
    if isinstance(values, (list, tuple)):
        return Batch.from_list(values)
    raise InvalidArgumentType(
        f"{name} must be an engine.Batch, a pyarrow binary array or a list of bytes, "
        f"not {type(values).__name__}"
    )


def fixed_width(values: Any, n: int, width: int, name: str) -> np.ndarray:
    """An ``n x width`` C-contiguous ``uint8`` array from a numpy array, a pyarrow column
    (``fixed_size_binary`` or binary), a :class:`Batch` or a list of bytes, copying only when the
    input is not already laid out that way.

    Raises:
        InvalidArgument: the count or the width does not match.
    """
    if isinstance(values, np.ndarray):
        arr = values
        if arr.dtype != np.uint8:
            raise InvalidArgumentType(f"{name} must be a uint8 array, not {arr.dtype}")
        if arr.ndim == 1 and arr.shape[0] == n * width:
            arr = arr.reshape(n, width)
        if arr.ndim != 2 or arr.shape != (n, width):
            raise InvalidArgument(f"{name} must have shape ({n}, {width}), not {arr.shape}")
        if not arr.flags.c_contiguous:
            raise InvalidArgument(f"{name} must be C-contiguous")
        return arr
    if is_arrow(values):
        import pyarrow as pa

        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
        if pa.types.is_fixed_size_binary(values.type):
            if values.type.byte_width != width or len(values) != n or values.null_count:
                raise InvalidArgument(
                    f"{name} must be {n} non-null values of {width} bytes"
                )
            buf = np.frombuffer(values.buffers()[1], dtype=np.uint8)
            start = values.offset * width
            return buf[start : start + n * width].reshape(n, width)
        values = Batch.from_arrow(values)
    if isinstance(values, (list, tuple)):
        values = Batch.from_list(values)
    if not isinstance(values, Batch):
        raise InvalidArgumentType(
            f"{name} must be a numpy array, a pyarrow column, a Batch or a list of bytes"
        )
    if len(values) != n or bool((values.lengths() != width).any()):
        raise InvalidArgument(f"{name} must be {n} values of {width} bytes each")
    o = values.offsets
    return values.data[o[0] : o[-1]].reshape(n, width)


def _row_width(values: Any, n: int, name: str) -> int:
    """The width of each of n fixed-size values, however they are given."""
    if isinstance(values, np.ndarray):
        if values.ndim == 2:
            return int(values.shape[1])
        if values.ndim == 1 and n and values.shape[0] % n == 0:
            return int(values.shape[0]) // n
        if values.ndim == 1 and n == 0 and values.shape[0] == 0:
            return 16
        raise InvalidArgument(f"{name} must be an array of shape (n, width)")
    width = getattr(getattr(values, "type", None), "byte_width", None)
    if width is not None:
        return int(width)
    batch = as_batch(values, name)
    return int(batch.lengths()[0]) if len(batch) else 16  # no record: any valid width


class SealedBatch:
    """The result of sealing a batch: ciphertexts, nonces and tags, as three columns.

    Can be rebuilt from stored columns (numpy arrays, pyarrow columns read back from Parquet,
    lists of bytes) and opened later with :meth:`engine.AesGcm.open_batch`.

    Args:
        nonces: ``n x nonce_size`` bytes (8 to 128 bytes each, all the same size).
        tags: ``n x 16`` bytes.
        ciphertexts: a :class:`Batch` (or anything :class:`Batch` can be built from) of n records.

    Raises:
        InvalidArgument: the three columns disagree on n, or a nonce or tag has the wrong size.
    """

    __slots__ = ("_nonces", "_tags", "_ciphertexts")

    def __init__(self, *, nonces: Any, tags: Any, ciphertexts: Any) -> None:
        ct = as_batch(ciphertexts, "ciphertexts")
        n = len(ct)
        width = _row_width(nonces, n, "nonces")
        if n and not _native.NONCE_MIN_BYTES <= width <= _native.NONCE_MAX_BYTES:
            raise InvalidArgument(
                f"nonces must be {_native.NONCE_MIN_BYTES} to {_native.NONCE_MAX_BYTES} bytes, "
                f"got {width}"
            )
        self._ciphertexts = ct
        self._nonces = np.ascontiguousarray(fixed_width(nonces, n, width, "nonces"))
        self._tags = np.ascontiguousarray(fixed_width(tags, n, _native.TAG_BYTES, "tags"))

    @classmethod
    def _trusted(cls, nonces: np.ndarray, tags: np.ndarray, ciphertexts: Batch) -> "SealedBatch":
        self = cls.__new__(cls)
        self._nonces = nonces
        self._tags = tags
        self._ciphertexts = ciphertexts
        return self

    # Read-only: the shapes were checked once, and native code relies on them.
    @property
    def nonces(self) -> np.ndarray:
        """``n x nonce_size`` uint8."""
        return self._nonces

    @property
    def tags(self) -> np.ndarray:
        """``n x 16`` uint8."""
        return self._tags

    @property
    def ciphertexts(self) -> Batch:
        """The ciphertexts, with the plaintexts' offsets."""
        return self._ciphertexts

    @property
    def nonce_size(self) -> int:
        return int(self.nonces.shape[1])

    def __len__(self) -> int:
        return len(self.ciphertexts)

    def __reduce__(self) -> tuple[Any, ...]:
        return _sealed_batch, (self._nonces, self._tags, self._ciphertexts)

    def __repr__(self) -> str:
        return (
            f"<SealedBatch records={len(self)} nonce_size={self.nonce_size} "
            f"bytes={self.ciphertexts.nbytes}>"
        )

    def to_arrow(self) -> pa.Table:
        """A pyarrow Table with columns ``nonce``, ``tag`` (fixed-size binary) and ``ciphertext``
        (large binary), sharing this batch's memory; write it with ``pyarrow.parquet``."""
        import pyarrow as pa

        n = len(self)

        def fixed(arr: np.ndarray) -> Any:
            t = pa.binary(arr.shape[1])
            return pa.Array.from_buffers(t, n, [None, pa.py_buffer(np.ascontiguousarray(arr))])

        return pa.table(
            {
                "nonce": fixed(self.nonces),
                "tag": fixed(self.tags),
                "ciphertext": self.ciphertexts.to_arrow(),
            }
        )

    @classmethod
    def from_arrow(cls, table: Any) -> "SealedBatch":
        """Rebuilds a sealed batch from a table with ``nonce``, ``tag`` and ``ciphertext``."""
        return cls(
            nonces=table.column("nonce"),
            tags=table.column("tag"),
            ciphertexts=table.column("ciphertext"),
        )


def _sealed_batch(nonces: Any, tags: Any, ciphertexts: Any) -> SealedBatch:
    """Unpickles a :class:`SealedBatch` through its checking constructor."""
    return SealedBatch(nonces=nonces, tags=tags, ciphertexts=ciphertexts)
