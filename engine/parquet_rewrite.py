"""Rewrite a Parquet file with some of its columns transformed, keeping everything else.

:func:`rewrite_parquet` reads a file one row group at a time, hands each row group to a
transform that returns new values for the columns it owns, and writes a file that differs
from the source only in those values. :func:`writer_options` is the half that reads a file's
writer settings back from its footer and page headers (for a new file written "like" another).

Kept, and where each is read from:

- row groups: each is written as one row group of the same rows (empty ones too);
- the schema: Arrow types, nullability, field ids, every key-value metadata entry, and the
  stored Arrow schema (``ARROW:schema``) only where the source has one;
- per column: codec (footer); compression level (found by compressing the first pages again
  and comparing bytes, see :mod:`engine.parquet_pages`); dictionary encoding (a dictionary page);
  other value encodings (``DELTA_*``, ``BYTE_STREAM_SPLIT``); statistics written or not; Bloom
  filters (present, of the same size);
- per file: format version; data page version and page CRCs (page headers); page indexes;
  ``sorting_columns``; INT96 timestamps (read at a unit that holds their values: their unit in
  the stored Arrow schema, else nanoseconds when every value fits, else microseconds when no
  value has a finer part); decimals stored as integers; list element naming; TIME columns
  adjusted to UTC.

What pyarrow cannot reproduce, kept as close as it allows:

- a compression level the pages do not give away (written by another compression library or
  with settings pyarrow does not have): the codec's default level. Finding it costs
  compressing up to 1 MiB of each column's pages again at the levels tried (the level found
  for a writer and column is tried first in the next file);
- the cut of pages inside a column chunk: data page size, rows per page, the dictionary page
  size limit and the write batch size are recorded nowhere; pyarrow's defaults apply, so pages
  of a file written with other settings are cut differently (same values, same row groups);
- settings that differ between the row groups of one file (codec, level, encodings, sorting
  columns) or between the columns of a file (page index): pyarrow takes one per column (or
  per file), that of the first row group holding rows;
- Parquet's deprecated (Hadoop) ``LZ4`` codec becomes ``LZ4_RAW``; ``created_by`` names this
  pyarrow;
- statistics follow pyarrow's rules (e.g. none for INT96) and the Bloom filter's false-positive
  rate is not recorded (its size is kept).

A file whose schema would not come back identical (INT96 beside INT64 timestamps, say) is
refused with :class:`CannotKeepParquet` after the write, so the caller throws the output away;
encrypted files (Parquet Modular Encryption) are refused when opened.
"""

from __future__ import annotations

import base64
import contextlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Collection, Iterator, Mapping

import numpy as np

from .errors import EngineError, InvalidArgument
from .locks import fork_safe_lock
from .parquet_pages import (
    DATA_PAGE_V2,
    DICTIONARY_PAGE,
    PageFormatError,
    column_pages,
    compression_level,
)

__all__ = ["CannotKeepParquet", "ParquetUnreadable", "RewriteResult", "rewrite_parquet",
           "writer_options"]

Transform = Callable[[int, Any], "Mapping[str, Any] | None"]

# The codecs as pyarrow's metadata names them (Arrow's names: ``LZ4`` is Parquet's LZ4_RAW,
# ``LZ4_HADOOP`` Parquet's deprecated LZ4), as ParquetWriter takes them.
_WRITER_CODECS = {"UNCOMPRESSED": "none", "SNAPPY": "snappy", "GZIP": "gzip", "BROTLI": "brotli",
                  "LZ4": "lz4", "LZ4_RAW": "lz4", "LZ4_HADOOP": "lz4", "ZSTD": "zstd"}
# The footer's codecs whose pages tell their level, as pyarrow's Codec names them (Hadoop's LZ4
# frames pages its own way: not tried).
_LEVEL_CODECS = {"GZIP": "gzip", "BROTLI": "brotli", "LZ4": "lz4_raw", "LZ4_RAW": "lz4_raw",
                 "ZSTD": "zstd"}
