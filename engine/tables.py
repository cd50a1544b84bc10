"""Columns of tables in data pipelines: encrypt and decrypt named columns of any Arrow type of a
pyarrow ``Table`` or ``RecordBatch`` (pandas and polars frames through Arrow), and of Parquet and
CSV files.

An encrypted column holds values of the column format (docs/column-format.md, through
:mod:`engine.columns`) as ``large_binary`` (in CSV, their ``ec1:`` text form), in the same place
in the schema: each value carries its key version and its type, bound into its authenticated
data, so decryption restores the type from the values alone; the field metadata records the
type's descriptor too (``engine.column_type``), for a column whose values were all filtered
away. NULLs stay NULLs. Each column of each record batch (each Parquet row group) is one native
call per key version. Columns of text tokens written by earlier releases (``ef1:...``, the
original type in ``engine.encrypted_from``) still decrypt.

Associated data can be bound per row with a template over the row's other columns, like
``"users:{id}:{column}"`` (``{column}`` is the encrypted column's name): a value copied into
another row or column then fails to decrypt.

Services cannot be pickled: in Dask or a ``multiprocessing`` pool, call these functions inside
the worker, where :func:`engine.get_encryption_service` builds the service from the environment
(see docs/pipelines.md).
"""

from __future__ import annotations

import base64
import errno
import json
import os
import re
import string
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np

from .atomic_file import atomic_output
from .batch import Batch
from .blind_index import BlindIndexes, as_blind_indexes, under_one_version
from .columns import (
    ColumnTypeMismatch,
    MalformedColumnValue,
    UnknownColumnFormat,
    UnknownColumnType,
    decrypt_array,
    encrypt_array,
    inspect_values,
    to_text,
    type_descriptor,
    type_from_descriptor,
)
from .columns.arrays import binary_parts
from .columns.format import FORMATS, TEXT_PREFIX
from .errors import BatchInvalidTag, EngineError, InvalidArgument, InvalidArgumentType
from .formats.wire import EnvelopeError
from .parquet_rewrite import ParquetUnreadable, rewrite_parquet, writer_options
from .refusals import counted, counts_refusals, metrics_of_service, restated
from .service import EncryptionService, get_encryption_service

__all__ = ["ColumnInvalidTag", "ColumnNotEncrypted", "ColumnNotText", "ColumnNotTokens",
           "ColumnTypeUnreadable", "ColumnValueError", "CsvDialect", "TableFileInvalid",
           "decrypt_columns", "decrypt_columns_file", "encrypt_columns", "encrypt_columns_file",
           "is_table"]

# Field metadata: the type descriptor the values record (docs/column-format.md, base64), so a
# column whose values all name their type by digest (rows filtered away) still decrypts;
# and the original type of a column of text tokens written by earlier releases.
COLUMN_TYPE_KEY = b"engine.column_type"
ORIGINAL_TYPE_KEY = b"engine.encrypted_from"
_FORMAT_BYTES = [bytes([b]) for b in FORMATS]
_TEXT_TYPES = ("string", "large_string", "binary", "large_binary")

# Every error a public function raises is counted once in engine_encryption_errors_total.
_counted = counts_refusals(lambda *args, service=None, **kwargs: metrics_of_service(service))


class ColumnValueError(EngineError):
    """Values of an encrypted column cannot be decrypted. Names the column and the first bad
    row (an index from 0 into the table, or into the file's data rows), never a value.

    Attributes:
        column: the column's name.
        row: the first bad row.
        count: how many of the column's values are bad (in the batch where they were found).
    """

    what = "cannot be decrypted"

    def __init__(self, column: str, row: int, count: int = 1) -> None:
        more = f" and {count - 1} more" if count > 1 else ""
        Exception.__init__(self, f"column {column!r}, row index {row}{more}: {self.what}")
        self.column, self.row, self.count = column, row, count

    def __str__(self) -> str:
        return str(self.args[0])

    def moved(self, offset: int) -> "ColumnValueError":
        """The same error for rows counted ``offset`` further (a file's later row group)."""
        return type(self)(self.column, self.row + offset, self.count)

    def __reduce__(self):
        return (type(self), (self.column, self.row, self.count))


class ColumnNotTokens(ColumnValueError, EnvelopeError):
    """A value of an encrypted column is not an encrypted value (plain text among encrypted
    values, or a damaged value)."""

    what = "not an encrypted value"


class ColumnTypeUnreadable(ColumnValueError, EnvelopeError):
    """The values of an encrypted column record different types (values from several
    columns mixed), or none of them carries its whole type (see docs/column-format.md,
    section 2) and the column's field metadata does not either."""

    what = "values record different types, or a type that cannot be restored"


class ColumnNotEncrypted(InvalidArgument):
    """A column given to decryption holds no encrypted values (a plain column, or not binary
    or text): bad usage, not damaged data."""


class ColumnNotText(ColumnValueError, InvalidArgument):
    """A value decrypted in a column whose recorded original type is text is not UTF-8 (the
    column's type metadata was edited, or the values came from another column)."""

    what = "decrypts to bytes that are not UTF-8, but the column records a text type"


class ColumnInvalidTag(ColumnValueError, BatchInvalidTag):
    """Values of an encrypted column failed authentication (wrong AAD template, values moved
    between rows or columns, or edited). ``failed`` lists their rows."""

    what = "failed authentication (a wrong AAD template, or a value moved or edited)"

    def __init__(self, column: str, rows: Any, count: int | None = None) -> None:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        ColumnValueError.__init__(self, column, int(rows[0]), len(rows))
        self.failed, self.result = rows, None

    def moved(self, offset: int) -> "ColumnInvalidTag":
        return ColumnInvalidTag(self.column, self.failed + offset)

    def __reduce__(self):
        return (type(self), (self.column, self.failed))


class TableFileInvalid(EngineError, ValueError):
    """The input file cannot be read as the format it is said to be (truncated, damaged, not
    that format, not UTF-8 CSV). The message names the file and what could be told without
    quoting its content."""


def _pa() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise InvalidArgumentType("tables need pyarrow (the `arrow` extra)") from None
    return pyarrow


