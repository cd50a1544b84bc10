"""What SQLite and PostgreSQL share: keyset pagination by primary key, the batch write with its
optimistic check, and checkpoints kept in a table of the store itself.

A batch is read with ``WHERE key > <last key> [AND key <= <partition end>] ORDER BY key LIMIT
<n>`` (never OFFSET). Its re-encrypted values are written in one transaction, each with
``UPDATE t SET col = <new> WHERE key = <key> AND col = <value read>``, so a value the
application changed in between is left alone (counted as ``changed``, for the next pass); the
same transaction moves the partition's checkpoint to the batch's last key. A job killed at any
moment resumes after the last committed batch, and a value already under the target version is
skipped anyway.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from ...batch import Batch
from ...codecs import batch_to_text
from ...records import BYTES_VALUES, NONE_VALUES, OTHER_VALUES, STR_VALUES, value_kinds
from ..errors import ColumnNotFound, StoreUnavailable
from ..spec import Column, row_fields

__all__ = ["ColumnWrite", "Partition", "ReadBatch", "RowUpdate", "SqlStore"]

# Column kinds, as the dialects report them.
TEXT, BINARY, JSON_TEXT, JSONB, INTEGER, OTHER = "text", "binary", "json", "jsonb", "integer", "other"
VALUE_KINDS = (TEXT, BINARY, JSON_TEXT, JSONB)
KEY_KINDS = (TEXT, INTEGER)


@dataclass(frozen=True)
class Partition:
    """A range of a table by key: after ``low`` (exclusive; None: from the start) up to
    ``high`` (inclusive; None: to the end); ``done`` is the last key an earlier run of the job
    committed in it. For Parquet, ``file`` names the one file the partition is."""

    index: int
    low: Any = None
    high: Any = None
    done: Any = None
    file: str | None = None


@dataclass
class ReadBatch:
    """One batch as read: the keys, an Arrow record batch (key and every column read), and
    the values as the driver returned them (the optimistic check compares against these)."""

    keys: Sequence[Any]
    table: Any
    originals: dict[str, Sequence[Any]]
    text: dict[str, Any]  # per column: True, False or a bool per row (SQLite's dynamic types)

    @property
    def last_key(self) -> Any:
        return self.keys[-1]


@dataclass
class ColumnWrite:
    """What one batch writes for one column of the job: its new values at ``rows``, with the
    values of its blind indexes at the same rows (both Arrow, for the whole batch);
    ``fields`` are the other columns those indexes read."""

    rows: np.ndarray
    new: Any
    indexes: dict[str, Any]
    fields: tuple[str, ...] = ()


@dataclass
class RowUpdate:
    """One column's UPDATE for each row of ``keys``, as the driver takes it: set ``column`` to
    ``new`` and each index column to its value, where the row still holds ``old`` in the
    column and, in each column of ``fields``, one of the values given (the value read; for a
    column of the job also the value this transaction writes to it)."""

    column: str
    keys: Sequence[Any]
    old: Sequence[Any]
    new: Sequence[Any]
    indexes: dict[str, list] = field(default_factory=dict)
    fields: dict[str, tuple[Sequence[Any], Sequence[Any] | None]] = field(default_factory=dict)


def arrow_values(values: Sequence[Any]) -> tuple[Any, Any]:
    """(an Arrow column, which values are text) from values a driver returned: str, bytes or
    None; anything else (a number where a ciphertext should be) becomes its text, which no
    parser takes for a ciphertext."""
    import pyarrow as pa

    kinds = value_kinds(values)
    if not kinds & ~(STR_VALUES | NONE_VALUES):
        return pa.array(values, pa.large_string()), True
    if not kinds & ~(BYTES_VALUES | NONE_VALUES):
        return pa.array(values, pa.large_binary()), False
    # mixed kinds (SQLite stores a type per value): one conversion per value
    text = np.fromiter((isinstance(v, str) for v in values), dtype=bool, count=len(values))
    converted = [v.encode("utf-8", "surrogatepass") if isinstance(v, str) else
                 None if v is None else
                 bytes(v) if isinstance(v, (bytes, bytearray, memoryview)) else
                 str(v).encode() for v in values]
    if kinds & OTHER_VALUES:
        text |= np.fromiter((not isinstance(v, (str, bytes, bytearray, memoryview, type(None)))
                             for v in values), dtype=bool, count=len(values))
    return pa.array(converted, pa.large_binary()), text


def python_values(new: Any, rows: np.ndarray, text: Any) -> list:
    """The new values at ``rows`` as the driver takes them: str where the value read was text,
    bytes elsewhere (built in C for text)."""
    import pyarrow as pa

    subset = new if rows.shape[0] == len(new) else new.take(pa.array(rows))
    batch = Batch.from_arrow(subset.cast(pa.large_binary()) if not
                             pa.types.is_large_binary(subset.type) else subset)
    if text is True:
        return batch_to_text(batch)
    if text is False:
        return batch.to_list()
    as_text = np.asarray(text)[rows]
    out = batch.to_list()
    if as_text.any():
        texts = batch_to_text(batch.take(np.flatnonzero(as_text)))
        for i, t in zip(np.flatnonzero(as_text).tolist(), texts):
            out[i] = t
    return out


class SqlStore:
    """A table with a single-column primary key, reached through a DB-API driver.

    Subclasses set ``scheme`` and provide :meth:`connect`, :meth:`quote`, :meth:`describe`,
    :meth:`primary_key`, :meth:`transaction` and the SQL text hooks.
    """

    scheme = ""
    placeholder = "?"
    table: str
    key: str
    progress_table: str

    # ---- dialect hooks ----

    def connect(self, *, write: bool = False) -> Any:
        """A new connection (``write``: the job will write through it)."""
        raise NotImplementedError

    def quote(self, name: str) -> str:
        raise NotImplementedError

    def describe(self, conn: Any) -> dict[str, str]:
        """Column name -> kind (``TEXT``, ``BINARY``, ``JSON_TEXT``, ``JSONB``, ``INTEGER`` or
        ``OTHER``). Raises TableNotFound."""
        raise NotImplementedError

    def primary_key(self, conn: Any) -> list[str]:
        raise NotImplementedError

    def transaction(self, conn: Any) -> Any:
        raise NotImplementedError

    def errors(self) -> tuple[type[BaseException], ...]:
        """The driver's exception classes, mapped to StoreUnavailable."""
        raise NotImplementedError

    def read_expression(self, column: str, kind: str) -> str:
        return self.quote(column)

    def value_param(self, kind: str) -> str:
        return self.placeholder

    def compare(self, column: str, kind: str) -> str:
        return f"{self.quote(column)} = {self.placeholder}"

    def same(self, column: str, kind: str) -> str:
        """Like :meth:`compare`, NULL equal to NULL."""
        return f"{self.quote(column)} IS {self.placeholder}"

    def progress_name(self) -> str:
        """The checkpoint table, quoted."""
        return self.quote(self.progress_table)

    def progress_ddl(self) -> str:
        return (f"CREATE TABLE IF NOT EXISTS {self.progress_name()} (job TEXT NOT NULL,"
                " part INTEGER NOT NULL, low TEXT, high TEXT, done TEXT,"
                " finished INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (job, part))")

    # ---- shared ----

    @staticmethod
    def _executemany(conn: Any, sql: str, params: list) -> int:
        """Runs ``sql`` for every parameter tuple; returns the rows it changed in all."""
        cur = conn.cursor()
        try:
            cur.executemany(sql, params)
            return cur.rowcount
        finally:
            cur.close()

    @property
    def display(self) -> str:
        """The store as reports and the audit trail name it (no credentials)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def session(self, *, write: bool = False) -> Iterator[Any]:
        """A connection, closed at the end; driver errors become StoreUnavailable."""
        conn = None
        failure: str | None = None
        try:
            conn = self.connect(write=write)
            yield conn
        except self.errors() as exc:
            failure = _describe_error(exc)
        finally:
            if conn is not None:
                try:
                    conn.close()
                except self.errors():
                    pass
        if failure is not None:
            raise StoreUnavailable(f"{self.display}: {failure}")

    def check(self, conn: Any, columns: Sequence[Column]) -> dict[str, str]:
        """Checks the table, its key and every column; returns each column's kind.

        Raises:
            TableNotFound, ColumnNotFound: what is missing or unusable, by name.
        """
        kinds = self.describe(conn)
        if self.key not in kinds:
            raise ColumnNotFound(f"table {self.table!r} has no column {self.key!r} (the key)")
        if self.primary_key(conn) != [self.key]:
            raise ColumnNotFound(f"column {self.key!r} is not the primary key of {self.table!r}:"
                                 " the job pages through the table by its primary key")
        if kinds[self.key] not in KEY_KINDS:
            raise ColumnNotFound(f"the key {self.key!r} must be an integer or text column")
        for column in columns:
            if column.sealed is not None:
                raise ColumnNotFound(f"column {column.name!r}: the three-column layout is for "
                                     "Parquet; a table stores tokens or JSON values")
            for name in column.read_columns():
                if name not in kinds:
                    raise ColumnNotFound(f"table {self.table!r} has no column {name!r}")
            if kinds[column.name] not in VALUE_KINDS:
                raise ColumnNotFound(f"column {column.name!r} cannot hold ciphertexts (it is "
                                     f"{kinds[column.name]}; use text, blob/bytea or json/jsonb)")
            for definition in column.indexes:
                if definition.name == self.key:
                    raise ColumnNotFound(f"blind index column {definition.name!r} is the "
                                         "table's key")
                if kinds.get(definition.name) != TEXT:
                    raise ColumnNotFound(
                        f"blind index column {definition.name!r} must be a text column of "
                        f"{self.table!r}" + ("" if definition.name in kinds else " (it has none)"))
        for name in row_fields(columns):
            if name not in kinds:
                raise ColumnNotFound(f"table {self.table!r} has no column {name!r} (a blind "
                                     "index reads it)")
            if kinds[name] not in (TEXT, BINARY, INTEGER):
                raise ColumnNotFound(f"column {name!r}, which a blind index reads, is not a text, "
                                     "binary or integer column")
        return kinds

    def count(self, conn: Any) -> int:
        return int(conn.execute(f"SELECT COUNT(*) FROM {self.quote(self.table)}").fetchone()[0])

    def split(self, conn: Any, count: int) -> list[Partition]:
        """``count`` partitions of about equal size, recorded nowhere (for a read-only job)."""
        bounds = self._bounds(conn, count)
        return [Partition(i, lo, hi) for i, (lo, hi) in enumerate(zip([None] + bounds,
                                                                     bounds + [None]))]

    def plan(self, conn: Any, job: str, count: int) -> list[Partition]:
        """The job's partitions: those an earlier run recorded (with how far it got), or
        ``count`` new ones of about equal size, recorded now."""
        with self.transaction(conn):
            conn.execute(self.progress_ddl())
            p = self.placeholder
            rows = conn.execute(f"SELECT part, low, high, done FROM {self.progress_name()}"
                                f" WHERE job = {p} AND finished = 0 ORDER BY part", (job,)).fetchall()
            if rows:
                return [Partition(int(i), *(_unkey(v) for v in (lo, hi, done)))
                        for i, lo, hi, done in rows]
            done = conn.execute(f"SELECT COUNT(*) FROM {self.progress_name()}"
                                f" WHERE job = {p}", (job,)).fetchone()[0]
            if done:  # every partition finished: the job is complete, a new pass starts
                conn.execute(f"DELETE FROM {self.progress_name()} WHERE job = {p}", (job,))
            parts = self.split(conn, count)
            self._executemany(
                conn, f"INSERT INTO {self.progress_name()} (job, part, low, high) "
                      f"VALUES ({p}, {p}, {p}, {p})",
                [(job, part.index, _key(part.low), _key(part.high)) for part in parts])
        return parts

    def _bounds(self, conn: Any, count: int) -> list[Any]:
        """``count - 1`` keys that split the table into about equal ranges (one scan of the
        key's index, in the database)."""
        if count <= 1:
            return []
        k, t = self.quote(self.key), self.quote(self.table)
        rows = conn.execute(
            f"SELECT MAX({k}) FROM (SELECT {k}, NTILE({int(count)}) OVER (ORDER BY {k}) AS tile"
            f" FROM {t}) AS tiles GROUP BY tile ORDER BY 1").fetchall()
        return [r[0] for r in rows[:-1]]

    def forget(self, conn: Any, job: str) -> None:
        """Removes a finished job's checkpoints (a later run makes a new pass)."""
        with self.transaction(conn):
            conn.execute(f"DELETE FROM {self.progress_name()} WHERE job = "
                         f"{self.placeholder}", (job,))

    def finish(self, conn: Any, job: str, part: Partition) -> None:
        with self.transaction(conn):
            self._checkpoint(conn, job, part, None, finished=True)

    def _checkpoint(self, conn: Any, job: str, part: Partition, done: Any, *,
                    finished: bool = False) -> None:
        p = self.placeholder
        if finished:
            conn.execute(f"UPDATE {self.progress_name()} SET finished = 1"
                         f" WHERE job = {p} AND part = {p}", (job, part.index))
        else:
            conn.execute(f"UPDATE {self.progress_name()} SET done = {p}"
                         f" WHERE job = {p} AND part = {p}", (_key(done), job, part.index))

    def scan(self, conn: Any, part: Partition, columns: Sequence[Column], kinds: dict[str, str],
             batch_size: int) -> Iterator[ReadBatch]:
        """The partition's rows in key order, ``batch_size`` at a time, from where an earlier
        run left off."""
        import pyarrow as pa

        fields = row_fields(columns)
        stored_indexes = {d.name for c in columns for d in c.indexes}  # read to check them
        names = [self.key] + sorted({n for c in columns for n in c.read_columns()}
                                    .union(fields, stored_indexes) - {self.key})
        aad_columns = {n for c in columns for n in c.aad.columns()}.union(fields)
        exprs = ", ".join(self.read_expression(n, kinds[n]) for n in names)
        k, p = self.quote(self.key), self.placeholder
        after = part.done if part.done is not None else part.low
        base = f"SELECT {exprs} FROM {self.quote(self.table)}"
        while True:
            where, params = [], []
            if after is not None:
                where.append(f"{k} > {p}")
                params.append(after)
            if part.high is not None:
                where.append(f"{k} <= {p}")
                params.append(part.high)
            sql = base + (" WHERE " + " AND ".join(where) if where else "") + \
                f" ORDER BY {k} LIMIT {int(batch_size)}"
            rows = conn.execute(sql, params).fetchall()
            if not rows:
                return
            data = list(zip(*rows))
            arrays, originals, text = {}, {}, {}
            for name, values in zip(names, data):
                if name == self.key:
                    if name in aad_columns:
                        arrays[name] = pa.array(values)
                    continue
                if name in fields:
                    _check_index_field(name, values)
                arrays[name], text[name] = arrow_values(values)
                originals[name] = values
            yield ReadBatch(data[0], pa.RecordBatch.from_pydict(arrays), originals, text)
            after = rows[-1][0]

    def write(self, conn: Any, batch: ReadBatch, updates: dict[str, ColumnWrite],
              kinds: dict[str, str], job: str, part: Partition) -> dict[str, int]:
        """Writes, in one transaction, the new values at the given rows of each column with
        their blind index values (each row only where the column, and every other column its
        indexes read, still holds what was read) and the checkpoint.

        Returns:
            Per column, how many values the application had changed meanwhile (not written).
        """
        changed = {}
        with self.transaction(conn):
            for name, update in updates.items():
                rows = update.rows
                if not rows.shape[0]:
                    changed[name] = 0
                    continue
                picked = None if rows.shape[0] == len(batch.keys) else rows.tolist()

                def read(column: str, picked: list[int] | None = picked) -> Sequence[Any]:
                    values = batch.originals[column] if column != self.key else batch.keys
                    return values if picked is None else [values[i] for i in picked]

                def alternative(column: str, rows: np.ndarray = rows, read=read) -> Sequence[Any] | None:
                    """For a column of the job: its value in each row after this write."""
                    other = updates.get(column)
                    if other is None:
                        return None
                    values = np.empty(rows.shape[0], dtype=object)
                    values[:] = read(column)
                    moved = np.isin(rows, other.rows)
                    values[moved] = python_values(other.new, rows[moved], batch.text[column])
                    return values.tolist()

                row_update = RowUpdate(
                    name, read(self.key), read(name),
                    python_values(update.new, rows, batch.text[name]),
                    {i: update_values(values, rows) for i, values in update.indexes.items()},
                    {f: (read(f), alternative(f)) for f in update.fields if f != self.key})
                changed[name] = len(row_update.new) - self.update_rows(conn, kinds, row_update)
            self._checkpoint(conn, job, part, batch.last_key)
        return changed

    def update_rows(self, conn: Any, kinds: dict[str, str], update: RowUpdate) -> int:
        """Inside the batch's transaction: applies ``update`` (one statement per row); returns
        how many rows changed."""
        column, kind, p = update.column, kinds[update.column], self.placeholder
        sets = [f"{self.quote(column)} = {self.value_param(kind)}"]
        sets += [f"{self.quote(i)} = {p}" for i in update.indexes]
        checks = [self.compare(column, kind)]
        params: list[Sequence[Any]] = [update.new, *update.indexes.values(), update.keys,
                                       update.old]
        for name, (read, written) in update.fields.items():
            same = self.same(name, kinds[name])
            checks.append(same if written is None else f"({same} OR {same})")
            params += [read] if written is None else [read, written]
        return self._executemany(
            conn, f"UPDATE {self.quote(self.table)} SET {', '.join(sets)} WHERE "
                  f"{self.quote(self.key)} = {p} AND {' AND '.join(checks)}",
            list(zip(*params)))


def _check_index_field(name: str, values: Sequence[Any]) -> None:
    """A blind index hashes text, bytes and integers as the application's index does; any
    other value (a float SQLite keeps in a REAL column: 1990.0, not 1990) would hash to
    what no lookup asks for."""
    if value_kinds(values) & OTHER_VALUES:
        odd = next((v for v in values if v is not None and not isinstance(
            v, (str, bytes, bytearray, memoryview)) and type(v) is not int), None)
        if odd is not None:
            raise ColumnNotFound(f"column {name!r}, which a blind index reads, holds a "
                                 f"{type(odd).__name__}; an index reads text, binary or "
                                 "integer values")


def update_values(values: Any, rows: np.ndarray) -> list:
    """The values of an Arrow text column at ``rows``, as Python objects (blind index values:
    a few hex digits each)."""
    import pyarrow as pa

    return values.take(pa.array(rows)).to_pylist()


def _key(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _unkey(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _describe_error(exc: BaseException) -> str:
    """A driver error as text: its class and primary message (never a statement's
    parameters)."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    message = primary or (str(exc).splitlines()[0] if str(exc) else "")
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