_VALUE_ENCODINGS = ("DELTA_BINARY_PACKED", "DELTA_LENGTH_BYTE_ARRAY", "DELTA_BYTE_ARRAY",
                    "BYTE_STREAM_SPLIT")
# Levels writers pick most often (Spark, DuckDB, Polars and pandas defaults among them).
_COMMON_LEVELS = {"zstd": (3, 1, 9, 19), "gzip": (6, 9), "brotli": (1, 4, 11)}
_BLOOM_FPP = 0.05
# Compressed page bytes a column's level is searched on.
_SAMPLE_BYTES = 1 << 20
# Levels found for a column of files from the same writer, tried first in the next file.
_LEVEL_HINTS: OrderedDict[tuple[str, str, str], int] = OrderedDict()
_HINTS_LOCK = fork_safe_lock()


class ParquetUnreadable(EngineError, OSError):
    """The file cannot be read as Parquet (not Parquet, truncated, encrypted, unreadable)."""


class CannotKeepParquet(InvalidArgument):
    """The file has a property pyarrow cannot write back as it is (the message names it)."""


@dataclass(frozen=True)
class RewriteResult:
    """What :func:`rewrite_parquet` did.

    Attributes:
        written: the target was written (False: no row group changed and ``lazy`` was set).
        row_groups: row groups of the source.
        rows: rows of the source.
        changed_row_groups: row groups the transform changed.
    """

    written: bool
    row_groups: int
    rows: int
    changed_row_groups: int