def is_table(obj: Any) -> bool:
    """Whether ``obj`` is a table these functions take: a pyarrow ``Table``/``RecordBatch``, a
    pandas ``DataFrame`` or a polars ``DataFrame``/``LazyFrame`` (checked without importing
    any of them)."""
    name, module = type(obj).__name__, type(obj).__module__
    return ((module.startswith("pyarrow") and name in ("Table", "RecordBatch"))
            or (module.startswith("pandas") and name == "DataFrame")
            or (module.startswith("polars") and name in ("DataFrame", "LazyFrame")))


def _read_column(reader: Any, group: int, name: str) -> Any:
    """Column ``name`` of row group ``group`` of a ``pyarrow.parquet.ParquetFile``."""
    return reader.read_row_group(group, columns=[name]).column(0)


def _polars_frame(table: Any) -> Any:
    """A polars DataFrame of an Arrow table (``from_arrow`` gives a Series only for an array)."""
    import polars as pl

    return pl.from_arrow(table)


def _as_arrow(table: Any) -> tuple[Any, Any]:
    """(a pyarrow Table or RecordBatch, how to turn the result back into the caller's type).

    A pyarrow table may come from anywhere (an Arrow IPC file a user was sent): it is validated
    whole first, as pyarrow's compute functions assume valid data and read out of bounds on a
    corrupt buffer or offset."""
    pa = _pa()
    if not is_table(table):
        raise InvalidArgumentType(
            "expected a pyarrow Table/RecordBatch, a pandas DataFrame or a polars "
            f"DataFrame/LazyFrame, not {type(table).__name__}")
    if isinstance(table, (pa.Table, pa.RecordBatch)):
        _validate(table)
        return table, lambda t, decrypted=(): t
    name, module = type(table).__name__, type(table).__module__
    try:
        if module.startswith("pandas"):
            return pa.Table.from_pandas(table, preserve_index=True), _to_pandas
        if name == "LazyFrame":
            return table.collect().to_arrow(), lambda t, decrypted=(): _polars_frame(t).lazy()
        return table.to_arrow(), lambda t, decrypted=(): _polars_frame(t)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        problem = type(exc).__name__
    raise InvalidArgumentType(f"the {name} cannot be converted to Arrow ({problem}: a column "
                              "of mixed Python objects?)")


def _to_pandas(table: Any, decrypted: Sequence[str] = ()) -> Any:
    """The table as pandas, dtypes from its pandas metadata. Categories of a categorical
    ``decrypted`` (its dictionary rebuilt in the order values first appear) are sorted, as
    pandas sorts them when it makes a categorical from values."""
    frame = table.to_pandas()
    for name in decrypted:
        if _pa().types.is_dictionary(table.schema.field(name).type):
            column = frame[name]
            frame[name] = column.cat.reorder_categories(column.cat.categories.sort_values())
    return frame


def _validate(table: Any, where: str = "the table") -> None:
    """Full validation of every buffer, offset and UTF-8 string of ``table``.

    Raises:
        InvalidArgument: it is not valid Arrow data (the message names the first bad column).
    """
    pa = _pa()
    try:
        table.validate(full=True)
    except pa.ArrowException:
        bad = _first_invalid_column(table)
    else:
        return
    raise InvalidArgument(f"{where} is not valid Arrow data{bad}: damaged buffers or offsets, "
                          "or text that is not UTF-8")


def _first_invalid_column(table: Any) -> str:
    pa = _pa()
    for i in range(table.num_columns):
        try:
            table.column(i).validate(full=True)
        except pa.ArrowException:
            return f" (column {i})"
    return ""


class _Template:
    """An AAD template: literal text and ``{name}`` placeholders (``{column}``: the column)."""

    __slots__ = ("parts",)

    def __init__(self, template: str) -> None:
        if not isinstance(template, str):
            raise InvalidArgumentType("aad_template must be a str")
        if not _is_utf8(template):
            raise InvalidArgument("aad_template is not valid text (a byte that is not UTF-8?)")
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise InvalidArgument(f"bad aad_template: {exc}") from None
        self.parts: list[tuple[str, str | None]] = []
        for literal, field, spec, conv in parsed:
            if spec or conv:
                raise InvalidArgument("aad_template placeholders take no format spec or conversion")
            if field is not None and not re.fullmatch(r"[^{}]+", field):
                raise InvalidArgument("aad_template has an empty placeholder")
            self.parts.append((literal, field))

    def columns(self) -> set[str]:
        return {f for _, f in self.parts if f is not None and f != "column"}

    def render(self, table: Any, column: str) -> Any:
        """One AAD value per row (a ``large_string`` array), built by pyarrow without a loop."""
        pa = _pa()
        import pyarrow.compute as pc

        n = table.num_rows
        pieces = []
        for literal, field in self.parts:
            if literal:
                pieces.append(literal)
            if field == "column":
                pieces.append(column)
            elif field is not None:
                if field not in table.schema.names:
                    raise InvalidArgument(f"aad_template names {field!r}, which is not a column")
                values = table.column(_unique_index(table, field))
                if values.null_count:
                    raise InvalidArgument(f"aad_template: column {field!r} has NULLs")
                try:
                    pieces.append(pc.cast(_combine(values), pa.large_string()))
                except pa.ArrowException:
                    pass
                else:
                    continue
                raise InvalidArgument(f"aad_template: column {field!r} ({values.type}) cannot "
                                      "be written as text")
        if all(isinstance(p, str) for p in pieces):
            return pa.array(["".join(pieces)] * n, type=pa.large_string())
        args = [pa.scalar(p, pa.large_string()) if isinstance(p, str) else p for p in pieces]
        return pc.binary_join_element_wise(*args, pa.scalar("", pa.large_string()))


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: a command-line byte that is not UTF-8
        return False
    return True


def _unique_index(table: Any, name: str) -> int:
    """The position of the one column called ``name``.

    Raises:
        InvalidArgument: no such column, or several (pyarrow's lookup by name would then pick
            the last column of the table, whatever it is).
    """
    matches = [i for i, n in enumerate(table.schema.names) if n == name]
    if not matches:
        raise InvalidArgument(f"no column {name!r} in the table")
    if len(matches) > 1:
        raise InvalidArgument(f"the table has {len(matches)} columns named {name!r}")
    return matches[0]


