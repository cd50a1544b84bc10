"""The column value format, version 1 (docs/column-format.md): one encrypted Arrow value per
stored value, carrying its key version and its type::

    format (1) | key version (varint) | type | nonce (12, or 24) | ciphertext | tag (16)

``type`` is the value's type descriptor (:mod:`engine.columns.types`) after its length, or, for
a descriptor longer than 8 bytes, the first 4 bytes of its SHA-256; then one value in 1,024 (the
first of each run) still carries the whole descriptor, so that a column restores its type from
its values alone. The AAD binds the format version, the algorithm, the key version, the column's
name and the whole descriptor: a value moved to another column, or with its type or version
edited, fails authentication.

A column is sealed with one native call under the current key version, each token written
straight into its row's place in an Arrow ``large_binary`` column, and opened with one native
call per (key version, header) into the buffer the result array is made from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from ..batch import Batch
from ..buffers import empty_bytes, offsets_of, pyarrow_module
from ..codecs import b64url_decode, b64url_encode, concat_each
from ..errors import BatchInvalidTag, InvalidArgument, InvalidArgumentType
from ..service import EncryptionService, get_encryption_service
from .arrays import binary_parts, is_binary_like, validity
from .errors import ColumnTypeMismatch, MalformedColumnValue, UnknownColumnFormat, UnknownColumnType
from .packing import read_uvarint, read_uvarints, uvarint
from .types import DIGEST_BYTES, descriptor_digest, type_descriptor, type_from_descriptor
from .values import PlaintextLayout, plaintexts

__all__ = ["AAD_DOMAIN", "COMPANION_EVERY", "FORMATS", "INLINE_MAX", "TEXT_PREFIX",
           "ColumnValuesInfo", "column_aad", "decrypt_array", "encrypt_array",
           "inspect_values", "to_text", "from_text"]

FORMAT_BASE = 0xC0
FORMATS = range(0xC0, 0xC4)  # 0xC0 + 2 * algorithm + (1 if the type is a reference)
ALGORITHMS = ("aes-256-gcm", "xaes-256-gcm")
NONCE_BYTES = (12, 24)
TAG_BYTES = 16
INLINE_MAX = 8
COMPANION_EVERY = 1024
AAD_DOMAIN = b"engine.column.v1\x00"
TEXT_PREFIX = b"ec1:"
MAX_KEY_VERSION = 2**32 - 1


def _pa() -> Any:
    pa = pyarrow_module()
    if pa is None:
        raise InvalidArgumentType("columns need pyarrow (the `arrow` extra)")
    return pa


def column_aad(algorithm: int, version: int, column: str, descriptor: bytes) -> bytes:
    """The AAD every value of a column starts with: domain, algorithm, key version (uint32
    big-endian), column name (UTF-8) and type descriptor, each of the last two after its length
    as a varint."""
    name = column.encode("utf-8")
    return (AAD_DOMAIN + bytes([algorithm]) + version.to_bytes(4, "big") + uvarint(len(name))
            + name + uvarint(len(descriptor)) + descriptor)


def _check_column(column: Any) -> str:
    if not isinstance(column, str) or not column:
        raise InvalidArgumentType("the column name must be a non-empty str")
    try:
        column.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument("the column name is not valid Unicode") from None
    return column


def _row_aad(aad: Any, rows: np.ndarray | None, n: int) -> Any:
    """The caller's per-row AAD for the present rows (a Batch), or one bytes value, or None."""
    if aad is None:
        return None
    if isinstance(aad, (bytes, bytearray, memoryview)):
        return bytes(aad)
    pa = _pa()
    if isinstance(aad, pa.ChunkedArray):
        aad = aad.combine_chunks()
    if isinstance(aad, pa.Array):
        if aad.null_count:
            raise InvalidArgument("the per-row AAD has NULLs")
        data, offsets = binary_parts(aad if is_binary_like(aad.type) else aad.cast(pa.large_binary()))
        batch = Batch._trusted(data, offsets)
    elif isinstance(aad, Batch):
        batch = aad
    else:
        raise InvalidArgumentType("aad must be bytes, a pyarrow array or an engine.Batch")
    if len(batch) != n:
        raise InvalidArgument(f"the per-row AAD has {len(batch)} values for {n} rows")
    return batch if rows is None else batch.take(rows)


