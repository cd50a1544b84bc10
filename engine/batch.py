"""Batches of records in Arrow's layout: one contiguous ``uint8`` buffer plus ``int64`` offsets.

A :class:`Batch` never copies its data buffer; it checks its offsets once, when it is built, and
keeps them in a read-only array so that nothing done to the caller's arrays afterwards can make
the native code read outside the buffer. :class:`SealedBatch` is what sealing returns: the
ciphertexts (a :class:`Batch` with the plaintext's offsets), an ``n x nonce_size`` nonce array
and an ``n x 16`` tag array, each of which can be stored as a column and handed back later.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from . import _native
from .errors import InvalidArgument, InvalidArgumentType

__all__ = [
    "Batch",
    "SealedBatch",
    "b64_decode",
    "b64_encode",
    "b64url_decode",
    "b64url_encode",
    "b64url_lengths",
    "batch_to_text",
    "check_threads",
    "default_threads",
    "byte_view",
    "concat_each",
    "empty_bytes",
    "field_values",
    "interleave",
    "offsets_of",
    "prefix_each",
    "scatter",
    "value_kinds",
    "with_field",
]

TAG_BYTES = 16


def byte_view(obj: Any, name: str, *, writable: bool = False) -> np.ndarray:
    """A zero-copy 1-D ``uint8`` view of any C-contiguous buffer.

    Raises:
        InvalidArgumentType: ``obj`` does not expose the buffer protocol (a ``str``, say).
        InvalidArgument: the buffer is not C-contiguous, or not writable when ``writable``.
    """
    if isinstance(obj, np.ndarray) and obj.dtype == np.uint8 and obj.ndim == 1:
        if not obj.flags.c_contiguous:
            raise InvalidArgument(f"{name} must be a C-contiguous buffer")
        if writable and not obj.flags.writeable:
            raise InvalidArgument(f"{name} must be writable")
        return obj
    try:
        view = memoryview(obj)
    except TypeError:
        raise InvalidArgumentType(
            f"{name} must be bytes-like (bytes, bytearray, memoryview, numpy array), "
            f"not {type(obj).__name__}"
        ) from None
    if not view.c_contiguous:
        raise InvalidArgument(f"{name} must be a C-contiguous buffer")
    if writable and view.readonly:
        raise InvalidArgument(f"{name} must be writable")
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return np.frombuffer(view, dtype=np.uint8)


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
    arr = _readonly(np.array(arr, dtype=np.int64, copy=True))
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


_PYARROW: Any = False


def _pyarrow() -> Any:
    """The pyarrow module, or None when it is not installed (it is an optional extra)."""
    global _PYARROW
    if _PYARROW is False:
        try:
            import pyarrow
        except ImportError:
            pyarrow = None
        _PYARROW = pyarrow
    return _PYARROW


def _readonly(arr: np.ndarray) -> np.ndarray:
    """A read-only view whose flag cannot be turned back on: numpy refuses
    ``flags.writeable = True`` on a view of a read-only array, so the array that owns the memory
    (always one this package made: callers' offsets are copied first) is locked too."""
    owner = arr
    while isinstance(owner.base, np.ndarray):
        owner = owner.base
    if owner.base is None:
        owner.flags.writeable = False
    view = arr.view()
    view.flags.writeable = False
    return view


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
        self._offsets = _readonly(offsets)
        return self

    @classmethod
    def from_list(cls, values: Sequence[Any]) -> "Batch":
        """Packs a sequence of records: bytes-like values, or ``str`` (encoded as UTF-8).

        The bytes are copied once into one buffer; no per-record object is kept. With pyarrow
        installed its builder packs them (into its memory pool, whose pages are reused from one
        batch to the next); otherwise, and for mixtures it refuses, one C loop packs str, bytes
        and bytearray, and ``bytes.join`` any other buffers (memoryview, numpy arrays).

        Raises:
            InvalidArgumentType: a value is None or not bytes-like.
        """
        if isinstance(values, (bytes, bytearray, memoryview, str)):
            raise InvalidArgumentType("from_list takes a sequence of records, not one value")
        pa = _pyarrow()
        if pa is not None:
            text = len(values) > 0 and isinstance(values[0], str)
            try:  # pyarrow's builders are fastest when the type matches the values
                arr = pa.array(values, type=pa.large_string() if text else pa.large_binary())
            except (pa.ArrowException, TypeError, ValueError):
                arr = None  # mixed kinds, or numpy arrays among the values: packed below
            if arr is not None and not arr.null_count:
                return cls.from_arrow(arr)
        packed = _native.pack(values)
        if packed is not None:
            return cls._trusted(np.frombuffer(packed[0], dtype=np.uint8),
                                np.frombuffer(packed[1], dtype=np.int64))
        n = len(values)
        try:
            items = [v.encode() if isinstance(v, str) else v for v in values]
        except UnicodeEncodeError:  # its message would carry the text
            raise InvalidArgument("a record is str that UTF-8 cannot encode (a lone surrogate)") from None
        for i, v in enumerate(items):
            if not isinstance(v, bytes):
                byte_view(v, f"record {i}")  # raises a clear error for None, int, ...
        joined = b"".join(items)
        offsets = np.empty(n + 1, dtype=np.int64)
        offsets[0] = 0
        lengths = np.fromiter(
            (len(v) if isinstance(v, bytes) else memoryview(v).nbytes for v in items),
            dtype=np.int64,
            count=n,
        )
        np.cumsum(lengths, out=offsets[1:])
        return cls._trusted(np.frombuffer(joined, dtype=np.uint8), offsets)

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

    def to_arrow(self, *, text: bool = False) -> Any:
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
        return self._offsets.shape[0] - 1

    def __getitem__(self, i: int) -> memoryview:
        n = len(self)
        if not -n <= i < n:
            raise IndexError("batch index out of range")
        i %= n
        return memoryview(self._data)[self._offsets[i] : self._offsets[i + 1]]

    def __iter__(self):
        view = memoryview(self._data)
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
        """The records at ``indices`` (in that order), packed into a new batch by native code."""
        idx = np.asarray(indices, dtype=np.int64)
        lengths = self.lengths()[idx]
        off = offsets_of(lengths)
        out = empty_bytes(int(off[-1]), secret=True)  # the records may be plaintext
        if idx.shape[0]:
            _native.gather(idx.shape[0], self._data, self._offsets[:-1][idx], lengths, out,
                           off[:-1], check_threads(threads))
        return Batch._trusted(out, off)

    def to_list(self) -> list[bytes]:
        """Each record as ``bytes`` (a copy)."""
        view = memoryview(self._data)
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

    def __reduce__(self) -> tuple:
        # through the checking constructor: an unpickled batch's offsets are copied, checked
        # and locked again (a pickle restores plain, writable arrays)
        return Batch, (self._data, self._offsets)


_PREFAULT_MIN = 4 << 20
_PAGE = 4096


def empty_bytes(n: int, *, secret: bool = False) -> np.ndarray:
    """An uninitialised ``uint8`` buffer for native output, its pages faulted in by this thread.

    Large public outputs (ciphertexts, tokens, nonces, tags) come from pyarrow's memory pool
    when pyarrow is installed: it keeps freed memory mapped, so the next batch writes into pages
    that are already there instead of faulting in fresh ones (measured: 110 MB allocated and
    filled in 4 ms against 15 ms). Buffers that will hold plaintext (``secret``) never do: the
    pool hands freed pages out again as they are, so a later uninitialised allocation anywhere
    in the process would get the plaintext back, every time.
    numpy asks the kernel for transparent huge pages on large arrays; when several native
    threads then fault the same fresh mapping at once they contend in the kernel and run slower
    than one thread (measured: a 70 MB token pass took 140 ms on two threads, 90 ms on one).
    Touching one byte per page here first costs little and removes that.
    """
    pa = _pyarrow() if n >= _PREFAULT_MIN and not secret else None
    out = np.frombuffer(pa.allocate_buffer(n), np.uint8) if pa else np.empty(n, dtype=np.uint8)
    if n >= _PREFAULT_MIN:
        out[::_PAGE] = 0
    return out


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    """n+1 offsets (starting at 0) for records of the given lengths."""
    off = np.empty(lengths.shape[0] + 1, dtype=np.int64)
    off[0] = 0
    np.cumsum(lengths, out=off[1:])
    return off


MAX_THREADS = 256


def default_threads() -> int:
    """Threads used when ``threads=None``: the cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_threads(threads: int | None) -> int:
    """``threads`` for a native call: None means all cores.

    Raises:
        InvalidArgument: not an integer from 1 to 256.
    """
    if threads is None:
        return default_threads()
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= MAX_THREADS:
        raise InvalidArgument(f"threads must be an integer from 1 to {MAX_THREADS}, or None")
    return threads


def b64url_lengths(lengths: np.ndarray) -> np.ndarray:
    """base64url (no padding) sizes of records of the given lengths."""
    return lengths // 3 * 4 + np.where(lengths % 3 != 0, lengths % 3 + 1, 0)


def scatter(out: Any, starts: Sequence[Any], parts: Sequence[Batch], *,
            threads: int | None = None) -> None:
    """Copies record i of ``parts[k]`` to ``out[starts[k][i]:]`` for every k and i (native).

    Raises:
        InvalidArgument: ``out`` is not writable, or a record would land outside it.
    """
    target = byte_view(out, "out", writable=True)
    for where, part in zip(starts, parts):
        n = len(part)
        where = np.ascontiguousarray(where, dtype=np.int64)
        if where.shape != (n,):
            raise InvalidArgument("scatter needs one start per record")
        lengths = part.lengths()
        if n and (int(where.min()) < 0 or bool((where > target.shape[0] - lengths).any())):
            raise InvalidArgument("a record would land outside the output buffer")
        if n:
            _native.gather(n, part.data, part.offsets[:-1], lengths, target, where,
                           check_threads(threads))


def batch_to_text(batch: Batch) -> list[str]:
    """Each record of a batch decoded from UTF-8 as one str, without a per-record Python loop.

    ASCII records (text tokens, most identifiers) become str objects straight from the buffer in
    C. Other text is joined with an ASCII control byte that occurs in none of the records, and the
    whole buffer is decoded and split in C; only when every candidate separator occurs in the data
    does it fall back to decoding record by record.

    Raises:
        InvalidArgument: a record is not valid UTF-8 (the message shows no content).
    """
    n = len(batch)
    if n == 0:
        return []
    try:
        return _native.ascii_strings(batch.data, batch.offsets)
    except ValueError:  # not ASCII: UTF-8 below
        pass
    data, off = batch.data, batch.offsets
    data = data[int(off[0]) : int(off[-1])]
    off = off - off[0] if off[0] else off
    sep = next((c for c in _SEPARATORS if not (data == c).any()), None)
    try:
        if sep is None:
            return [bytes(v).decode("utf-8") for v in batch]
        lengths = np.diff(off)
        out_off = offsets_of(lengths + 1)
        out = empty_bytes(int(out_off[-1]), secret=True)
        scatter(out, [out_off[:-1]], [batch])
        out[out_off[1:] - 1] = sep
        return str(memoryview(out), "utf-8").split(chr(sep))[:-1]
    except UnicodeDecodeError:
        raise InvalidArgument("decrypted data is not valid UTF-8 text") from None


_SEPARATORS = (0, 31, 30, 29, 28, 1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21,
               22, 23, 24, 25, 26, 27, 127, 10, 9, 13)


def field_values(records: list | tuple, field: Any) -> list:
    """``[r.get(field) for r in records]`` for a list of dicts, in one C loop (a dict subclass's
    own ``get`` is called).

    Raises:
        InvalidArgumentType: ``records`` is not a list or tuple of dicts.
        RuntimeError: the list changed size during the call (code run by a key's ``__eq__``).
    """
    return _native.field_values(records, field)


def with_field(records: list | tuple, field: Any, values: list | tuple) -> list[dict]:
    """New plain dicts, each a shallow copy of ``records[i]`` with ``field`` set to
    ``values[i]``; a ``None`` value for a record that lacks the field leaves it absent. One C
    loop.

    Raises:
        InvalidArgumentType: ``records`` is not a list or tuple of dicts, or ``values`` not a
            list or tuple.
        InvalidArgument: ``values`` does not have one item per record.
        RuntimeError: a list changed size during the call (code run by a key's ``__eq__``).
    """
    return _native.with_field(records, field, values)


STR_VALUES, BYTES_VALUES, NONE_VALUES, OTHER_VALUES = 1, 2, 4, 8


def value_kinds(values: list | tuple) -> int:
    """Which kinds of value a list holds, as bits: :data:`STR_VALUES`, :data:`BYTES_VALUES`
    (bytes, bytearray, memoryview), :data:`NONE_VALUES`, :data:`OTHER_VALUES` (one C pass)."""
    return _native.value_kinds(values)


def prefix_each(prefix: bytes, batch: Batch, *, threads: int | None = None) -> Batch:
    """A new batch whose record i is ``prefix || batch[i]`` (two native gathers, no loop)."""
    return concat_each([prefix, batch], threads=threads)


def concat_each(parts: Sequence[Any], *, threads: int | None = None) -> Batch:
    """A new batch whose record i is ``parts[0][i] || parts[1][i] || ...``: each part is a
    :class:`Batch` of n records or one ``bytes`` value repeated for every record (one native
    gather per part, no per-record loop).

    Raises:
        InvalidArgument: no Batch among the parts, or Batches of different sizes.
    """
    sizes = {len(p) for p in parts if isinstance(p, Batch)}
    if len(sizes) != 1:
        raise InvalidArgument("concat_each needs at least one Batch, all of the same size")
    n = sizes.pop()
    lengths = [p.lengths() if isinstance(p, Batch) else np.full(n, len(p), dtype=np.int64)
               for p in parts]
    off = offsets_of(np.sum(lengths, axis=0) if lengths else np.zeros(n, dtype=np.int64))
    out = empty_bytes(int(off[-1]), secret=True)  # the records may be plaintext
    starts = off[:-1].copy()
    threads = check_threads(threads)
    for part, part_lengths in zip(parts, lengths):
        if n and isinstance(part, Batch):
            _native.gather(n, part.data, part.offsets[:-1], part_lengths, out, starts, threads)
        elif n and len(part):
            _native.gather(n, bytes(part), None, part_lengths, out, starts, threads)
        starts += part_lengths
    return Batch._trusted(out, off)


def interleave(n: int, parts: Sequence[tuple[Any, Batch]], *,
               threads: int | None = None) -> Batch:
    """A batch of ``n`` records where record ``indices[j]`` is ``part[j]`` for each
    ``(indices, part)`` of ``parts`` (the inverse of :meth:`Batch.take`); records no part
    names are empty. One native gather per part.

    Raises:
        InvalidArgument: an index outside ``0..n-1``, or a part whose size differs from its
            indices.
    """
    lengths = np.zeros(n, dtype=np.int64)
    checked = []
    for indices, part in parts:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.shape != (len(part),) or (idx.shape[0] and (int(idx.min()) < 0
                                                           or int(idx.max()) >= n)):
            raise InvalidArgument("interleave needs one index in 0..n-1 per record of a part")
        lengths[idx] = part.lengths()
        checked.append((idx, part))
    off = offsets_of(lengths)
    out = empty_bytes(int(off[-1]), secret=True)
    threads = check_threads(threads)
    for idx, part in checked:
        if idx.shape[0]:
            _native.gather(idx.shape[0], part.data, part.offsets[:-1], part.lengths(), out,
                           off[:-1][idx], threads)
    return Batch._trusted(out, off)


def b64url_encode(batch: Batch, *, prefix: bytes = b"",
                  threads: int | None = None) -> Batch:
    """A batch of ``prefix || base64url(record)`` for every record (RFC 4648 section 5 alphabet,
    no padding), written by native code on threads."""
    off = offsets_of(b64url_lengths(batch.lengths()) + len(prefix))
    out = empty_bytes(int(off[-1]))
    _native.b64url_encode(len(batch), batch.data, batch.offsets, prefix, out, off,
                          check_threads(threads))
    return Batch._trusted(out, off)


B64_PREFIX = _native.B64_PREFIX
B64_LENGTH = _native.B64_LENGTH
B64_CHARACTER = _native.B64_CHARACTER
B64_NONCANONICAL = _native.B64_NONCANONICAL


def b64url_decode(batch: Batch, *, prefix: bytes = b"",
                  threads: int | None = None) -> tuple[Batch, np.ndarray]:
    """Checks each record's prefix and decodes the rest (strict: base64url alphabet, no padding,
    canonical trailing bits).

    Returns:
        ``(decoded, status)``: a batch of decoded records (bad ones zero-filled) and a
        ``uint8`` status per record: 0 ok, or ``B64_PREFIX``, ``B64_LENGTH``, ``B64_CHARACTER``,
        ``B64_NONCANONICAL``.
    """
    p = len(prefix)
    chars = np.maximum(batch.lengths() - p, 0)
    rem = chars % 4
    sizes = chars // 4 * 3 + np.where(rem > 1, rem - 1, 0)
    off = offsets_of(sizes)
    out = empty_bytes(int(off[-1]))
    status = np.empty(len(batch), dtype=np.uint8)
    _native.b64url_decode(len(batch), batch.data, batch.offsets, prefix, out, off, status,
                          check_threads(threads))
    return Batch._trusted(out, off), status


# The standard alphabet (RFC 4648 section 4) differs from base64url in two characters; the
# other alphabet's two are mapped to a byte the base64url decoder refuses.
_STD_TO_URL = np.arange(256, dtype=np.uint8)
_STD_TO_URL[[ord("+"), ord("/"), ord("-"), ord("_")]] = [ord("-"), ord("_"), ord("!"), ord("!")]
_URL_TO_STD = np.arange(256, dtype=np.uint8)
_URL_TO_STD[[ord("-"), ord("_")]] = [ord("+"), ord("/")]


def b64_encode(batch: Batch, *, threads: int | None = None) -> Batch:
    """Standard base64 with padding (what JavaScript's ``Buffer.toString("base64")`` and
    Python's ``base64.b64encode`` write) of every record, by native passes."""
    url = b64url_encode(batch, threads=threads)
    std = Batch._trusted(_URL_TO_STD[url.data], url.offsets)
    pad = (3 - batch.lengths() % 3) % 3
    return concat_each([std, Batch._trusted(np.full(int(pad.sum()), ord("="), dtype=np.uint8),
                                             offsets_of(pad))], threads=threads)


def b64_decode(batch: Batch, *, threads: int | None = None) -> tuple[Batch, np.ndarray]:
    """Decodes standard base64 with padding, strictly (a length that is a multiple of 4, no
    character of base64url, canonical padding and trailing bits), by native passes.

    Returns:
        ``(decoded, status)`` as :func:`b64url_decode`: bad records decode to zero bytes and
        have a non-zero status.
    """
    n = len(batch)
    lengths = batch.lengths()
    ends = batch.offsets[1:]

    def ends_with_pad(k: int) -> np.ndarray:
        """Whether the k-th byte from the end of each record is "="."""
        found = np.zeros(n, dtype=bool)
        long_enough = np.flatnonzero(lengths >= k)
        found[long_enough] = batch.data[ends[long_enough] - k] == ord("=")
        return found

    last = ends_with_pad(1)
    pad = last.astype(np.int64) + (last & ends_with_pad(2))
    first = int(batch.offsets[0])
    url = Batch._trusted(_STD_TO_URL[batch.data[first : int(batch.offsets[-1])]],
                         batch.offsets - first)
    # A length that is not a multiple of 4 is cut to one character, which the decoder refuses
    # as a bad length (and zero-fills, like every record it refuses).
    body = np.where(lengths % 4 != 0, 1, lengths - pad)
    return b64url_decode(url.slices(url.offsets[:-1], body), threads=threads)


def as_batch(values: Any, name: str) -> Batch:
    """A :class:`Batch` from a Batch, a pyarrow array or a sequence of bytes-like values."""
    if isinstance(values, Batch):
        return values
    if type(values).__module__.startswith("pyarrow"):
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
    if type(values).__module__.startswith("pyarrow"):
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
            return values.shape[0] // n
        if values.ndim == 1 and n == 0 and values.shape[0] == 0:
            return 16
        raise InvalidArgument(f"{name} must be an array of shape (n, width)")
    width = getattr(getattr(values, "type", None), "byte_width", None)
    if width is not None:
        return int(width)
    batch = as_batch(values, name)
    return int(batch.lengths()[0]) if len(batch) else 0


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
        self._ciphertexts = ct
        self._nonces = np.ascontiguousarray(fixed_width(nonces, n, width, "nonces"))
        self._tags = np.ascontiguousarray(fixed_width(tags, n, TAG_BYTES, "tags"))

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

    def __reduce__(self) -> tuple:
        return _sealed_batch, (self._nonces, self._tags, self._ciphertexts)

    def __repr__(self) -> str:
        return (
            f"<SealedBatch records={len(self)} nonce_size={self.nonce_size} "
            f"bytes={self.ciphertexts.nbytes}>"
        )

    def to_arrow(self) -> Any:
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