def _columns_arg(table: Any, columns: Any) -> list[str]:
    if isinstance(columns, str):
        columns = [columns]
    columns = list(columns)
    if not columns:
        raise InvalidArgument("name at least one column")
    for c in columns:
        if not isinstance(c, str) or not _is_utf8(c):
            raise InvalidArgument(f"column names are text; got {c!r}")
        _unique_index(table, c)
    if len(set(columns)) != len(columns):
        raise InvalidArgument("a column is named twice")
    return columns


def _as_batch(arr: Any) -> Batch:
    pa = _pa()
    t = arr.type
    if pa.types.is_large_string(t):
        arr = arr.view(pa.large_binary())
    elif not pa.types.is_large_binary(t):
        arr = arr.cast(pa.large_binary())
    return Batch.from_arrow(arr)


def _combine(arr: Any) -> Any:
    pa = _pa()
    if isinstance(arr, pa.ChunkedArray):
        return arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    return arr


def _with_nulls(values: Any, valid: Any, n: int, type_: Any) -> Any:
    pa = _pa()
    import pyarrow.compute as pc

    if len(values) == n:
        return values
    return pc.replace_with_mask(pa.nulls(n, type_), valid, values)


def _transform(table: Any, columns: Sequence[str], aad_template: str | None,
               service: EncryptionService, encrypt: bool, *, pandas_dtypes: bool = True,
               expected: dict[str, Any] | None = None, text: bool = False) -> Any:
    """``table`` with ``columns`` encrypted into the column format (or decrypted back).

    ``expected``: the type a column to decrypt must have (where a file says it); ``text``:
    encrypted values in their text form (``ec1:``, for CSV).

    ``pandas_dtypes``: carry each column's entry of the table's pandas metadata inside its
    values' type (see :class:`_PandasColumn`), so a pandas dtype the Arrow type alone does not
    tell (nullable ``Int64``, ``string``, ``boolean``...) comes back after decryption."""
    pa = _pa()
    _register_pandas_column()
    template = _Template(aad_template) if aad_template is not None else None
    out = table
    pandas_meta = _pandas_metadata(table.schema)
    for name in columns:
        index = _unique_index(out, name)
        field = out.schema.field(index)
        arr = out.column(index)
        aad = template.render(table, name) if template is not None else None
        if aad is not None:
            arr = _combine(arr)  # per-row AAD goes with one array
        metadata = {k: v for k, v in (field.metadata or {}).items()
                    if k not in (ORIGINAL_TYPE_KEY, COLUMN_TYPE_KEY)}
        if encrypt:
            entry = pandas_meta.get(name) if pandas_dtypes and pandas_meta else None
            if entry is not None and pandas_meta is not None:
                arr = _PandasColumn.wrap(arr, entry)
                pandas_meta[name] = _pandas_entry_of_bytes(entry)
            column = _encrypt(service, name, arr, aad)
            if text:
                column = to_text(column)
            metadata[COLUMN_TYPE_KEY] = base64.b64encode(type_descriptor(arr.type))
        elif _is_legacy(field, arr):
            column = _decrypt_legacy(service, name, field, arr, aad)
        else:
            column = _decrypt(service, name, field, arr, aad, (expected or {}).get(name))
            if isinstance(column.type, _PandasColumn):
                if pandas_meta and name in pandas_meta:
                    pandas_meta[name] = column.type.entry_for(pandas_meta[name])
                column = _storage_of(column)
        new_field = pa.field(name, column.type, nullable=field.nullable,
                             metadata=metadata or None)
        out = _set_column(out, index, new_field, column)
    if pandas_meta is not None:
        out = out.replace_schema_metadata(_with_pandas_metadata(out.schema.metadata, pandas_meta))
    return out


def _set_column(table: Any, index: int, field: Any, column: Any) -> Any:
    pa = _pa()
    if isinstance(table, pa.RecordBatch):
        arrays = list(table.columns)
        arrays[index] = _combine(column)
        fields = list(table.schema)
        fields[index] = field
        return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields, table.schema.metadata))
    return table.set_column(index, field, column)


def _encrypt(service: EncryptionService, name: str, arr: Any, aad: Any) -> Any:
    try:
        return encrypt_array(arr, name, service=service, aad=aad)
    except InvalidArgumentType as exc:
        error = restated(InvalidArgumentType(f"column {name!r}: {exc}"), exc)
    raise error


def _decrypt(service: EncryptionService, name: str, field: Any, arr: Any, aad: Any,
             expected: Any = None) -> Any:
    """The decrypted values of a column in the column format; every failure names the column
    (and a row where one can be told), none quotes a value."""
    if not _is_binary_or_text(field.type):
        raise ColumnNotEncrypted(f"column {name!r} is {field.type}; encrypted columns are "
                                 "binary (or text in CSV)")
    recorded = _recorded_descriptor(field)
    if expected is None and recorded is not None and arr.null_count == len(arr):
        expected = _type_recorded(recorded)  # no value to carry it: as the schema says
    error: EngineError
    try:
        return decrypt_array(arr, name, service=service, aad=aad, expected=expected,
                             types=[recorded] if recorded else ())
    except BatchInvalidTag as exc:
        error = counted(ColumnInvalidTag(name, exc.failed))  # decrypt_array counted them
    except (UnknownColumnFormat, MalformedColumnValue) as exc:
        error = restated(_not_encrypted(name, arr), exc)
    except (ColumnTypeMismatch, UnknownColumnType) as exc:
        error = restated(ColumnTypeUnreadable(name, _first_present(arr)), exc)
    raise error


def _recorded_descriptor(field: Any) -> bytes | None:
    """The type descriptor a field's metadata records (base64: polars and others read field
    metadata as UTF-8), None when it records none or not as base64."""
    recorded = (field.metadata or {}).get(COLUMN_TYPE_KEY)
    try:
        return base64.b64decode(recorded, validate=True) if recorded else None
    except ValueError:
        return None


