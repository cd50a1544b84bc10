"""Blind indexes: equality search over encrypted columns (``WHERE email_idx = ?``).

A blind index of a column is HMAC-SHA-256 of the column's normalised value under a key of its
own (:meth:`engine.keys.KeyProvider.index_key`: per table, column and key version, separate from
the data keys), truncated to a few bits and stored beside the ciphertext as hex text. A query
computes the same value for what it looks for; the rows it finds are decrypted and compared, which
drops the false positives that truncation makes on purpose. Indexes over several fields
(``last_name`` + ``birth_year``) hash each normalised field after its 4-byte length.

Index keys follow the key versions: a row is indexed under the version it is encrypted with, and
:meth:`BlindIndex.lookup` returns the candidate for each version that may still hold rows (the
current one first, then every version not yet purged), so lookups keep working while rows are
re-indexed after a rotation.
:meth:`BlindIndex.compute` with ``version=`` computes a batch under a given version, as the
re-encryption pipeline does when it moves rows to a new key.

Normalisation and hashing run over whole batches: normalisers are array operations on the
packed bytes, the HMAC is one native call on threads (see ``native/src/hmac.c``). docs/blind-indexes.md says
what a blind index reveals and how to choose the bit length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    NoReturn,
    Sequence,
    TypeVar,
)

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

from . import _native
from .batch import Batch
from .buffers import check_threads, empty_bytes, is_arrow, offsets_of, pyarrow_module
from .codecs import batch_to_text, scatter
from .errors import EngineError, InvalidArgument, InvalidArgumentType
from .keys.base import KeyProvider
from .locks import fork_safe_lock
from .records import BYTES_VALUES, STR_VALUES, value_kinds

__all__ = [
    "NORMALIZERS",
    "BlindIndex",
    "BlindIndexError",
    "BlindIndexes",
    "IndexDefinition",
    "NormalisationError",
    "UnknownBlindIndex",
    "as_blind_indexes",
    "bits_for_rows",
    "definitions",
    "under_one_version",
]

MAX_BITS = 32
DEFAULT_EXPECTED_ROWS = 1_000_000


class BlindIndexError(EngineError):
    """A blind index cannot be computed or used as asked."""


class NormalisationError(BlindIndexError, InvalidArgument):
    """Values fail their index's normaliser (an email without exactly one ``@``, say).
    ``failed`` holds their positions; the message names the first, never a value."""

    def __init__(self, message: str, failed: np.ndarray) -> None:
        super().__init__(message)
        self.failed = failed


class UnknownBlindIndex(BlindIndexError, LookupError):
    """No blind index of that name is configured for the table."""


def bits_for_rows(expected_rows: int) -> int:
    """The bit length for a table of ``expected_rows`` distinct values: floor(log2(rows)) - 1
    (at least 1, at most 32), so that each index value is shared by two to four rows and every
    lookup returns a few false positives (see docs/blind-indexes.md).

    Raises:
        InvalidArgument: not a positive integer.
    """
    if type(expected_rows) is not int or expected_rows < 1:
        raise InvalidArgument("expected_rows must be a positive integer")
    return max(1, min(MAX_BITS, int(math.log2(expected_rows)) - 1))


# ---------------------------------------------------------------- normalisers
#
# The named ones run natively over the packed batch, on threads (engine_normalize_batch). They
# act on ASCII only (case and whitespace of other scripts stay as they are), which keeps them
# exact and the same on every path.

#: The named normalisers: ``exact`` (the bytes as given), ``trim`` (ASCII whitespace off both
#: ends), ``lower`` (A-Z lower-cased), ``text`` (trim, then lower), ``email`` (text, then exactly
#: one ``@`` with something on each side, no whitespace, at most 254 bytes), ``digits`` (only
#: 0-9 kept; at least one). A callable ``str -> str`` also works (called once per value, in
#: Python).
NORMALIZERS: dict[str, int] = {
    "exact": 0,
    "trim": _native.NORM_TRIM,
    "lower": _native.NORM_LOWER,
    "text": _native.NORM_TRIM | _native.NORM_LOWER,
    "email": _native.NORM_TRIM | _native.NORM_LOWER | _native.NORM_EMAIL,
    "digits": _native.NORM_DIGITS,
}


def _normalizer(spec: Any) -> int | Callable[[str], str]:
    if callable(spec):
        return spec
    if isinstance(spec, str) and spec in NORMALIZERS:
        return NORMALIZERS[spec]
    raise InvalidArgument(f"unknown normaliser {spec!r}; use a callable or one of: "
                          + ", ".join(NORMALIZERS))


def _apply(normalizer: int | Callable[[str], str], batch: Batch,
           threads: int) -> tuple[Batch, np.ndarray]:
    """(the normalised batch, a bool per record: fails the normaliser)."""
    n = len(batch)
    if callable(normalizer):
        return _apply_callable(normalizer, batch)
    if not normalizer or not n:
        return batch, np.zeros(n, dtype=bool)
    out = empty_bytes(batch.nbytes, secret=True)
    lengths = np.empty(n, dtype=np.int64)
    bad = np.empty(n, dtype=np.uint8)
    _native.normalize_batch(normalizer, n, batch.data, batch.offsets, out, lengths, bad, threads)
    starts = batch.offsets[:-1] - batch.offsets[0]
    whole = Batch._trusted(out, np.array([0, out.shape[0]], dtype=np.int64))
    same = np.array_equal(lengths, batch.lengths())
    if same:
        return Batch._trusted(out, offsets_of(lengths)), bad.view(bool)
    normalised = whole.slices(starts, lengths)
    out.fill(0)  # the normalised plaintexts, copied into ``normalised``
    return normalised, bad.view(bool)


def _apply_callable(fn: Callable[[str], str], batch: Batch) -> tuple[Batch, np.ndarray]:
    """A caller's normaliser, value by value; an exception or a non-str result marks the value
    bad (the exception is dropped: it may hold the value)."""
    out: list[str] = []
    bad = np.zeros(len(batch), dtype=bool)
    for i, raw in enumerate(batch):
        try:
            value = fn(bytes(raw).decode("utf-8"))
        except Exception:  # noqa: BLE001 - reported as a NormalisationError below
            value = None
        if not isinstance(value, str):
            bad[i] = True
            value = ""
        out.append(value)
    return Batch.from_list(out), bad


# ---------------------------------------------------------------- values in, hex out


def _column(values: Any, what: str) -> tuple[int, np.ndarray | None, Batch]:
    """(rows, positions of the non-null values or None when none is null, a Batch of those
    values: str as UTF-8, int as its decimal text)."""
    if isinstance(values, Batch):
        return len(values), None, values
    pa = pyarrow_module()
    if is_arrow(values):
        arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        present = None
        if arr.null_count:
            present = np.flatnonzero(arr.is_valid().to_numpy(zero_copy_only=False))
            arr = arr.drop_null()
        t = arr.type
        if pa.types.is_integer(t):
            arr = arr.cast(pa.large_string())
        elif not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
                  or pa.types.is_large_binary(t)):
            raise InvalidArgumentType(f"{what} is a {t} column; index str, bytes or int values")
        if not pa.types.is_large_binary(arr.type):
            arr = arr.cast(pa.large_binary())
        return len(values), present, Batch.from_arrow(arr)
    if not isinstance(values, (list, tuple)):
        raise InvalidArgumentType(f"{what} must be a list, a Batch or a pyarrow array, "
                                  f"not {type(values).__name__}")
    kinds = value_kinds(values)
    if kinds in (STR_VALUES, BYTES_VALUES, STR_VALUES | BYTES_VALUES):
        return len(values), None, Batch.from_list(values)
    present_rows: list[int] = []
    kept: list[Any] = []
    for i, v in enumerate(values):
        if v is None:
            continue
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        elif not isinstance(v, (str, bytes, bytearray, memoryview)):
            raise InvalidArgumentType(f"{what}[{i}] is {type(v).__name__}; index str, bytes or "
                                      f"int values")
        present_rows.append(i)
        kept.append(v)
    return len(values), np.asarray(present_rows, dtype=np.int64), Batch.from_list(kept)


def _length_prefixed(parts: list[Batch]) -> Batch:
    """Record i = for each part: uint32 big-endian length || bytes (unambiguous joins)."""
    n = len(parts[0])
    lengths = [p.lengths() for p in parts]
    off = offsets_of(np.sum(lengths, axis=0) + 4 * len(parts))
    out = empty_bytes(int(off[-1]), secret=True)
    at = off[:-1].copy()
    starts, pieces = [], []
    for part, lens in zip(parts, lengths):
        prefix = np.ascontiguousarray(lens.astype(">u4")).view(np.uint8)
        pieces += [Batch._trusted(prefix, np.arange(n + 1, dtype=np.int64) * 4), part]
        starts += [at.copy(), at + 4]
        at += 4 + lens
    scatter(out, starts, pieces)
    return Batch._trusted(out, off)


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)


def _hex_batch(digests: np.ndarray, chars: int) -> Batch:
    """Each row of (at most 4) digest bytes as its first ``chars`` hex digits."""
    n = digests.shape[0]
    word = np.zeros((n, 4), dtype=np.uint8)
    word[:, :digests.shape[1]] = digests
    value = word.view(">u4").reshape(n)
    text = np.empty((n, chars), dtype=np.uint8)
    for k in range(chars):
        text[:, k] = _HEX_DIGITS[(value >> np.uint32(28 - 4 * k)) & np.uint32(15)]
    return Batch._trusted(text.reshape(-1), np.arange(n + 1, dtype=np.int64) * chars)


# ---------------------------------------------------------------- the index


@dataclass(frozen=True)
class IndexDefinition:
    """What a :class:`BlindIndex` is, without its keys: it pickles (the re-encryption pipeline
    sends it to worker processes) and :meth:`build` makes the same index with any provider that
    holds the same keys. :attr:`BlindIndex.definition` gives an index's own.

    Attributes:
        table: the table the index keys belong to.
        columns: the indexed columns, in order.
        normalizers: one per column: a name from :data:`NORMALIZERS` or a callable ``str ->
            str`` (a module-level function, to pickle).
        bits: bits kept of each HMAC.
        name: the column the index is stored in.

    Raises:
        InvalidArgument: no column or a repeated one, an unknown normaliser, bits out of range,
            an empty table or index name.
    """

    table: str
    columns: tuple[str, ...]
    normalizers: tuple[Any, ...]
    bits: int
    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.table, str) or not self.table:
            raise InvalidArgument("the table name must be a non-empty str")
        cols = self.columns
        if (not isinstance(cols, tuple) or not cols
                or not all(isinstance(c, str) and c for c in cols) or len(set(cols)) < len(cols)):
            raise InvalidArgument("a blind index needs one or more distinct column names")
        if not isinstance(self.normalizers, tuple) or len(self.normalizers) != len(cols):
            raise InvalidArgument("a blind index needs one normaliser per column")
        for spec in self.normalizers:
            _normalizer(spec)
        if type(self.bits) is not int or not 1 <= self.bits <= MAX_BITS:
            raise InvalidArgument(f"bits must be an integer from 1 to {MAX_BITS}")
        if not isinstance(self.name, str) or not self.name:
            raise InvalidArgument("the index's column name must be a non-empty str")

    @classmethod
    def parse(cls, text: str, table: str | None) -> "IndexDefinition":
        """An index from ``[NAME=]COLUMN[+COLUMN...][:NORMALIZER[+NORMALIZER...]][:BITS]``, the
        command line's form: ``email_idx=email:email``, ``last_name+birth_year:text+digits:20``.
        One normaliser serves every column; the defaults are those of :class:`BlindIndex`
        (``exact``, :func:`bits_for_rows` of 1,000,000, ``<columns>_idx``).

        Raises:
            InvalidArgument: anything else, or what the constructor refuses.
        """
        if not isinstance(text, str):
            raise InvalidArgumentType("an index definition is given as text")
        if not isinstance(table, str) or not table:
            raise InvalidArgument(f"index {text!r}: give the table its keys are derived for "
                                  "(on the command line: --index-table)")
        name, sep, rest = text.partition("=")
        if not sep:
            name, rest = "", text
        parts = rest.split(":")
        if len(parts) > 3 or not parts[0]:
            raise InvalidArgument(f"cannot read the index {text!r}: use [NAME=]COLUMN[+COLUMN...]"
                                  "[:NORMALIZER[+NORMALIZER...]][:BITS], e.g. "
                                  "email_idx=email:email:18")
        columns = tuple(parts[0].split("+"))
        normalizers = tuple(parts[1].split("+")) if len(parts) > 1 and parts[1] else ("exact",)
        if len(normalizers) == 1:
            normalizers *= len(columns)
        elif len(normalizers) != len(columns):
            raise InvalidArgument(f"index {text!r}: give one normaliser, or one per column")
        bits = bits_for_rows(DEFAULT_EXPECTED_ROWS)
        if len(parts) == 3:
            if not (parts[2].isascii() and parts[2].isdigit() and len(parts[2]) <= 3):
                raise InvalidArgument(f"index {text!r}: BITS is a whole number from 1 to "
                                      f"{MAX_BITS}")
            bits = int(parts[2])
        return cls(table, columns, normalizers, bits, name or "_".join(columns) + "_idx")

    def build(self, provider: KeyProvider, *, threads: int | None = None) -> "BlindIndex":
        """The index, keyed by ``provider``."""
        return BlindIndex(provider, self.table, self.columns,
                          normalizers=dict(zip(self.columns, self.normalizers)), bits=self.bits,
                          name=self.name, threads=threads)


class BlindIndex:
    """A blind index of one table over one column or several (a compound index).

    Args:
        provider: the key provider whose :meth:`~engine.keys.KeyProvider.index_key` keys it.
        table: the table's name (part of the key).
        columns: the column, or the columns of a compound index, in order.
        normalizer: a name from :data:`NORMALIZERS` or a callable ``str -> str``, for every
            column; ``normalizers`` maps columns to their own.
        bits: bits kept of each HMAC (1 to 32); default :func:`bits_for_rows` of
            ``expected_rows``.
        expected_rows: the number of distinct values the table will hold (default 1,000,000).
        name: the column the index is stored in (default: the columns joined by ``_``, then
            ``_idx``: ``email_idx``).
        threads: threads of the native HMAC pass (None: all cores).

    Raises:
        InvalidArgument: no column, an unknown normaliser, bits out of range.
    """

    __slots__ = ("_provider", "definition", "table", "columns", "name", "bits", "_normalizers",
                 "_threads", "_keys", "_lock")

    def __init__(self, provider: KeyProvider, table: str, columns: str | Sequence[str], *,
                 normalizer: Any = "exact", normalizers: Mapping[str, Any] | None = None,
                 bits: int | None = None, expected_rows: int = DEFAULT_EXPECTED_ROWS,
                 name: str | None = None, threads: int | None = None) -> None:
        if not isinstance(provider, KeyProvider):
            raise InvalidArgumentType("provider must be an engine.keys.KeyProvider")
        cols = (columns,) if isinstance(columns, str) else tuple(columns)
        extra = set(normalizers or {}) - set(cols)
        if extra:
            raise InvalidArgument(f"normalizers names columns the index does not have: "
                                  f"{sorted(extra)}")
        if bits is None:
            bits = bits_for_rows(expected_rows)
        #: :class:`IndexDefinition`: the index without its keys (checks every argument)
        self.definition = IndexDefinition(
            table, cols, tuple((normalizers or {}).get(c, normalizer) for c in cols), bits,
            name if name is not None else "_".join(cols) + "_idx")
        self._normalizers = tuple(_normalizer(spec) for spec in self.definition.normalizers)
        self._provider, self.table, self.columns, self.bits = provider, table, cols, bits
        self.name = self.definition.name
        self._threads = check_threads(threads)
        self._keys: dict[int, bytes] = {}
        self._lock = fork_safe_lock()

    def __repr__(self) -> str:
        return (f"<BlindIndex {self.name!r} on {self.table}({', '.join(self.columns)}) "
                f"bits={self.bits}>")

    def __reduce__(self) -> NoReturn:
        raise TypeError("blind indexes hold keys and cannot be pickled; build one per process")

    @property
    def hex_chars(self) -> int:
        """Length of each index value (hex digits; the low bits past ``bits`` are zero)."""
        return (self.bits + 3) // 4

    def _key(self, version: int) -> bytes:
        key = self._keys.get(version)
        if key is None:
            with self._lock:
                key = self._keys.get(version)
                if key is None:
                    key = self._provider.index_key(self.table, "+".join(self.columns), version)
                    self._keys[version] = key
        return key

    def _current_version(self) -> int:
        """The provider's current version (a provider with none yet makes its first)."""
        version = self._provider.current_version
        return self._provider.get_current_key().version if version is None else version

    def check_key(self, version: int | None = None) -> None:
        """Derives the index key of ``version`` (default: the current one) now, so that a job
        learns before it starts whether the provider can key the index.

        Raises:
            UnknownKeyVersion: the provider has no such version.
            KeyProviderError: the provider has no blind index secret.
        """
        self._key(self._current_version() if version is None else version)

    def pending_versions(self) -> list[int]:
        """The key versions whose rows a lookup must still find: the current version first,
        then every other version the provider holds, newest first. A deprecated version
        counts too: its rows still decrypt, and they keep their index values under it until
        a re-encryption job moves them; a version is gone only once purged, which
        :meth:`engine.KeyRotationService.purge` allows once an inventory shows no value left
        under it."""
        current = self._current_version()
        others = sorted((i.version for i in self._provider.list_versions()
                         if i.version != current), reverse=True)
        return [current] + others

    # ---- batches ----

    def _fields(self, values: Any) -> list[Any]:
        if len(self.columns) == 1:
            return [values]
        if isinstance(values, Mapping):
            missing = [c for c in self.columns if c not in values]
            if missing:
                raise InvalidArgument(f"index {self.name!r} needs the columns {missing}")
            return [values[c] for c in self.columns]
        if isinstance(values, (list, tuple)) and len(values) == len(self.columns):
            return list(values)
        raise InvalidArgument(f"index {self.name!r} is over {len(self.columns)} columns: give "
                              f"a mapping of column to values, or one sequence per column")

    def _digests(self, values: Any, version: int) -> tuple[np.ndarray | None, int, np.ndarray]:
        """(rows that get an index value, or None for all; the row count; their truncated
        HMACs, one row of bytes each)."""
        fields = self._fields(values)
        packed = [_column(v, f"column {c!r}") for c, v in zip(self.columns, fields)]
        # the copies made here hold plaintexts: wiped once hashed (the caller's own are not)
        scratch = [b for v, (_, _, b) in zip(fields, packed) if isinstance(v, (list, tuple))]
        try:
            n = packed[0][0]
            if any(rows != n for rows, _, _ in packed):
                raise InvalidArgument(f"the columns of index {self.name!r} have different lengths")
            normalised = []
            for (_, where, given), column, normalizer in zip(packed, self.columns,
                                                             self._normalizers):
                batch, bad = _apply(normalizer, given, self._threads)
                if batch is not given:
                    scratch.append(batch)
                if bad.any():
                    failed = np.flatnonzero(bad) if where is None else where[bad]
                    more = f" (and {failed.shape[0] - 1} more)" if failed.shape[0] > 1 else ""
                    raise NormalisationError(f"row {int(failed[0])} of column {column!r} fails "
                                             f"the normaliser of index {self.name!r}{more}",
                                             failed)
                normalised.append((where, batch))
            present = None  # rows where every field is present
            for where, _ in normalised:
                if where is not None:
                    present = where if present is None else np.intersect1d(present, where,
                                                                            assume_unique=True)
            parts = [batch if present is None or (where is not None
                                                  and where.shape == present.shape)
                     else batch.take(present if where is None else np.searchsorted(where, present))
                     for where, batch in normalised]
            scratch += [p for p, (_, b) in zip(parts, normalised) if p is not b]
            message = parts[0] if len(parts) == 1 else _length_prefixed(parts)
            if len(parts) > 1:
                scratch.append(message)
            out = np.empty((len(message), (self.bits + 7) // 8), dtype=np.uint8)
            if len(message):
                _native.hmac_sha256_batch(self._key(version), len(message), message.data,
                                          message.offsets, out, self.bits, self._threads)
            return present, n, out
        finally:
            for batch in scratch:
                batch.data.fill(0)

    def compute(self, values: Any, *, version: int | None = None, arrow: bool = False) -> Any:
        """The index value of every row, in one native pass.

        Args:
            values: the column (a list of str/bytes/int/None, a :class:`~engine.Batch` or a
                pyarrow array); for a compound index, a mapping of column name to column, or
                one column per field in order.
            version: the key version to index under (default: the current one); the
                re-encryption pipeline passes the version it re-encrypts to.
            arrow: return a pyarrow ``large_string`` array (no Python object per row).

        Returns:
            Hex strings (``None`` where a value, or any value of a compound index, is null).

        Raises:
            NormalisationError: values fail the normaliser (``failed`` lists their rows).
            UnknownKeyVersion: the provider has no such version.
            InvalidArgument: compound columns of different lengths, or missing.
        """
        version = self._current_version() if version is None else version
        present, n, digests = self._digests(values, version)
        text = _hex_batch(digests, self.hex_chars)
        pa = pyarrow_module()
        if arrow:
            if pa is None:
                raise InvalidArgumentType("arrow=True needs pyarrow (the `arrow` extra)")
            column = text.to_arrow(text=True)
            if present is None:
                return column
            import pyarrow.compute as pc

            mask = np.zeros(n, dtype=bool)
            mask[present] = True
            return pc.replace_with_mask(pa.nulls(n, pa.large_string()), pa.array(mask), column)
        strings = batch_to_text(text)
        if present is None:
            return strings
        out: list[str | None] = [None] * n
        for i, s in zip(present.tolist(), strings):
            out[i] = s
        return out

    def lookup(self, value: Any, *, versions: Iterable[int] | None = None) -> list[str]:
        """The index values to search for ``value``: one per key version that may hold rows
        (:meth:`pending_versions`, or ``versions``), current first, without repeats. Query with
        ``WHERE <name> IN (...)`` and compare the decrypted rows: truncation makes false
        positives on purpose.

        Args:
            value: the value (str, bytes or int); for a compound index a mapping of column to
                value, or a tuple in column order.

        Raises:
            NormalisationError: the value fails the normaliser.
            InvalidArgument: ``None``, or the wrong fields for a compound index.
        """
        if len(self.columns) == 1:
            fields = [value]
        elif isinstance(value, Mapping):
            missing = [c for c in self.columns if c not in value]
            if missing:
                raise InvalidArgument(f"index {self.name!r} needs the columns {missing}")
            fields = [value[c] for c in self.columns]
        elif isinstance(value, tuple) and len(value) == len(self.columns):
            fields = list(value)
        else:
            raise InvalidArgument(f"index {self.name!r} looks up a mapping of its columns "
                                  f"{list(self.columns)} or a tuple in that order")
        if any(v is None for v in fields):
            raise InvalidArgument("NULL has no index value; query IS NULL instead")
        row = fields if len(self.columns) == 1 else [[v] for v in fields]
        found: list[str] = []
        for version in (self.pending_versions() if versions is None else versions):
            candidate = self.compute(row, version=version)[0]
            if candidate not in found:
                found.append(candidate)
        return found


class BlindIndexes:
    """The blind indexes of one table, by name: computes them all for a batch of rows and
    answers lookups.

    Args:
        indexes: :class:`BlindIndex` objects of one table, with distinct names.

    Raises:
        InvalidArgument: no index, indexes of several tables, or a name used twice.
    """

    __slots__ = ("_by_name", "table")

    def __init__(self, *indexes: BlindIndex) -> None:
        if not indexes or not all(isinstance(i, BlindIndex) for i in indexes):
            raise InvalidArgument("BlindIndexes takes one or more BlindIndex objects")
        tables = {i.table for i in indexes}
        if len(tables) > 1:
            raise InvalidArgument(f"the indexes belong to several tables: {sorted(tables)}")
        self._by_name = {i.name: i for i in indexes}
        if len(self._by_name) < len(indexes):
            raise InvalidArgument("two indexes share a name")
        self.table = tables.pop()

    def __repr__(self) -> str:
        return f"<BlindIndexes {self.table}: {', '.join(self._by_name)}>"

    def __iter__(self) -> Iterator[BlindIndex]:
        return iter(self._by_name.values())

    def __getitem__(self, name: str) -> BlindIndex:
        index = self._by_name.get(name)
        if index is None:
            raise UnknownBlindIndex(f"no blind index {name!r} on table {self.table!r} "
                                    f"(configured: {', '.join(self._by_name)})")
        return index

    def lookup(self, name: str, value: Any, **kw: Any) -> list[str]:
        """:meth:`BlindIndex.lookup` of the index called ``name``.

        Raises:
            UnknownBlindIndex: no such index.
        """
        return self[name].lookup(value, **kw)

    def check_names(self, kept: Iterable[str]) -> None:
        """Refuses an index whose column would replace data: a column an index reads, or one
        of ``kept`` (the columns being encrypted, those their AAD reads).

        Raises:
            InvalidArgument: such an index, by name.
        """
        taken = set(kept) | {c for index in self for c in index.columns}
        clash = sorted(name for name in self._by_name if name in taken)
        if clash:
            raise InvalidArgument(f"blind index column(s) {', '.join(map(repr, clash))} would "
                                  "replace a column that is encrypted or read (an index's field "
                                  "or the AAD's): name the index column apart")

    def compute_all(self, columns: Mapping[str, Any], *, version: int | None = None,
                    arrow: bool = False) -> dict[str, Any]:
        """Every index of the table for a batch of rows given as columns (name -> values),
        under ``version`` (default: the current one). The re-encryption pipeline calls this
        with the version it re-encrypts to, so that rows are re-indexed as they move.

        Returns:
            index name -> index values (as :meth:`BlindIndex.compute`).

        Raises:
            InvalidArgument: a column an index needs is missing.
        """
        out = {}
        for index in self:
            missing = [c for c in index.columns if c not in columns]
            if missing:
                raise InvalidArgument(f"index {index.name!r} needs the columns {missing}")
            values = ({c: columns[c] for c in index.columns} if len(index.columns) > 1
                      else columns[index.columns[0]])
            out[index.name] = index.compute(values, version=version, arrow=arrow)
        return out

    def add_to_records(self, records: Sequence[dict[str, Any]], *,
                       version: int | None = None) -> list[dict[str, Any]]:
        """New dicts: each record with every index field added, from its plaintext fields (a
        record whose field is missing or None gets no index field, as a missing field stays
        missing when it is encrypted)."""
        from .records import field_values, with_field

        records = list(records)
        columns = {c: field_values(records, c) for index in self for c in index.columns}
        out = records
        for name, values in self.compute_all(columns, version=version).items():
            out = with_field(out, name, values)
        return out

    def add_to_arrow(self, table: pa.Table, *, version: int | None = None) -> pa.Table:
        """A pyarrow Table/RecordBatch with every index column set (added at the end, or
        replaced where the table has it already), computed from the plaintext columns."""
        columns = {c: table.column(c) for index in self for c in index.columns
                   if c in table.schema.names}
        pa = pyarrow_module()
        out = table
        for name, values in self.compute_all(columns, version=version, arrow=True).items():
            if name in out.schema.names:
                i = out.schema.get_field_index(name)
                if isinstance(out, pa.RecordBatch):
                    arrays = list(out.columns)
                    arrays[i] = values
                    out = pa.RecordBatch.from_arrays(arrays, names=out.schema.names)
                else:
                    out = out.set_column(i, name, values)
            elif isinstance(out, pa.RecordBatch):
                out = pa.RecordBatch.from_arrays(list(out.columns) + [values],
                                                 names=out.schema.names + [name])
            else:
                out = out.append_column(name, values)
        return out


T = TypeVar("T")


def under_one_version(provider: KeyProvider, write: Callable[[int], T]) -> T:
    """``write(version)``: computes indexes under ``version`` and encrypts with the current
    key, run again if the current version changed meanwhile (a rotation), so that no row is
    indexed under another version than its ciphertext's: a re-encryption job would take such
    a row for current and leave its index where no lookup finds it once the version is
    purged."""
    while True:
        version = provider.get_current_key().version
        out = write(version)
        if provider.get_current_key().version == version:
            return out


def _items(indexes: Any) -> list[Any]:
    if indexes is None:
        return []
    if isinstance(indexes, (IndexDefinition, BlindIndex, BlindIndexes)):
        indexes = [indexes]
    if not isinstance(indexes, (list, tuple)):
        raise InvalidArgumentType("blind indexes are given as BlindIndex, BlindIndexes or "
                                  "IndexDefinition objects, or a list of them")
    out: list[Any] = []
    for item in indexes:
        if isinstance(item, BlindIndexes):
            out += list(item)
        elif isinstance(item, (BlindIndex, IndexDefinition)):
            out.append(item)
        else:
            raise InvalidArgumentType("blind indexes are BlindIndex, BlindIndexes or "
                                      f"IndexDefinition objects, not {type(item).__name__}")
    return out


def definitions(indexes: Any) -> list[IndexDefinition]:
    """The definitions of blind indexes given as :class:`BlindIndex`, :class:`BlindIndexes` or
    :class:`IndexDefinition` objects, or a list of them (None: none).

    Raises:
        InvalidArgumentType: anything else.
    """
    return [i.definition if isinstance(i, BlindIndex) else i for i in _items(indexes)]


def as_blind_indexes(indexes: Any, provider: KeyProvider) -> BlindIndexes | None:
    """Blind indexes given as :func:`definitions` takes them, as one :class:`BlindIndexes`:
    indexes as they are, definitions built with ``provider`` (None when none is given).

    Raises:
        InvalidArgumentType: anything else.
        InvalidArgument: indexes of several tables, or two with one name.
    """
    items = _items(indexes)
    if not items:
        return None
    return BlindIndexes(*(i.build(provider) if isinstance(i, IndexDefinition) else i
                          for i in items))
