"""Columns of tables in data pipelines: encrypt and decrypt named columns of a pyarrow ``Table``
or ``RecordBatch`` (pandas and polars data frames through Arrow), and of Parquet and CSV files.

An encrypted column holds the engine's text tokens (``ef1:...``, as :meth:`EncryptionService.
encrypt_many` makes them) as ``large_string``, in the same place in the schema; its field
metadata records the original type (``engine.encrypted_from``), to which decryption casts back.
NULLs stay NULLs. Each column of each record batch (each Parquet row group) is one native call.

Associated data can be bound per row with a template over the row's other columns, like
``"users:{id}:{column}"`` (``{column}`` is the encrypted column's name): a value copied into
another row or column then fails to decrypt.

Services cannot be pickled: in Dask or a ``multiprocessing`` pool, call these functions inside
the worker, where :func:`engine.get_encryption_service` builds the service from the environment
(see the README's recipes).
"""

from __future__ import annotations

import errno
import os
import re
import string
import time
from typing import Any, Callable, Sequence

import numpy as np

from .atomic_file import atomic_output
from .batch import Batch
from .blind_index import BlindIndexes, as_blind_indexes, under_one_version
from .envelope import EnvelopeError
from .errors import BatchInvalidTag, EngineError, InvalidArgument, InvalidArgumentType
from .refusals import counts_refusals, metrics_of_service, restated
from .service import EncryptionService, get_encryption_service

__all__ = ["ColumnInvalidTag", "ColumnNotText", "ColumnNotTokens", "ColumnValueError",
           "TableFileInvalid", "decrypt_columns", "decrypt_columns_file", "encrypt_columns",
           "encrypt_columns_file", "is_table"]

ORIGINAL_TYPE_KEY = b"engine.encrypted_from"
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
    """A value of an encrypted column is not an engine token (plain text, or a damaged value)."""

    what = "not an engine token"


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
    """Whether ``obj`` is a table these functions take: a pyarrow ``Table``/``RecordBatch`` or a
    pandas/polars ``DataFrame`` (checked without importing any of them)."""
    name, module = type(obj).__name__, type(obj).__module__
    return ((module.startswith("pyarrow") and name in ("Table", "RecordBatch"))
            or (module.startswith(("pandas", "polars")) and name == "DataFrame"))