def _with_prefix(prefix: bytes, row_aad: Any) -> Any:
    if row_aad is None:
        return prefix
    if isinstance(row_aad, bytes):
        return prefix + row_aad
    return concat_each([prefix, row_aad])


def _chunks(array: Any) -> tuple[list[Any], bool]:
    pa = _pa()
    if isinstance(array, pa.ChunkedArray):
        return list(array.chunks), True
    if isinstance(array, pa.Array):
        return [array], False
    raise InvalidArgumentType(f"expected a pyarrow Array or ChunkedArray, not {type(array).__name__}")


def _valid_bitmap(rows: np.ndarray | None, n: int) -> Any:
    if rows is None:
        return None
    valid = np.zeros(n, dtype=bool)
    valid[rows] = True
    return _pa().py_buffer(np.packbits(valid, bitorder="little"))


# ---------------------------------------------------------------- sealing


def encrypt_array(array: Any, column: str, *, service: EncryptionService | None = None,
                  aad: Any = None, threads: int | None = None) -> Any:
    """Encrypts every value of an Arrow array of any type into the column format.

    Args:
        array: a pyarrow ``Array`` or ``ChunkedArray`` (each chunk is one native call).
        column: the column's name, bound into every value's AAD.
        service: default: the process-wide :func:`engine.get_encryption_service`.
        aad: extra associated data: one str (UTF-8) or bytes value for all rows, or one value
            per row (a pyarrow binary or string array, or an :class:`~engine.Batch`), appended
            to the AAD.
        threads: native threads (None: all cores).

    Returns:
        A ``large_binary`` array (chunked like the input): one value per row, NULL where the
        input is NULL.

    Raises:
        InvalidArgumentType: a type the serialization does not cover, or a bad argument.
        KeyVersionNotUsable, KeyUsageExhausted: the current key version may not encrypt.
    """
    pa = _pa()
    column = _check_column(column)
    chunks, chunked = _chunks(array)
    aad = _common_aad(aad, chunked)
    service = service or get_encryption_service()
    out = [_encrypt_chunk(chunk, column, service, aad, threads) for chunk in chunks]
    return pa.chunked_array(out, type=pa.large_binary()) if chunked else out[0]


def _common_aad(aad: Any, chunked: bool) -> Any:
    """The caller's AAD: str as UTF-8; per-row AAD only for a single array."""
    if isinstance(aad, str):
        aad = aad.encode("utf-8")
    if chunked and aad is not None and not isinstance(aad, (bytes, bytearray, memoryview)):
        raise InvalidArgument("per-row AAD takes a single Array, not a ChunkedArray")
    return aad


def _encrypt_chunk(array: Any, column: str, service: EncryptionService, aad: Any,
                   threads: int | None) -> Any:
    pa = _pa()
    n = len(array)
    descriptor = type_descriptor(array.type)
    try:  # never write values that could not be read back as exactly this type
        type_from_descriptor(descriptor)
    except UnknownColumnType:
        raise InvalidArgumentType(f"column {column!r}: Arrow cannot rebuild the type "
                                  f"{array.type} from its description, so its values would "
                                  "not decrypt to it; nothing was encrypted") from None
    plain, rows = plaintexts(array)
    row_aad = _row_aad(aad, rows, n)
    count = len(plain)
    if count == 0:
        return pa.nulls(n, pa.large_binary()) if n else pa.array([], pa.large_binary())
    key = service.sealing_key(count)
    algorithm = ALGORITHMS.index(key.algorithm)
    nonce_bytes = NONCE_BYTES[algorithm]
    version = uvarint(key.version)
    inline = bytes([FORMAT_BASE + 2 * algorithm]) + version + uvarint(len(descriptor)) + descriptor
    if len(descriptor) <= INLINE_MAX:
        header, companions = inline, np.empty(0, dtype=np.int64)
    else:
        header = bytes([FORMAT_BASE + 2 * algorithm + 1]) + version + descriptor_digest(descriptor)
        companions = np.arange(0, count, COMPANION_EVERY, dtype=np.int64)
    extra = len(inline) - len(header)
    sizes = plain.lengths() + (len(header) + nonce_bytes + TAG_BYTES)
    sizes[companions] += extra
    row_sizes = sizes if rows is None else np.zeros(n, dtype=np.int64)
    if rows is not None:
        row_sizes[rows] = sizes
    offsets = offsets_of(row_sizes)
    starts = offsets[:-1] if rows is None else offsets[:-1][rows]
    seal_at = starts.copy()
    seal_at[companions] += extra
    out = empty_bytes(int(offsets[-1]))
    key.cipher.seal_tokens(plain, header, _with_prefix(column_aad(algorithm, key.version, column,
                                                                  descriptor), row_aad),
                           bind_header=False, nonce_size=nonce_bytes, out=out, out_starts=seal_at,
                           threads=threads)
    if companions.shape[0]:  # the whole header over the short one and the gap before it
        out[starts[companions][:, None] + np.arange(len(inline))] = np.frombuffer(inline, np.uint8)
    return pa.Array.from_buffers(pa.large_binary(), n, [_valid_bitmap(rows, n),
                                                        pa.py_buffer(offsets), pa.py_buffer(out)])