def rewrite_parquet(source: Any, target: Any, transform: Transform, *,
                    columns: Collection[str], types: Mapping[str, Any] | None = None,
                    statistics: bool | None = None, dictionary: bool | None = None,
                    lazy: bool = True, use_threads: bool = True,
                    metadata: Mapping[bytes, bytes] | None = None) -> RewriteResult:
    """Writes ``target``: ``source`` with the columns in ``columns`` replaced, row group by
    row group, by what ``transform`` returns, and everything else kept (see the module
    docstring for what is kept and what pyarrow cannot keep).

    Args:
        source: a path or a binary file open for reading.
        target: a path (the written file is read back and checked) or a binary file open
            for writing.
        transform: called as ``transform(index, table)`` with each row group as a
            ``pyarrow.Table``; returns ``{column: array}`` (an Arrow array or chunked array of
            the row group's length, for top-level columns in ``columns`` only), or None when
            it changes nothing in that row group.
        columns: the top-level columns the transform may replace.
        types: the Arrow type of a replaced column in the output, where it differs from the
            source's (every row group must then return the column); or a ``pyarrow.Field``,
            whose type and field metadata the column takes.
        statistics, dictionary: write statistics, or dictionary-encode, the columns in
            ``columns`` (None: as the source did; ciphertexts gain nothing from either).
        lazy: write nothing (and leave ``target`` alone) unless some row group changes.
        use_threads: let pyarrow decode with several threads.
        metadata: the key-value metadata to write in place of the source's (e.g. its pandas
            metadata updated for the replaced columns' new types).

    Returns:
        A :class:`RewriteResult`.

    Raises:
        ParquetUnreadable: the source cannot be read as Parquet.
        CannotKeepParquet: a property of the source would not survive (the target is then
            incomplete: throw it away).
        InvalidArgument: the transform returned a column it does not own, or an array of the
            wrong length or type.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    owned = set(columns)
    writer = None
    changed = 0
    try:
        probe = _open(source, pq)
        unit = _int96_unit(source, probe, use_threads)
        reader = probe if unit == "ns" else _open(source, pq, unit)
        meta = reader.metadata
        schema = reader.schema_arrow
        unknown = owned - set(schema.names)
        if unknown:
            raise InvalidArgument(f"no column {sorted(unknown)[0]!r} in the file")
        for name, t in (types or {}).items():
            if name not in owned:
                raise InvalidArgument(f"a type is given for {name!r}, which the transform does "
                                      "not own")
            field = schema.field(name)
            if isinstance(t, pa.Field):
                field, t = field.with_metadata(t.metadata), t.type
            schema = schema.set(schema.get_field_index(name), field.with_type(t))
        if metadata is not None:
            schema = schema.with_metadata(metadata)
        output = _output_schema(meta, schema, owned)
        with _bytes_of(source) as f:
            options = writer_options(reader, f)
        leaves = [meta.schema.column(j).path for j in range(meta.num_columns)]
        mine = [p for p in leaves if p.split(".")[0] in owned]
        for key, wanted in (("write_statistics", statistics), ("use_dictionary", dictionary)):
            if wanted is not None:
                listed = options.get(key, leaves)
                options[key] = [p for p in leaves if (p in mine and wanted)
                                or (p not in mine and p in listed)]
        for index in range(meta.num_row_groups):
            table = _read_group(reader, index, use_threads)
            new = transform(index, table)
            if new:
                table = _replaced(table, new, owned, schema)
                changed += 1
            elif types:
                raise InvalidArgument("the transform changes column types, so it must return "
                                      "its columns for every row group")
            if writer is None and (changed or not lazy):
                writer = pq.ParquetWriter(target, output, **options)
                for earlier in range(index):  # unchanged: written as they were read
                    _write_group(writer, _read_group(reader, earlier, use_threads), output)
            if writer is not None:
                _write_group(writer, table, output)
        if writer is None and not lazy:
            writer = pq.ParquetWriter(target, output, **options)
        if writer is None:
            return RewriteResult(False, meta.num_row_groups, meta.num_rows, 0)
        closing, writer = writer, None
        closing.close()
    except (pa.ArrowException, OSError, PageFormatError) as exc:
        if isinstance(exc, EngineError):
            raise
        raise ParquetUnreadable(f"cannot read or write Parquet: {_first_line(exc)}") from None
    finally:
        if writer is not None:
            writer.close()
    _check_kept(meta, target, owned, metadata)
    return RewriteResult(True, meta.num_row_groups, meta.num_rows, changed)


def writer_options(parquet_file: Any, f: BinaryIO | None = None) -> dict[str, Any]:
    """The ``pyarrow.parquet.ParquetWriter`` keyword arguments that write a file the way
    ``parquet_file`` (a ``pyarrow.parquet.ParquetFile``) was written, as far as its footer
    and, given the file's bytes as ``f``, its page headers tell.

    Raises:
        CannotKeepParquet: a codec pyarrow cannot write.
        PageFormatError: a page header does not parse.
    """
    meta = parquet_file.metadata
    schema = meta.schema
    leaves = [schema.column(j) for j in range(meta.num_columns)]
    options: dict[str, Any] = {
        "version": "1.0" if meta.format_version == "1.0" else "2.6",
        "store_schema": b"ARROW:schema" in (meta.metadata or {}),
        "use_deprecated_int96_timestamps": any(c.physical_type == "INT96" for c in leaves),
        "use_compliant_nested_type": not any(".list.item" in f"{c.path}." for c in leaves),
        "store_decimal_as_integer": any(
            c.logical_type.type == "DECIMAL" and c.physical_type in ("INT32", "INT64")
            for c in leaves),
        "write_time_adjusted_to_utc": any(
            c.logical_type.type == "TIME" and '"isAdjustedToUTC":true' in
            c.logical_type.to_json().replace(" ", "") for c in leaves),
    }
    groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    group = next((g for g in groups if g.num_rows), groups[0] if groups else None)
    if group is None:
        return options
    compression, levels, dictionary, statistics, encodings, blooms = {}, {}, [], [], {}, {}
    page_index = checksum = False
    data_page_version = "1.0"
    for j, leaf in enumerate(leaves):
        chunk = group.column(j)
        path = leaf.path
        codec = _WRITER_CODECS.get(chunk.compression)
        if codec is None:
            raise CannotKeepParquet(f"column {path!r} uses the {chunk.compression} codec, which "
                                    "pyarrow cannot write")
        compression[path] = codec
        if chunk.has_dictionary_page:
            dictionary.append(path)
        else:
            special = [e for e in _VALUE_ENCODINGS if e in chunk.encodings]
            if len(special) == 1:
                encodings[path] = special[0]
        if chunk.is_stats_set:
            statistics.append(path)
        if chunk.bloom_filter_offset is not None and chunk.bloom_filter_length:
            blooms[path] = {"ndv": _bloom_ndv(chunk.bloom_filter_length), "fpp": _BLOOM_FPP}
        page_index = page_index or chunk.has_column_index or chunk.has_offset_index
        if f is None:
            continue
        pages = _sample_pages(f, groups, j)
        checksum = checksum or any(p.has_crc for p in pages)
        if any(p.kind == DATA_PAGE_V2 for p in pages if p.kind != DICTIONARY_PAGE):
            data_page_version = "2.0"
        if chunk.compression in _LEVEL_CODECS:
            level = _level(_LEVEL_CODECS[chunk.compression], pages,
                           (meta.created_by or "", path, chunk.compression))
            if level is not None:
                levels[path] = level
    options.update(compression=compression, use_dictionary=dictionary,
                   write_statistics=statistics, write_page_index=page_index,
                   data_page_version=data_page_version, write_page_checksum=checksum)
    if levels:
        options["compression_level"] = levels
    if encodings:
        options["column_encoding"] = encodings
    if blooms:
        options["bloom_filter_options"] = blooms
    if group.sorting_columns:
        options["sorting_columns"] = list(group.sorting_columns)
    return options


# ---- reading ----

def _open(source: Any, pq: Any, int96_unit: str = "ns") -> Any:
    import pyarrow as pa

    if hasattr(source, "seek"):
        source.seek(0)
    try:
        return pq.ParquetFile(source, coerce_int96_timestamp_unit=int96_unit)
    except (pa.ArrowException, OSError) as exc:
        failure = _first_line(exc)
    raise ParquetUnreadable(f"not a readable Parquet file: {failure}")


@contextlib.contextmanager
def _bytes_of(source: Any) -> Iterator[BinaryIO]:
    """A binary file over the source's bytes, for its page headers."""
    if hasattr(source, "seek"):
        yield source
        return
    with open(source, "rb") as f:
        yield f