def _as_arrow(table: Any) -> tuple[Any, Any]:
    """(a pyarrow Table or RecordBatch, how to turn the result back into the caller's type).

    A pyarrow table may come from anywhere (an Arrow IPC file a user was sent): it is validated
    whole first, as pyarrow's compute functions assume valid data and read out of bounds on a
    corrupt buffer or offset."""
    pa = _pa()
    if isinstance(table, (pa.Table, pa.RecordBatch)):
        _validate(table)
        return table, lambda t: t
    module = type(table).__module__
    if module.startswith("pandas"):
        return pa.Table.from_pandas(table, preserve_index=True), lambda t: t.to_pandas()
    if module.startswith("polars"):
        import polars as pl

        return table.to_arrow(), pl.from_arrow
    raise InvalidArgumentType(
        f"expected a pyarrow Table/RecordBatch or a pandas/polars DataFrame, not {type(table).__name__}")


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
               service: EncryptionService, encrypt: bool) -> Any:
    pa = _pa()
    template = _Template(aad_template) if aad_template is not None else None
    schema = table.schema
    out = table
    for name in columns:
        index = _unique_index(table, name)
        field = schema.field(index)
        arr = _combine(table.column(index))
        n = len(arr)
        valid = arr.is_valid()
        present = arr.drop_null() if arr.null_count else arr
        aad = None
        if template is not None:
            aad = template.render(table, name)
            if arr.null_count:
                aad = aad.filter(valid)
            aad = _as_batch(aad)
        if encrypt:
            if str(field.type) not in _TEXT_TYPES:
                raise InvalidArgumentType(f"column {name!r} is {field.type}; only string or binary "
                                          "columns are encrypted")
            values = (service.encrypt_many(_as_batch(present), aad, arrow=True) if len(present)
                      else pa.array([], type=pa.large_string()))
            new_type = pa.large_string()
            metadata = {**(field.metadata or {}), ORIGINAL_TYPE_KEY: str(field.type).encode()}
        else:
            original = (field.metadata or {}).get(ORIGINAL_TYPE_KEY, b"large_string")
            if original not in [t.encode() for t in _TEXT_TYPES]:
                raise InvalidArgument(f"column {name!r} records an unknown original type")
            if str(field.type) not in _TEXT_TYPES:
                raise InvalidArgumentType(f"column {name!r} is {field.type}; encrypted columns "
                                          "hold text tokens")
            original = original.decode()
            new_type = getattr(pa, original)()
            mask = valid if arr.null_count else None
            plain = (_decrypted(service, name, present, aad, mask) if len(present)
                     else Batch.from_list([]))
            values = _plain_values(plain, name, original, mask).cast(new_type)
            metadata = {k: v for k, v in (field.metadata or {}).items() if k != ORIGINAL_TYPE_KEY}
        column = _with_nulls(values, valid, n, new_type)
        new_field = pa.field(name, new_type, nullable=field.nullable, metadata=metadata or None)
        if isinstance(out, pa.RecordBatch):
            arrays = list(out.columns)
            arrays[index] = column
            fields = list(out.schema)
            fields[index] = new_field
            out = pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields, out.schema.metadata))
        else:
            out = out.set_column(index, new_field, column)
    return out


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
    """A copy of ``table`` with ``columns`` encrypted to text tokens (one native batch call per
    column and record batch); other columns are shared, not copied.

    Args:
        table: a pyarrow ``Table``/``RecordBatch``, or a pandas or polars ``DataFrame`` (the
            result has the same type).
        columns: a column name or several; string or binary columns.
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
        InvalidArgumentType: a column that is not string or binary; not a table.
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
    """A copy of ``table`` with ``columns`` decrypted back to their original types.

    Raises:
        EnvelopeError: a value is not a token.
        UnknownKeyVersion: a token names a version the provider does not hold.
        BatchInvalidTag: values failed authentication (wrong AAD template, moved or edited).
    """
    arrow, back = _as_arrow(table)
    cols = _columns_arg(arrow, columns)
    return back(_transform(arrow, cols, aad_template, service or get_encryption_service(), False))


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
            if type(exc) is not InvalidArgument:
                raise
            error = restated(InvalidArgument(f"{self.path}: {exc}"), exc)
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


def _columns_file(src: str, dst: str, columns: Sequence[str], aad_template: str | None,
                  file_format: str | None, service: EncryptionService | None,
                  encrypt: bool, indexes: BlindIndexes | None = None,
                  before_commit: Callable[[], Any] | None = None) -> dict[str, Any]:
    pa = _pa()
    fmt = _file_format(src, file_format)
    if os.path.isdir(src):
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", src)
    for name in columns:  # before pyarrow sees them: it raises UnicodeEncodeError on these
        if not isinstance(name, str) or not _is_utf8(name):
            raise InvalidArgument(f"column names are text; got {name!r}")
    if aad_template is not None:
        _Template(aad_template)
    service = service or get_encryption_service()
    if indexes is not None:
        indexes.check_names(_written_or_read(columns, aad_template))

    def transform(group: Any) -> Any:
        if indexes is None:
            return _transform(group, _columns_arg(group, columns), aad_template, service, encrypt)
        return under_one_version(service.provider, lambda version: _transform(
            indexes.add_to_arrow(group, version=version), _columns_arg(group, columns),
            aad_template, service, encrypt))

    start = time.perf_counter()
    rows = groups = 0
    source = _InputFile(src)
    with atomic_output(dst, before_commit=before_commit) as out:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            reader = source.call(lambda: pq.ParquetFile(src), "not a Parquet file, or truncated "
                                 "or damaged (its footer cannot be read)")
            writer = None
            try:
                for i in range(reader.num_row_groups):  # one row group in memory at a time
                    group = source.table(lambda i=i: reader.read_row_group(i),
                                         f"row group {i} cannot be read (truncated or damaged)")
                    done = source.rows_from(rows, lambda group=group: transform(group))
                    if writer is None:
                        writer = pq.ParquetWriter(out, done.schema)
                    source.call(lambda done=done, writer=writer: writer.write_table(done),
                                f"row group {i} cannot be written back as Parquet")
                    rows += group.num_rows
                    groups += 1
                if writer is None:  # no row groups: an empty file with the new schema
                    empty = source.table(lambda: reader.schema_arrow.empty_table(),
                                         "its schema cannot be read")
                    writer = pq.ParquetWriter(out, transform(empty).schema)
            finally:
                if writer is not None:
                    writer.close()
        else:
            import pyarrow.csv as pacsv

            # Encrypted columns and the columns a template or an index reads are read as text,
            # as written (a zip code "01234" is not the number 1234).
            keep = _written_or_read(columns, aad_template)
            keep |= {c for index in (indexes or ()) for c in index.columns}
            # NULL is written unquoted-empty and "" quoted, and read back the same way.
            options = pacsv.ConvertOptions(column_types={c: pa.large_string() for c in keep},
                                           strings_can_be_null=True,
                                           quoted_strings_can_be_null=False)
            reader = source.call(lambda: pacsv.open_csv(src, convert_options=options),
                                 lambda problem: _csv_problem(problem, [], 0))
            names = source.call(lambda: reader.schema.names, "a column name is not UTF-8")
            blocks = iter(reader)
            writer = None
            try:
                while True:
                    batch = source.table(lambda: next(blocks, None),
                                         lambda problem, rows=rows: _csv_problem(problem, names,
                                                                                 rows))
                    if batch is None:
                        break
                    for name, type_ in zip(batch.schema.names, batch.schema.types):
                        if pa.types.is_binary(type_) or pa.types.is_large_binary(type_):
                            raise TableFileInvalid(  # CSV text that is not UTF-8
                                f"{src}: column {name!r}: a value is not UTF-8 text (in the "
                                f"rows from row index {rows} on)")
                    done = source.rows_from(rows, lambda batch=batch: transform(
                        pa.Table.from_batches([batch])))
                    if writer is None:
                        writer = pacsv.CSVWriter(out, done.schema)
                    source.call(lambda done=done, writer=writer: writer.write_table(done),
                                f"the rows from row index {rows} on cannot be written back as "
                                f"CSV")
                    rows += batch.num_rows
                    groups += 1
            finally:
                if writer is not None:
                    writer.close()
    report = {"operation": "encrypt-columns" if encrypt else "decrypt-columns", "format": fmt,
              "columns": list(columns), "rows": rows, "batches": groups,
              "seconds": time.perf_counter() - start}
    if indexes is not None:
        report["blind_indexes"] = [index.name for index in indexes]
    return report


@_counted
def encrypt_columns_file(src: str, dst: str, columns: Sequence[str], *,
                         aad_template: str | None = None, file_format: str | None = None,
                         service: EncryptionService | None = None,
                         blind_indexes: Any = None,
                         before_commit: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Encrypts ``columns`` of a Parquet or CSV file into ``dst`` (same format), one row group
    (or CSV block) at a time; ``dst`` appears only once complete.

    Args:
        blind_indexes: as :func:`encrypt_columns` takes them: their columns are written
            beside the encrypted ones, computed from the plaintext (CSV columns an index
            reads are read as the text written).
        before_commit: called just before ``dst`` is renamed into place; what it raises
            cancels that (see :func:`engine.atomic_file.atomic_output`).

    Returns:
        A report: format, columns, rows, batches, seconds (and the blind indexes written).

    Raises:
        What :func:`encrypt_columns` raises; OSError: a file cannot be read or written.
    """
    service = service or get_encryption_service()
    return _columns_file(src, dst, columns, aad_template, file_format, service, True,
                         as_blind_indexes(blind_indexes, service.provider), before_commit)


@_counted
def decrypt_columns_file(src: str, dst: str, columns: Sequence[str], *,
                         aad_template: str | None = None, file_format: str | None = None,
                         service: EncryptionService | None = None,
                         before_commit: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Decrypts ``columns`` of a file made by :func:`encrypt_columns_file`; ``dst`` appears only
    if every value authenticated (``before_commit``: as for :func:`encrypt_columns_file`)."""
    return _columns_file(src, dst, columns, aad_template, file_format, service, False,
                         before_commit=before_commit)