# ---------------------------------------------------------------- reading headers


@dataclass(frozen=True)
class _Headers:
    """The parsed headers of the present values of one array."""

    tokens: Batch  # the present values
    rows: np.ndarray | None  # their rows (None: every row)
    n: int  # rows in the array
    fmt: np.ndarray  # format byte
    versions: np.ndarray  # key version
    header_bytes: np.ndarray  # header length
    type_at: np.ndarray  # where the descriptor or digest starts
    type_bytes: np.ndarray  # its length
    uniform: bool  # every value has the same header bytes


def _binary_values(array: Any) -> Any:
    """The values as binary: text-form values decoded from base64url."""
    pa = _pa()
    t = array.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return from_text(array)
    if not is_binary_like(t):
        raise InvalidArgumentType(f"column values are binary or text, not {t}")
    return array


def _present(array: Any) -> tuple[Batch, np.ndarray | None]:
    """(the present values of a binary-like array as a Batch, their rows or None for all)."""
    valid = validity(array)
    data, offsets = binary_parts(array)
    if valid is None:
        return Batch._trusted(data, offsets), None
    rows = np.flatnonzero(valid)
    if rows.shape[0] and not bool((np.diff(offsets)[~valid] != 0).any()):
        # NULLs take no bytes: the present values are contiguous as they are
        return Batch._trusted(data, np.append(offsets[rows], offsets[rows[-1] + 1])), rows
    return Batch._trusted(data, offsets).take(rows), rows


def _rows_array(data_type: Any, present: Batch, rows: np.ndarray | None, n: int) -> Any:
    """A binary-like array of n rows: the present values (contiguous) at ``rows``."""
    pa = _pa()
    sizes = present.lengths() if rows is None else np.zeros(n, dtype=np.int64)
    if rows is not None:
        sizes[rows] = present.lengths()
    data = present.data[int(present.offsets[0]) : int(present.offsets[-1])]
    return pa.Array.from_buffers(data_type, n, [_valid_bitmap(rows, n),
                                                pa.py_buffer(offsets_of(sizes)), pa.py_buffer(data)])


def _one_header(value: memoryview) -> tuple[int, int, int, int]:
    """(format, key version, where the type field starts, its length) of one value."""
    if len(value) < 2 or value[0] not in FORMATS:
        raise UnknownColumnFormat("a value is not in a column format this engine reads")
    version, at = read_uvarint(value, 1, min(len(value), 6))
    if not 1 <= version <= MAX_KEY_VERSION:
        raise MalformedColumnValue("a value's key version is out of range")
    if (value[0] - FORMAT_BASE) % 2:
        return value[0], version, at, DIGEST_BYTES
    length, start = read_uvarint(value, at)
    return value[0], version, start, length