def _read_group(reader: Any, index: int, use_threads: bool) -> Any:
    return reader.read_row_group(index, use_threads=use_threads)


def _int96_unit(source: Any, reader: Any, use_threads: bool) -> str:
    """The unit to read INT96 timestamps at: theirs in the stored Arrow schema; else ``ns``
    when every value fits (pyarrow wraps those that do not, silently), else ``us`` when no value
    has a finer part.

    Raises:
        CannotKeepParquet: values beyond the range of nanoseconds beside values with
            nanoseconds, or INT96 values inside a nested column and no stored Arrow schema.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    meta = reader.metadata
    int96 = [meta.schema.column(j).path for j in range(meta.num_columns)
             if meta.schema.column(j).physical_type == "INT96"]
    if not int96:
        return "ns"
    stored = (meta.metadata or {}).get(b"ARROW:schema")
    if stored is not None:
        arrow = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(stored)))
        units = {_stored_unit(arrow, path) for path in int96}
        if len(units) == 1 and None not in units:
            return str(units.pop())
    if any("." in path for path in int96):
        raise CannotKeepParquet("INT96 timestamps inside nested columns, and no stored Arrow "
                                "schema to give their unit")
    coarse = _open(source, pq, "us")
    overflow = finer = False
    for index in range(meta.num_row_groups):
        ns = reader.read_row_group(index, columns=int96, use_threads=use_threads)
        us = coarse.read_row_group(index, columns=int96, use_threads=use_threads)
        for name in int96:
            n, u = (pc.fill_null(t.column(name).cast(pa.int64()), 0).to_numpy()
                    for t in (ns, us))
            wrapped = np.floor_divide(n, 1000) != u
            overflow = overflow or bool(wrapped.any())
            finer = finer or bool((np.remainder(n[~wrapped], 1000) != 0).any())
    if not overflow:
        return "ns"
    if finer:
        raise CannotKeepParquet("INT96 timestamps beyond the range of nanoseconds beside values "
                                "with nanoseconds: no unit holds both")
    return "us"


def _stored_unit(schema: Any, path: str) -> str | None:
    import pyarrow as pa

    t = schema.field(path).type if schema.get_field_index(path) >= 0 else None
    return t.unit if t is not None and pa.types.is_timestamp(t) else None


# ---- writing ----

def _replaced(table: Any, new: Mapping[str, Any], owned: set[str], schema: Any) -> Any:
    """``table`` with the transform's columns in place, checked, cast to nothing."""
    import pyarrow as pa

    for name, values in new.items():
        if name not in owned:
            raise InvalidArgument(f"the transform returned column {name!r}, which it does not "
                                  "own")
        if len(values) != table.num_rows:
            raise InvalidArgument(f"the transform returned {len(values)} values for column "
                                  f"{name!r} of a row group of {table.num_rows} rows")
        want = schema.field(name).type
        if values.type != want:
            raise InvalidArgument(f"the transform returned column {name!r} as {values.type}; "
                                  f"the file's is {want}")
        at = table.schema.get_field_index(name)
        chunked = values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values],
                                                                                     want)
        table = table.set_column(at, schema.field(name), chunked)
    return table