def _type_recorded(descriptor: bytes) -> Any:
    try:
        return type_from_descriptor(descriptor)
    except (EnvelopeError, InvalidArgument):
        return None


def _is_binary_or_text(data_type: Any) -> bool:
    t = _pa().types
    return (t.is_binary(data_type) or t.is_large_binary(data_type) or t.is_binary_view(data_type)
            or t.is_string(data_type) or t.is_large_string(data_type)
            or t.is_string_view(data_type))


def _first_present(arr: Any) -> int:
    valid = arr.is_valid()
    found = np.flatnonzero(_combine(valid).to_numpy(zero_copy_only=False))
    return int(found[0]) if found.shape[0] else 0


def _looks_encrypted(arr: Any) -> Any:
    """For each value, whether it starts like a value of the column format (a format byte in
    binary, ``ec1:`` in text); anything for a NULL."""
    pa = _pa()
    import pyarrow.compute as pc

    arr = _combine(arr)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or \
            pa.types.is_string_view(arr.type):
        return pc.starts_with(arr, TEXT_PREFIX.decode())
    if pa.types.is_binary_view(arr.type):
        arr = arr.cast(pa.large_binary())
    first = pc.binary_slice(arr, 0, 1).cast(pa.large_binary())
    return pc.is_in(first, value_set=pa.array(_FORMAT_BYTES, pa.large_binary()))


def _not_encrypted(name: str, arr: Any) -> EngineError:
    """The error for a column of which some values are not in the column format: bad usage
    when none is (a plain column named by mistake), else a data failure naming the row."""
    valid = _combine(arr).is_valid().to_numpy(zero_copy_only=False)
    looks = _looks_encrypted(arr).fill_null(False).to_numpy(zero_copy_only=False)
    if not (looks & valid).any():
        return ColumnNotEncrypted(f"column {name!r} holds no encrypted values (is it the "
                                  "right column?)")
    bad = np.flatnonzero(valid & ~looks)
    if not bad.shape[0]:
        return ColumnNotTokens(name, _first_present(arr))
    return ColumnNotTokens(name, int(bad[0]), int(bad.shape[0]))


def _is_legacy(field: Any, arr: Any) -> bool:
    """Whether a column holds the text tokens of earlier releases (``ef1:``), which
    :func:`decrypt_columns` still reads."""
    pa = _pa()
    import pyarrow.compute as pc

    if ORIGINAL_TYPE_KEY in (field.metadata or {}):
        return True
    if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
        return False
    present = _combine(arr).drop_null()
    return bool(len(present)) and bool(pc.starts_with(present.slice(0, 1), "ef1:")[0].as_py())


def _decrypt_legacy(service: EncryptionService, name: str, field: Any, arr: Any,
                    aad: Any) -> Any:
    """Text tokens (``ef1:``) of earlier releases, back to the type their field recorded."""
    pa = _pa()
    arr = _combine(arr)
    original = (field.metadata or {}).get(ORIGINAL_TYPE_KEY, b"large_string")
    if original not in [t.encode() for t in _TEXT_TYPES]:
        raise InvalidArgument(f"column {name!r} records an unknown original type")
    if str(field.type) not in _TEXT_TYPES:
        raise ColumnNotEncrypted(f"column {name!r} is {field.type}; encrypted columns hold "
                                 "text tokens")
    n = len(arr)
    valid = arr.is_valid()
    present = arr.drop_null() if arr.null_count else arr
    if aad is not None:
        aad = _as_batch(aad.filter(valid) if arr.null_count else aad)
    new_type = getattr(pa, original.decode())()
    mask = valid if arr.null_count else None
    plain = (_decrypted(service, name, present, aad, mask) if len(present)
             else Batch.from_list([]))
    values = _plain_values(plain, name, original.decode(), mask).cast(new_type)
    return _with_nulls(values, valid, n, new_type)


# ---- pandas dtypes inside the values' type ----

PANDAS_COLUMN_EXTENSION = "engine.pandas_column"


def _pandas_metadata(schema: Any) -> dict[str, dict] | None:
    """Column name -> its entry in the schema's pandas metadata (None: the schema has none)."""
    raw = (schema.metadata or {}).get(b"pandas")
    if raw is None:
        return None
    try:
        columns = json.loads(raw)["columns"]
        return {c["field_name"]: c for c in columns if isinstance(c.get("field_name"), str)}
    except (ValueError, KeyError, TypeError):
        return None


def _with_pandas_metadata(metadata: Any, entries: dict[str, dict]) -> dict:
    meta = dict(metadata or {})
    doc = json.loads(meta[b"pandas"])
    doc["columns"] = [entries.get(c.get("field_name"), c) for c in doc["columns"]]
    meta[b"pandas"] = json.dumps(doc).encode()
    return meta


def _pandas_entry_of_bytes(entry: dict) -> dict:
    """The pandas metadata entry of a column of encrypted values (Python bytes objects)."""
    return {**entry, "pandas_type": "bytes", "numpy_type": "object", "metadata": None}


_DTYPE_KEYS = ("pandas_type", "numpy_type", "metadata")
_PandasColumn: Any = None


def _register_pandas_column() -> None:
    """Defines and registers :class:`_PandasColumn` once per process (decryption needs it
    registered to restore the type the values record)."""
    global _PandasColumn
    if _PandasColumn is not None:
        return
    pa = _pa()

    class PandasColumn(pa.ExtensionType):  # type: ignore[name-defined]  # pyarrow, on use
        """An Arrow type wrapping a column's own type with its pandas dtype (the column's
        entry of the pandas metadata, without its name): bound with the type into every
        value's AAD, public like the type (it names a dtype, never a value)."""

        def __init__(self, storage_type: Any, dtype: str) -> None:
            self.dtype = dtype
            super().__init__(storage_type, PANDAS_COLUMN_EXTENSION)

        def __arrow_ext_serialize__(self) -> bytes:
            return self.dtype.encode()

        @classmethod
        def __arrow_ext_deserialize__(cls, storage_type: Any, serialized: bytes) -> Any:
            return cls(storage_type, serialized.decode())

        @classmethod
        def of(cls, storage_type: Any, entry: dict) -> Any:
            """The type wrapping ``storage_type`` with a pandas metadata entry's dtype."""
            return cls(storage_type, json.dumps({k: entry.get(k) for k in _DTYPE_KEYS},
                                                sort_keys=True, separators=(",", ":")))

        @classmethod
        def wrap(cls, arr: Any, entry: dict) -> Any:
            t = cls.of(arr.type, entry)
            if isinstance(arr, pa.ChunkedArray):
                return pa.chunked_array([pa.ExtensionArray.from_storage(t, c)
                                         for c in arr.chunks], t)
            return pa.ExtensionArray.from_storage(t, arr)

        def entry_for(self, current: dict) -> dict:
            """``current`` (a column's pandas entry) with this type's dtype."""
            try:
                recorded = json.loads(self.dtype)
            except ValueError:
                return current
            return {**current, **{k: recorded.get(k) for k in _DTYPE_KEYS}}

    try:
        pa.register_extension_type(PandasColumn(pa.null(), "{}"))
    except pa.ArrowKeyError:  # registered by an earlier import of this module (a reload)
        pass
    _PandasColumn = PandasColumn