def _uniform_headers(tokens: Batch, rows: np.ndarray | None, n: int) -> _Headers | None:
    """The headers when every value has the first value's header (the usual column: one key
    version, the type inline): checked with one pass per header byte."""
    count = len(tokens)
    starts, ends = tokens.offsets[:-1], tokens.offsets[1:]
    fmt, version, type_at, type_bytes = _one_header(tokens[0])
    width = type_at + type_bytes
    minimum = width + NONCE_BYTES[(fmt - FORMAT_BASE) // 2] + TAG_BYTES
    if bool((ends - starts < minimum).any()):
        return None
    data, first = tokens.data, int(starts[0])
    for k in range(width):
        if not (data[starts + k] == data[first + k]).all():
            return None
    return _Headers(tokens, rows, n, np.full(count, fmt, dtype=np.uint8),
                    np.full(count, version, dtype=np.int64), np.full(count, width, dtype=np.int64),
                    starts + type_at, np.full(count, type_bytes, dtype=np.int64), True)


def _parse_headers(array: Any) -> _Headers:
    array = _binary_values(array)
    n = len(array)
    tokens, rows = _present(array)
    starts, ends = tokens.offsets[:-1], tokens.offsets[1:]
    count = len(tokens)
    if count:
        uniform = _uniform_headers(tokens, rows, n)
        if uniform is not None:
            return uniform
    if count and bool((ends - starts < 2).any()):
        raise MalformedColumnValue("a value is too short to be in the column format")
    fmt = tokens.data[starts] if count else np.empty(0, dtype=np.uint8)
    if bool(((fmt < FORMATS.start) | (fmt >= FORMATS.stop)).any()):
        raise UnknownColumnFormat("a value is not in a column format this engine reads")
    versions, vsize = read_uvarints(tokens.data, starts + 1, ends, max_bytes=5)
    if bool(((versions < 1) | (versions > MAX_KEY_VERSION)).any()):
        raise MalformedColumnValue("a value's key version is out of range")
    at = starts + 1 + vsize
    inline = (fmt - FORMAT_BASE) % 2 == 0
    type_at = at + 0
    type_bytes = np.full(count, DIGEST_BYTES, dtype=np.int64)
    if inline.any():
        length, lsize = read_uvarints(tokens.data, at[inline], ends[inline])
        type_at[inline] = at[inline] + lsize
        type_bytes[inline] = length
    header_bytes = type_at + type_bytes - starts
    algorithm = (fmt.astype(np.int64) - FORMAT_BASE) // 2
    minimum = header_bytes + np.asarray(NONCE_BYTES)[algorithm] + TAG_BYTES
    if bool((ends - starts < minimum).any()):
        raise MalformedColumnValue("a value is too short to hold its header, nonce and tag")
    return _Headers(tokens, rows, n, fmt, versions, header_bytes, type_at, type_bytes, False)


def _groups(h: _Headers) -> list[np.ndarray]:
    """The indices of the values that share one header (format, version, type), each group's
    headers checked byte for byte."""
    count = len(h.tokens)
    if count == 0:
        return []
    if h.uniform:
        return [np.arange(count, dtype=np.int64)]
    key = (h.fmt.astype(np.int64) << 56) | (h.versions << 20) | np.minimum(h.header_bytes, 2**20 - 1)
    if bool((key == key[0]).all()):
        groups = [np.arange(count, dtype=np.int64)]
    else:
        _, inverse = np.unique(key, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.flatnonzero(np.diff(inverse[order])) + 1
        groups = np.split(order, bounds)
    starts = h.tokens.offsets[:-1]
    data = h.tokens.data
    for idx in groups:
        at = starts if idx.shape[0] == count else starts[idx]
        first = int(at[0])
        for k in range(int(h.header_bytes[idx[0]])):  # one pass per header byte, not per value
            if not (data[at + k] == data[first + k]).all():
                raise ColumnTypeMismatch("the values of the column record different types")
    return groups


def _descriptor_of(h: _Headers, i: int, known: Mapping[bytes, bytes]) -> bytes:
    start = int(h.type_at[i])
    raw = bytes(h.tokens.data[start : start + int(h.type_bytes[i])])
    if (int(h.fmt[i]) - FORMAT_BASE) % 2 == 0:
        return raw
    found = known.get(raw)
    if found is None:
        raise UnknownColumnType(
            "a value refers to its type by a digest and no value of the column carries the "
            "whole type; give the column's type (types=) to decrypt it")
    return found


def _known_descriptors(h: _Headers, groups: list[np.ndarray], types: Iterable[Any]) -> dict[bytes, bytes]:
    known: dict[bytes, bytes] = {}
    for t in types:
        descriptor = t if isinstance(t, (bytes, bytearray)) else type_descriptor(t)
        known[descriptor_digest(bytes(descriptor))] = bytes(descriptor)
    for idx in groups:
        if (int(h.fmt[idx[0]]) - FORMAT_BASE) % 2 == 0:
            descriptor = _descriptor_of(h, int(idx[0]), known)
            known[descriptor_digest(descriptor)] = descriptor
    return known


# ---------------------------------------------------------------- opening


def decrypt_array(array: Any, column: str, *, service: EncryptionService | None = None,
                  types: Iterable[Any] = (), expected: Any = None, aad: Any = None,
                  threads: int | None = None) -> Any:
    """Decrypts a column of values in the column format back to the Arrow type they record.

    Args:
        array: a pyarrow ``Array`` or ``ChunkedArray`` of binary values (any binary type), or
            of their text form (``ec1:`` + base64url, see :func:`to_text`); NULLs stay NULL.
        column: the name the values were encrypted under.
        service: default: the process-wide :func:`engine.get_encryption_service`.
        types: pyarrow types or descriptors the values may refer to by digest (needed only when
            no value of the column carries the whole type, e.g. after rows were filtered).
        expected: the type the column must have (default: whatever the values record).
        aad: the extra associated data given at encryption (see :func:`encrypt_array`).
        threads: native threads (None: all cores).

    Returns:
        An array (chunked like the input) of the recorded type. A column with no value at
        all has the ``expected`` type, else the null type.

    Raises:
        UnknownColumnFormat, MalformedColumnValue: a value is not in the column format.
        UnknownColumnType: the type cannot be restored (see ``types``).
        ColumnTypeMismatch: values of different types, or not ``expected``.
        UnknownKeyVersion: a value names a version the provider does not have.
        BatchInvalidTag: values failed authentication (wrong column or AAD, edited, moved);
            ``.failed`` lists their rows (in the whole array); nothing is returned.
    """
    pa = _pa()
    column = _check_column(column)
    chunks, chunked = _chunks(array)
    service = service or get_encryption_service()
    parsed = [_parse_headers(chunk) for chunk in chunks]
    grouped = [_groups(h) for h in parsed]
    known: dict[bytes, bytes] = {}
    wanted = list(types) + ([expected] if expected is not None else [])
    for h, groups in zip(parsed, grouped):
        known.update(_known_descriptors(h, groups, wanted))
    descriptors = {_descriptor_of(h, int(idx[0]), known) for h, groups in zip(parsed, grouped)
                   for idx in groups}
    if expected is not None:
        descriptors.add(type_descriptor(expected))
    if len(descriptors) > 1:
        raise ColumnTypeMismatch("the values of the column record different types"
                                 + (" (or not the type expected)" if expected is not None else ""))
    data_type = type_from_descriptor(descriptors.pop()) if descriptors else pa.null()
    aad = _common_aad(aad, chunked)
    out, failed, first_row = [], [], 0
    for h, groups in zip(parsed, grouped):
        try:
            out.append(_open_chunk(h, groups, data_type, column, service, aad, threads))
        except BatchInvalidTag as exc:
            failed.append(exc.failed + first_row)
        first_row += h.n
    if failed:
        raise BatchInvalidTag(np.concatenate(failed), None)
    return pa.chunked_array(out, type=data_type) if chunked else out[0]


def _open_chunk(h: _Headers, groups: list[np.ndarray], data_type: Any, column: str,
                service: EncryptionService, aad: Any, threads: int | None) -> Any:
    tokens = h.tokens
    algorithms = (h.fmt.astype(np.int64) - FORMAT_BASE) // 2
    sizes = tokens.lengths() - h.header_bytes - np.asarray(NONCE_BYTES)[algorithms] - TAG_BYTES
    layout = PlaintextLayout(data_type, sizes, h.rows, h.n)
    out = layout.buffer()
    descriptor = type_descriptor(data_type)
    row_aad = _row_aad(aad, h.rows, h.n)
    failed: list[np.ndarray] = []
    try:
        for idx in groups:
            algorithm, version = int(algorithms[idx[0]]), int(h.versions[idx[0]])
            key = service.opening_key(version)
            if key.algorithm != ALGORITHMS[algorithm]:  # sealed otherwise: cannot be authentic
                failed.append(idx)
                continue
            whole = idx.shape[0] == len(tokens)
            sub_aad = row_aad if whole or not isinstance(row_aad, Batch) else row_aad.take(idx)
            try:
                key.cipher.open_tokens(tokens if whole else tokens.take(idx),
                                       int(h.header_bytes[idx[0]]),
                                       _with_prefix(column_aad(algorithm, version, column,
                                                               descriptor), sub_aad),
                                       bind_header=False, nonce_size=NONCE_BYTES[algorithm],
                                       out=out, out_starts=layout.starts[idx], threads=threads)
            except BatchInvalidTag as exc:
                failed.append(idx[exc.failed])
            else:
                service.count_opened(version, idx.shape[0])
        if failed:
            bad = np.sort(np.concatenate(failed))
            service.count_failed(bad.shape[0])
            raise BatchInvalidTag(bad if h.rows is None else h.rows[bad], None)
        try:
            return layout.array(out)
        except _pa().ArrowException:  # Arrow's messages may quote values: none is shown
            pass
        raise MalformedColumnValue("the plaintexts do not form an array of their recorded type")
    except BaseException:
        out.fill(0)
        raise


# ---------------------------------------------------------------- text form and inspection


def to_text(array: Any) -> Any:
    """The text form of encrypted values, for carriers that hold only text (CSV, JSON, text
    columns): ``ec1:`` followed by the value in base64url without padding (a ``large_string``
    array, chunked like the input; NULLs stay NULL)."""
    pa = _pa()
    chunks, chunked = _chunks(array)
    out = []
    for chunk in chunks:
        present, rows = _present(chunk)
        out.append(_rows_array(pa.large_string(), b64url_encode(present, prefix=TEXT_PREFIX),
                               rows, len(chunk)))
    return pa.chunked_array(out, type=pa.large_string()) if chunked else out[0]


def from_text(array: Any) -> Any:
    """The binary values of text-form values (``large_binary``; NULLs stay NULL).

    Raises:
        MalformedColumnValue: a value is not ``ec1:`` and strict base64url.
    """
    present, rows = _present(array)
    decoded, status = b64url_decode(present, prefix=TEXT_PREFIX)
    if bool(status.any()):
        raise MalformedColumnValue("a text value is not 'ec1:' and base64url")
    return _rows_array(_pa().large_binary(), decoded, rows, len(array))


@dataclass(frozen=True)
class ColumnValuesInfo:
    """What the headers of a column's values say, read without any key.

    Attributes:
        values: encrypted values (NULLs not counted).
        versions: key version -> number of values.
        data_type: the type the values record (None when no value carries it whole).
    """

    values: int
    versions: dict[int, int]
    data_type: Any


def inspect_values(array: Any, *, types: Iterable[Any] = ()) -> ColumnValuesInfo:
    """Counts a column's values per key version and reads the type they record, from their
    headers alone (no key is used; nothing is decrypted).

    Raises:
        UnknownColumnFormat, MalformedColumnValue: a value is not in the column format.
        ColumnTypeMismatch: values of different types.
    """
    chunks, _ = _chunks(array)
    versions: dict[int, int] = {}
    descriptors: set[bytes] = set()
    unresolved = False
    count = 0
    parsed = [_parse_headers(chunk) for chunk in chunks]
    known: dict[bytes, bytes] = {}
    grouped = [_groups(h) for h in parsed]
    for h, groups in zip(parsed, grouped):
        known.update(_known_descriptors(h, groups, types))
    for h, groups in zip(parsed, grouped):
        count += len(h.tokens)
        found, number = np.unique(h.versions, return_counts=True)
        for v, c in zip(found.tolist(), number.tolist()):
            versions[v] = versions.get(v, 0) + c
        for idx in groups:
            try:
                descriptors.add(_descriptor_of(h, int(idx[0]), known))
            except UnknownColumnType:
                unresolved = True
    if len(descriptors) > 1:
        raise ColumnTypeMismatch("the values of the column record different types")
    data_type = type_from_descriptor(descriptors.pop()) if descriptors and not unresolved else None
    return ColumnValuesInfo(count, dict(sorted(versions.items())), data_type)