def _write_group(writer: Any, table: Any, schema: Any) -> None:
    # One call per row group, sized to it: ParquetWriter cuts nothing smaller (an empty row
    # group is written too).
    writer.write_table(table.cast(schema), row_group_size=max(1, table.num_rows))


def _output_schema(meta: Any, schema: Any, owned: set[str]) -> Any:
    """The Arrow schema to write: the stored one where the file has it (reading renames list
    items and would change it), with the columns ``owned`` as ``schema`` has them and the
    file's key-value metadata; else ``schema``."""
    import pyarrow as pa

    stored = (meta.metadata or {}).get(b"ARROW:schema")
    if stored is None:
        return schema
    try:
        arrow = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(stored)))
    except (pa.ArrowException, ValueError):
        return schema
    if arrow.names != schema.names:
        return schema
    for name in owned:
        at = arrow.get_field_index(name)
        field = schema.field(name)
        arrow = arrow.set(at, arrow.field(at).with_type(field.type).with_metadata(field.metadata))
    int96 = {meta.schema.column(j).path for j in range(meta.num_columns)
             if meta.schema.column(j).physical_type == "INT96"}
    for name in int96 & set(arrow.names):  # read at the unit chosen for them
        at = arrow.get_field_index(name)
        arrow = arrow.set(at, arrow.field(at).with_type(schema.field(name).type))
    return arrow.with_metadata(schema.metadata)