def _storage_of(column: Any) -> Any:
    pa = _pa()
    if isinstance(column, pa.ChunkedArray):
        return pa.chunked_array([c.storage for c in column.chunks], column.type.storage_type)
    return column.storage


def _rows(positions: Any, valid: Any) -> np.ndarray:
    """Rows of the table for positions among its non-NULL values (``valid``: the validity
    mask when the column has NULLs, else None)."""
    positions = np.asarray(positions, dtype=np.int64)
    if valid is None:
        return positions
    return np.flatnonzero(valid.to_numpy(zero_copy_only=False))[positions]


def _decrypted(service: EncryptionService, name: str, present: Any, aad: Any,
               valid: Any) -> Batch:
    """The plaintexts of a column's non-NULL tokens; a failure names the column and its first
    bad row (raised outside the handler: nothing of the service's error is chained)."""
    error: ColumnValueError | None = None
    try:
        return service.decrypt_many(_as_batch(present), aad)
    except BatchInvalidTag as exc:
        error = restated(ColumnInvalidTag(name, _rows(exc.failed, valid)), exc)
    except EnvelopeError as exc:
        error = restated(ColumnNotTokens(name, int(_rows([exc.index or 0], valid)[0]), exc.count), exc)
    raise error


def _plain_values(plain: Batch, name: str, original: str, valid: Any) -> Any:
    if not original.endswith("string"):
        return plain.to_arrow()
    try:
        return plain.to_arrow(text=True)
    except InvalidArgument:
        pass
    pa = _pa()
    text = plain.to_arrow().view(pa.large_string())  # the same memory, not yet validated
    lo, hi = 0, len(plain)  # the first record that is not UTF-8, by halves of views
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            text.slice(lo, mid - lo).validate(full=True)
        except pa.ArrowInvalid:
            hi = mid
        else:
            lo = mid
    raise ColumnNotText(name, int(_rows([lo], valid)[0]))


@_counted
def encrypt_columns(table: Any, columns: str | Sequence[str], *, aad_template: str | None = None,
                    service: EncryptionService | None = None, blind_indexes: Any = None) -> Any:
    """A copy of ``table`` with ``columns`` encrypted into binary values of the column format
    (one native batch call per column and record batch); other columns are shared, not copied.

    Args:
        table: a pyarrow ``Table``/``RecordBatch``, a pandas ``DataFrame`` or a polars
            ``DataFrame``/``LazyFrame`` (the result has the same type; a pandas column's dtype
            travels in its values' type, see :class:`_PandasColumn`).
        columns: a column name or several, of any Arrow type.
        aad_template: per-row associated data over other columns, e.g. ``"users:{id}:{column}"``;
            decryption needs the same template and the same values in those columns.
        service: default: the process-wide :func:`engine.get_encryption_service`.
        blind_indexes: blind indexes (:mod:`engine.blind_index`: ``BlindIndex``,
            ``BlindIndexes`` or ``IndexDefinition`` objects, the last keyed by the service's
            provider, or a list of them) computed from the plaintext and written beside it
            (``email_idx`` beside ``email``: appended, or replaced where the table has the
            column), under the current key version.

    Raises:
        InvalidArgument: an unknown column, or a template naming a missing column or one with NULLs;
            an index column named like a column encrypted or read (by an index or the template).
        InvalidArgumentType: not a table (or a frame Arrow cannot hold); a type the column
            format does not cover.
        KeyVersionNotUsable: the current key version may not encrypt.
        NormalisationError: a value fails its index's normaliser (nothing is encrypted).
    """
    arrow, back = _as_arrow(table)
    cols = _columns_arg(arrow, columns)
    service = service or get_encryption_service()
    indexes = as_blind_indexes(blind_indexes, service.provider)
    if indexes is None:
        return back(_transform(arrow, cols, aad_template, service, True))
    indexes.check_names(_written_or_read(cols, aad_template))
    return back(under_one_version(service.provider, lambda version: _transform(
        indexes.add_to_arrow(arrow, version=version), cols, aad_template, service, True)))


@_counted
def decrypt_columns(table: Any, columns: str | Sequence[str], *, aad_template: str | None = None,
                    service: EncryptionService | None = None) -> Any:
    """A copy of ``table`` with ``columns`` decrypted back to the types their values record
    (text tokens of earlier releases: to the type their field records).

    Raises:
        ColumnNotEncrypted: a column holds no encrypted value, or is not binary or text.
        ColumnNotTokens: some values of the column are not encrypted values (names the row).
        ColumnTypeUnreadable: values of different types, or no value carries the type.
        UnknownKeyVersion: a value names a version the provider does not hold.
        ColumnInvalidTag: values failed authentication (wrong AAD template, moved to another
            row or column, type edited); nothing is returned.
    """
    arrow, back = _as_arrow(table)
    cols = _columns_arg(arrow, columns)
    return back(_transform(arrow, cols, aad_template, service or get_encryption_service(), False),
                cols)


# ---- files: Parquet and CSV (what `crypto-engine encrypt-columns/decrypt-columns` run) ----