def _check_kept(source: Any, target: Any, owned: set[str],
                metadata: Mapping[bytes, bytes] | None = None) -> None:
    """Raises :class:`CannotKeepParquet` where the written file's schema (physical and
    logical types, levels), row groups or key-value metadata differ from the source's (columns
    in ``owned`` may change type)."""
    import pyarrow.parquet as pq

    if hasattr(target, "write"):
        return  # a file open for writing cannot be read back here
    written = pq.ParquetFile(target).metadata
    before = [source.schema.column(j) for j in range(source.num_columns)]
    after = [written.schema.column(j) for j in range(written.num_columns)]
    kept = lambda c: c.path.split(".")[0] not in owned  # noqa: E731
    same_leaf = lambda a, b: (a.path, a.physical_type, a.logical_type.to_json(),  # noqa: E731
                              a.max_definition_level, a.max_repetition_level) == \
        (b.path, b.physical_type, b.logical_type.to_json(), b.max_definition_level,
         b.max_repetition_level)
    if [c.path for c in before] != [c.path for c in after] or not all(
            same_leaf(a, b) for a, b in zip(before, after) if kept(a)):
        changed = next((a.path for a, b in zip(before, after) if not same_leaf(a, b)),
                       "the column list")
        raise CannotKeepParquet(f"pyarrow cannot write {changed!r} back as the file stores it "
                                f"({_leaf_kind(source, changed)})")
    rows = [source.row_group(i).num_rows for i in range(source.num_row_groups)]
    if rows != [written.row_group(i).num_rows for i in range(written.num_row_groups)]:
        raise CannotKeepParquet("the row groups would be cut differently")
    wanted = source.metadata if metadata is None else metadata
    if {k: v for k, v in (wanted or {}).items() if k != b"ARROW:schema"} != \
            {k: v for k, v in (written.metadata or {}).items() if k != b"ARROW:schema"}:
        raise CannotKeepParquet("the key-value metadata would change")


def _leaf_kind(meta: Any, path: str) -> str:
    for j in range(meta.num_columns):
        c = meta.schema.column(j)
        if c.path == path:
            return f"{c.physical_type} {c.logical_type}"
    return "its layout"


def _sample_pages(f: BinaryIO, groups: list[Any], column: int) -> list[Any]:
    """The first pages of a column in a few row groups (the first, the second, the last): pages
    of several sizes tell a compression level apart."""
    picked = [i for i in dict.fromkeys([0, min(1, len(groups) - 1), len(groups) - 1])
              if groups[i].num_rows]
    pages: list[Any] = []
    budget = _SAMPLE_BYTES
    for i in picked:
        chunk = groups[i].column(column)
        start = chunk.dictionary_page_offset if chunk.has_dictionary_page else \
            chunk.data_page_offset
        found = column_pages(f, start, start + chunk.total_compressed_size,
                             max_pages=3 if i == picked[0] else 2, max_bytes=budget)
        budget -= sum(len(p.payload) for p in found if p.payload is not None)
        pages.extend(found)
    return pages


def _level(codec: str, pages: Any, hint_key: tuple[str, str, str]) -> int | None:
    """A level that reproduces the column's first pages, tried in this order: the one found
    before for this writer and column (files of one dataset share their settings), the
    codec's default, its common levels, then the rest."""
    import pyarrow as pa

    with _HINTS_LOCK:
        hint = _LEVEL_HINTS.get(hint_key)
    low = max(pa.Codec.minimum_compression_level(codec), -7)  # zstd's fast levels, not all
    high = pa.Codec.maximum_compression_level(codec)
    order = [hint, pa.Codec.default_compression_level(codec), *_COMMON_LEVELS.get(codec, ()),
             *range(1, high + 1), *range(0, low - 1, -1)]
    order = list(dict.fromkeys(lvl for lvl in order if lvl is not None and low <= lvl <= high))
    level = compression_level(codec, pages, order)
    if level is not None:
        with _HINTS_LOCK:
            _LEVEL_HINTS[hint_key] = level
            while len(_LEVEL_HINTS) > 256:
                _LEVEL_HINTS.popitem(last=False)
    return level


def _bloom_ndv(length: int) -> int:
    """A number of distinct values for which pyarrow sizes a Bloom filter's bitset as the one
    stored (``length``: bitset and header; bitsets are powers of two)."""
    size = 1 << (max(length, 32).bit_length() - 1)
    return max(1, int(size * -math.log(1 - _BLOOM_FPP ** (1 / 8))))


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