def _written_or_read(columns: Sequence[str], aad_template: str | None) -> set[str]:
    """The columns encrypted and those the AAD template reads: no index may replace them."""
    return set(columns) | (_Template(aad_template).columns() if aad_template else set())


def _file_format(path: str, file_format: str | None) -> str:
    if file_format is None:
        ext = os.path.splitext(path)[1].lower()
        file_format = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}.get(ext)
        if file_format is None:
            raise InvalidArgument(f"cannot tell the format of {path}; give --format parquet or csv")
    if file_format not in ("parquet", "csv"):
        raise InvalidArgument(f"unknown format {file_format!r}")
    return file_format


class _InputFile:
    """Reads an input file through pyarrow, turning what pyarrow raises on content it cannot
    read into :class:`TableFileInvalid` with our own words: pyarrow's messages quote the
    content (a CSV row, a cell), and no stored value is ever printed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def call(self, read: Callable[[], Any], problem: Any) -> Any:
        """``read()``; ``problem``: what to say when it fails on the content (a str, or a
        function of pyarrow's message that returns one)."""
        pa = _pa()
        try:
            return read()
        except OSError as exc:
            if exc.errno is not None:
                raise  # the file itself cannot be read: the system says why (exit 5)
            detail = ""  # pyarrow's own I/O status: the content ended early
        except (pa.ArrowException, UnicodeError) as exc:
            detail = str(exc)
        said = problem(detail) if callable(problem) else problem
        raise TableFileInvalid(f"{self.path}: {said}")

    def table(self, read: Callable[[], Any], problem: Any) -> Any:
        """A table or batch read with :meth:`call`, validated whole (None passes through)."""
        table = self.call(read, problem)
        if table is not None:
            self.call(lambda: table.schema.names, "a column name is not UTF-8")
            try:
                _validate(table)
            except InvalidArgument as exc:
                bad = str(exc)
            else:
                return table
            raise TableFileInvalid(f"{self.path}: {bad.replace('the table', 'the data read')}")
        return table

    def rows_from(self, offset: int, transform: Callable[[], Any]) -> Any:
        """``transform()``, with the rows of a column error counted from the file's start, and
        the file named in what is wrong with its columns (a missing one, say)."""
        try:
            return transform()
        except ColumnValueError as exc:
            error: EngineError = restated(exc.moved(offset), exc)
        except InvalidArgument as exc:
            if type(exc) not in (InvalidArgument, ColumnNotEncrypted):
                raise
            error = restated(type(exc)(f"{self.path}: {exc}"), exc)
        raise error


_CSV_CONVERSION = re.compile(r"In CSV column #(\d+): CSV conversion error to ([\w\[\], ]+?):")
_CSV_FIELDS = re.compile(r"CSV parse error: Expected (\d+) columns, got (\d+)")


def _csv_problem(message: str, names: list[str], rows: int) -> str:
    """What went wrong in a CSV block, from pyarrow's message without the content it quotes."""
    where = f"in the rows from row index {rows} on"
    m = _CSV_CONVERSION.match(message)
    if m and int(m.group(1)) < len(names):
        return (f"column {names[int(m.group(1))]!r}: a value is not a valid {m.group(2)} "
                f"({where})")
    m = _CSV_FIELDS.match(message)
    if m:
        return f"a row has {m.group(2)} fields where the header has {m.group(1)} ({where})"
    if not names:
        return "not CSV that can be read: empty, a header that is not UTF-8, or damaged"
    return f"cannot be parsed as CSV ({where})"


@dataclass(frozen=True)
class CsvDialect:
    """How a CSV file is written, as pyarrow's CSV reader takes it: ``delimiter`` and
    ``quote`` characters, and whether the first line is a ``header`` (without one, columns
    are called ``f0``, ``f1``, ... and the output has no header either). Values are read and
    written as the text they are (``0.0`` stays ``0.0``); a value is quoted on output only
    where it must be (it holds the delimiter, the quote, a line break, or is empty: an empty
    unquoted field is NULL)."""

    delimiter: str = ","
    quote: str = '"'
    header: bool = True

    def __post_init__(self) -> None:
        for what, char in (("delimiter", self.delimiter), ("quote", self.quote)):
            if not isinstance(char, str) or len(char) != 1 or char in "\r\n" or \
                    not char.isascii():
                raise InvalidArgument(f"the CSV {what} is one ASCII character, not a line break")
        if self.delimiter == self.quote:
            raise InvalidArgument("the CSV delimiter and quote must differ")
        if not isinstance(self.header, bool):
            raise InvalidArgumentType("header is True or False")


def _csv_text(values: Any, dialect: CsvDialect) -> Any:
    """Each value as a CSV field (quoted where it must be; NULL as an empty field)."""
    pa = _pa()
    import pyarrow.compute as pc

    if not (pa.types.is_large_string(values.type) or pa.types.is_string(values.type)):
        values = values.cast(pa.large_string())
    q = dialect.quote
    special = re.escape(dialect.delimiter + q) + r"\r\n"
    must = pc.or_(pc.match_substring_regex(values, f"[{special}]"), pc.equal(values, ""))
    text = lambda s: pa.scalar(s, pa.large_string())  # noqa: E731
    quoted = pc.binary_join_element_wise(text(q), pc.replace_substring(values, q, q + q),
                                         text(q), text(""))
    return pc.if_else(must, quoted, values).fill_null(text(""))


def _csv_bytes(table: Any, dialect: CsvDialect, header: bool) -> Any:
    """The rows of ``table`` (and its header) as CSV, built by pyarrow without a loop."""
    pa = _pa()
    import pyarrow.compute as pc

    columns = [_csv_text(_combine(table.column(i)), dialect) for i in range(table.num_columns)]
    if header:
        names = _csv_text(pa.array(table.schema.names, pa.large_string()), dialect)
        columns = [pa.concat_arrays([names.slice(i, 1), c]) for i, c in enumerate(columns)]
    if not columns or not len(columns[0]):
        return b""
    text = lambda s: pa.scalar(s, pa.large_string())  # noqa: E731
    lines = pc.binary_join_element_wise(*columns, text(dialect.delimiter))
    lines = pc.binary_join_element_wise(lines, text(""), text("\n"))
    data, offsets = binary_parts(lines)
    return memoryview(data[offsets[0]:offsets[-1]].data)


def _columns_file(src: str, dst: str, columns: Sequence[str], aad_template: str | None,
                  file_format: str | None, service: EncryptionService | None,
                  encrypt: bool, indexes: BlindIndexes | None = None,
                  before_commit: Callable[[], Any] | None = None,
                  csv: CsvDialect | None = None) -> dict[str, Any]:
    fmt = _file_format(src, file_format)
    if os.path.isdir(src):
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", src)
    for name in columns:  # before pyarrow sees them: it raises UnicodeEncodeError on these
        if not isinstance(name, str) or not _is_utf8(name):
            raise InvalidArgument(f"column names are text; got {name!r}")
    if aad_template is not None:
        _Template(aad_template)
    if csv is not None and not isinstance(csv, CsvDialect):
        raise InvalidArgumentType("csv takes a tables.CsvDialect")
    service = service or get_encryption_service()
    if indexes is not None:
        indexes.check_names(_written_or_read(columns, aad_template))

    def transform(group: Any, expected: Any = None, text: bool = False) -> Any:
        def run(version: Any = None) -> Any:
            table = group if indexes is None else indexes.add_to_arrow(group, version=version)
            return _transform(table, _columns_arg(table, columns), aad_template, service,
                              encrypt, expected=expected, text=text)

        return run() if indexes is None else under_one_version(service.provider, run)

    start = time.perf_counter()
    source = _InputFile(src)
    with atomic_output(dst, before_commit=before_commit) as out:
        if fmt == "parquet":
            if indexes is None:
                rows, groups = _rewrite_parquet(source, out, list(columns), transform, encrypt)
            else:
                rows, groups = _parquet_with_indexes(source, out, columns, transform)
        else:
            rows, groups = _csv_file(source, out, transform, csv or CsvDialect())
    report = {"operation": "encrypt-columns" if encrypt else "decrypt-columns", "format": fmt,
              "columns": list(columns), "rows": rows, "batches": groups,
              "seconds": time.perf_counter() - start}
    if indexes is not None:
        report["blind_indexes"] = [index.name for index in indexes]
    return report


def _open_parquet(source: _InputFile) -> Any:
    import pyarrow.parquet as pq

    return source.call(lambda: pq.ParquetFile(source.path), "not a Parquet file, or truncated "
                       "or damaged (its footer cannot be read)")


def _rewrite_parquet(source: _InputFile, out: Any, columns: list[str], transform: Any,
                     encrypt: bool) -> tuple[int, int]:
    """The file rewritten by :func:`engine.parquet_rewrite.rewrite_parquet`: only ``columns``
    change (binary, uncompressed, without dictionary or statistics when encrypted: ciphertexts
    gain nothing from them); codecs and levels, row
    groups, encodings, statistics, key-value metadata and sort order of the others are kept."""
    pa = _pa()
    reader = _open_parquet(source)
    meta = reader.metadata
    names = _columns_arg(reader.schema_arrow.empty_table(), columns)
    starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
    _register_pandas_column()
    schema = reader.schema_arrow
    fields = {c: schema.field(c) for c in names}
    kept = {c: {k: v for k, v in (f.metadata or {}).items()
                if k not in (ORIGINAL_TYPE_KEY, COLUMN_TYPE_KEY)} for c, f in fields.items()}
    pandas_meta = _pandas_metadata(schema)
    if encrypt:
        expected, types = None, {}
        for c, f in fields.items():
            sealed_type = f.type
            if pandas_meta and c in pandas_meta:  # as _transform wraps it
                sealed_type = _PandasColumn.of(f.type, pandas_meta[c])
                pandas_meta[c] = _pandas_entry_of_bytes(pandas_meta[c])
            types[c] = pa.field(c, pa.large_binary(), metadata={
                **kept[c], COLUMN_TYPE_KEY: base64.b64encode(type_descriptor(sealed_type))})
    else:
        expected = _recorded_types(source, reader, names)
        types = {}
        for c, t in expected.items():
            if isinstance(t, _PandasColumn) and pandas_meta and c in pandas_meta:
                pandas_meta[c] = t.entry_for(pandas_meta[c])
            types[c] = pa.field(c, t.storage_type if isinstance(t, pa.BaseExtensionType) else t,
                                metadata=kept[c] or None)
    metadata = (_with_pandas_metadata(schema.metadata, pandas_meta) if pandas_meta is not None
                else None)

    def one_group(index: int, table: Any) -> dict[str, Any]:
        done = source.rows_from(int(starts[index]), lambda: transform(table, expected))
        return {c: done.column(c) for c in names}

    try:
        rewrite_parquet(source.path, out, one_group, columns=names, types=types,
                        statistics=False if encrypt else None,
                        dictionary=False if encrypt else None,
                        codec="NONE" if encrypt else "OTHERS", lazy=False, metadata=metadata)
    except ParquetUnreadable as exc:
        error = restated(TableFileInvalid(f"{source.path}: {exc}"), exc)
    else:
        return int(starts[-1]), meta.num_row_groups
    raise error


def _recorded_types(source: _InputFile, reader: Any, columns: list[str]) -> dict[str, Any]:
    """The type each encrypted column's values record, read from their headers (no key), in
    the first row group that has a value carrying it; text tokens of earlier releases: the
    type their field recorded."""
    pa = _pa()
    found: dict[str, Any] = {}
    schema = reader.schema_arrow
    for name in columns:
        field = schema.field(name)
        original = (field.metadata or {}).get(ORIGINAL_TYPE_KEY)
        if original in [t.encode() for t in _TEXT_TYPES]:
            found[name] = getattr(pa, original.decode())()
            continue
        recorded = _recorded_descriptor(field)
        for i in range(reader.num_row_groups):
            values = source.call(partial(_read_column, reader, i, name),
                                 f"row group {i} cannot be read (truncated or damaged)")
            if _is_legacy(field, values):
                found[name] = pa.large_string()
                break
            if not _is_binary_or_text(field.type):
                break  # the transform says why
            try:
                info = inspect_values(values, types=[recorded] if recorded else ())
            except EnvelopeError:
                break  # the transform names the row
            if info.data_type is not None:
                found[name] = info.data_type
                break
        else:  # no value at all: the type the schema records, if any
            found[name] = (_type_recorded(recorded) if recorded else None) or pa.null()
    return found


def _parquet_with_indexes(source: _InputFile, out: Any, columns: Sequence[str],
                          transform: Any) -> tuple[int, int]:
    """With blind indexes, which add columns: a new file written with the source's writer
    settings (:func:`engine.parquet_rewrite.writer_options`), row group for row group."""
    import pyarrow.parquet as pq

    reader = _open_parquet(source)
    with open(source.path, "rb") as f:
        options = source.call(lambda: writer_options(reader, f),
                              "its pages cannot be read (truncated or damaged)")
    for key in ("use_dictionary", "write_statistics"):
        if isinstance(options.get(key), list):
            options[key] = [p for p in options[key] if p.split(".")[0] not in columns]
    writer = None
    rows = groups = 0
    try:
        for i in range(reader.num_row_groups):  # one row group in memory at a time
            group = source.table(partial(reader.read_row_group, i),
                                 f"row group {i} cannot be read (truncated or damaged)")
            done = source.rows_from(rows, partial(transform, group))
            if writer is None:
                writer = pq.ParquetWriter(out, done.schema, **options)
            source.call(partial(writer.write_table, done, row_group_size=max(1, done.num_rows)),
                        f"row group {i} cannot be written back as Parquet")
            rows += group.num_rows
            groups += 1
        if writer is None:  # no row groups: an empty file with the new schema
            empty = source.table(lambda: reader.schema_arrow.empty_table(),
                                 "its schema cannot be read")
            writer = pq.ParquetWriter(out, transform(empty).schema, **options)
    finally:
        if writer is not None:
            writer.close()
    return rows, groups


def _csv_file(source: _InputFile, out: Any, transform: Any,
              dialect: CsvDialect) -> tuple[int, int]:
    """CSV block by block, every value read and written as the text it is."""
    pa = _pa()
    import pyarrow.csv as pacsv

    src = source.path
    read = pacsv.ReadOptions(autogenerate_column_names=not dialect.header)
    parse = pacsv.ParseOptions(delimiter=dialect.delimiter, quote_char=dialect.quote)
    probe = source.call(lambda: pacsv.open_csv(src, read_options=read, parse_options=parse),
                        lambda problem: _csv_problem(problem, [], 0))
    names = source.call(lambda: probe.schema.names, "a column name is not UTF-8")
    # NULL is written unquoted-empty and "" quoted, and read back the same way.
    options = pacsv.ConvertOptions(column_types={c: pa.large_string() for c in names},
                                   strings_can_be_null=True, quoted_strings_can_be_null=False)
    reader = source.call(lambda: pacsv.open_csv(src, read_options=read, parse_options=parse,
                                                convert_options=options),
                         lambda problem: _csv_problem(problem, [], 0))
    blocks = iter(reader)
    rows = groups = 0
    header = dialect.header
    while True:
        batch = source.table(lambda: next(blocks, None),
                             lambda problem, rows=rows: _csv_problem(problem, names, rows))
        if batch is None:
            break
        done = source.rows_from(rows, partial(transform, pa.Table.from_batches([batch]),
                                              text=True))
        out.write(_csv_bytes(done, dialect, header))
        header = False
        rows += batch.num_rows
        groups += 1
    if header:  # no rows: the header alone
        out.write(_csv_bytes(pa.schema([(n, pa.large_string()) for n in names]).empty_table(),
                             dialect, True))
    return rows, groups


@_counted
def encrypt_columns_file(src: str, dst: str, columns: Sequence[str], *,
                         aad_template: str | None = None, file_format: str | None = None,
                         service: EncryptionService | None = None,
                         blind_indexes: Any = None,
                         before_commit: Callable[[], Any] | None = None,
                         csv: CsvDialect | None = None) -> dict[str, Any]:
    """Encrypts ``columns`` of a Parquet or CSV file into ``dst`` (same format), one row group
    (or CSV block) at a time; ``dst`` appears only once complete.

    Parquet: the file is rewritten by :func:`engine.parquet_rewrite.rewrite_parquet`, so
    every other column keeps its codec and level, dictionary encoding and statistics, and the
    file its row groups, key-value metadata and sort order; encrypted columns are
    ``large_binary`` values of the column format (docs/column-format.md), without dictionary
    or statistics. CSV: every value is read and written as the text it is; encrypted values
    in their text form (``ec1:``).

    Args:
        blind_indexes: as :func:`encrypt_columns` takes them: their columns are written
            beside the encrypted ones, computed from the plaintext (CSV: from the text).
        before_commit: called just before ``dst`` is renamed into place; what it raises
            cancels that (see :func:`engine.atomic_file.atomic_output`).
        csv: the CSV dialect (:class:`CsvDialect`: delimiter, quote, header).

    Returns:
        A report: format, columns, rows, batches, seconds (and the blind indexes written).

    Raises:
        What :func:`encrypt_columns` raises; TableFileInvalid: the input cannot be read as its
        format; OSError: a file cannot be read or written.
    """
    service = service or get_encryption_service()
    return _columns_file(src, dst, columns, aad_template, file_format, service, True,
                         as_blind_indexes(blind_indexes, service.provider), before_commit, csv)


@_counted
def decrypt_columns_file(src: str, dst: str, columns: Sequence[str], *,
                         aad_template: str | None = None, file_format: str | None = None,
                         service: EncryptionService | None = None,
                         before_commit: Callable[[], Any] | None = None,
                         csv: CsvDialect | None = None) -> dict[str, Any]:
    """Decrypts ``columns`` of a file made by :func:`encrypt_columns_file` (or of text tokens
    written by earlier releases) back to the types their values record; ``dst`` appears only
    if every value authenticated (``before_commit``, ``csv``: as for
    :func:`encrypt_columns_file`)."""
    return _columns_file(src, dst, columns, aad_template, file_format, service, False,
                         before_commit=before_commit, csv=csv)
