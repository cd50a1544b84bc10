"""What SQLite and PostgreSQL share: keyset pagination by primary key, the batch write with its
optimistic check, and checkpoints kept in a table of the store itself.

A batch is read with ``WHERE key > <last key> [AND key <= <partition end>] ORDER BY key LIMIT
<n>`` (never OFFSET). Its re-encrypted values are written in one transaction, each with
``UPDATE t SET col = <new> WHERE key = <key> AND col = <value read>``, so a value the
application changed in between is left alone (counted as ``changed``, for the next pass); the
same transaction moves the partition's checkpoint to the batch's last key and records what the
partition has found so far (counts, and the values that failed, by key). A job killed at any
moment resumes after the last committed batch, reports what every run found, and a value
already under the target version is skipped anyway.

Each run of a job marks the job's checkpoints as its own (``run``), and a batch commits only
while they still are: when a second run of the same job starts (a scheduled run overlapping a
manual one), the first stops at its next batch with :class:`JobTakenOver`, and the two never
write each other's checkpoints.

A key is given back to the database exactly as it was read (see
:mod:`engine.reencrypt.rowkeys`); a row whose key is NULL is never read (a job refuses such a
table, see :meth:`SqlStore.check_keys`): ``key > NULL`` is never true, and a batch of NULL keys
would be read again and again.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping, Sequence, cast

import numpy as np

from ...batch import Batch
from ...codecs import batch_to_text
from ...records import BYTES_VALUES, NONE_VALUES, OTHER_VALUES, STR_VALUES, value_kinds
from ..errors import ColumnNotFound, JobTakenOver, StoreUnavailable
from ..report import PartitionResult
from ..rowkeys import UndecodableText, decode_key, encode_key
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
    committed in it, ``earlier`` what the earlier runs found up to there (a
    :class:`PartitionResult`, or None), and ``finished`` whether they finished it; ``run``
    names the run that owns the checkpoints. For Parquet, ``file`` names the one file the
    partition is."""

    index: int
    low: Any = None
    high: Any = None
    done: Any = None
    file: str | None = None
    earlier: PartitionResult | None = None
    finished: bool = False
    run: str | None = None


@dataclass
class ReadBatch:
    """One batch as read: the keys, an Arrow record batch (key and every column read), and
    the values as the driver returned them (the optimistic check compares against these)."""

    keys: Sequence[Any]
    table: Any
    originals: Mapping[str, Sequence[Any]]
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


def arrow_values(values: Sequence[Any], undecodable: bool = False) -> tuple[Any, Any]:
    """(an Arrow column, which values are text) from values a driver returned: str, bytes or
    None; anything else (a number where a ciphertext should be) becomes its text, which no
    parser takes for a ciphertext. With ``undecodable`` (the driver returned some text as
    :class:`~engine.reencrypt.rowkeys.UndecodableText`), such text becomes an empty value:
    malformed, never opened as a binary token, never written."""
    import pyarrow as pa

    if undecodable:
        values = [b"" if type(v) is UndecodableText else v for v in values]
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


def aad_values(values: Sequence[Any]) -> Any:
    """An Arrow column of values an AAD rule reads, from values a driver returned: integers
    and text as they are, anything else (a real, a blob, text of several types across rows,
    as SQLite allows) as ``str(value)``, which is what ``str.format`` puts in a template. A
    row whose AAD is not the application's fails authentication and is reported; a batch is
    never refused for it."""
    import pyarrow as pa

    kinds = value_kinds(values)
    if not kinds & ~(STR_VALUES | NONE_VALUES):
        return pa.array(values, pa.large_string())
    if not kinds & ~(OTHER_VALUES | NONE_VALUES):  # integers? (Arrow tells them apart)
        try:
            found = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            found = None
        if found is not None and pa.types.is_integer(found.type):
            return found
    return pa.array([None if v is None else str(v) for v in values], pa.large_string())


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
    out = cast("list[bytes | str]", batch.to_list())  # str put in place of some below
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
    writes_whole_partitions = False  # batches commit one by one, with the job's checkpoint

    # ---- the job's calls (engine.reencrypt.stores.base.Store) ----

    def prepare(self, columns: Sequence[Column], *, check_only: bool, sample_rows: int
                ) -> tuple[int, Any]:
        with self.session() as conn:
            kinds = self.check(conn, columns)
            self.check_keys(conn)
            if not check_only:
                self.check_fields(conn, columns)
            rows = self.count(conn)
            sample = next(self.scan(conn, Partition(0), columns, kinds, sample_rows), None)
        return rows, (sample.table if sample is not None else None)

    def job_partitions(self, job: str, count: int, *, persist: bool) -> list[Partition]:
        with self.session(write=persist) as conn:
            return self.plan(conn, job, count) if persist else self.split(conn, count)

    def partition_done(self, job: str, part: Partition, result: PartitionResult) -> None:
        """Nothing to add: each batch's transaction moved the partition's checkpoint."""

    def release_job(self, job: str, run: str) -> None:
        with self.session(write=True) as conn:
            self.release(conn, job, run)

    def job_results(self, job: str, max_failures: int) -> PartitionResult | None:
        with self.session() as conn:
            return self.results(conn, job, max_failures)

    def forget_job(self, job: str) -> None:
        with self.session(write=True) as conn:
            self.forget(conn, job)

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
                " finished INTEGER NOT NULL DEFAULT 0, result TEXT, run TEXT,"
                " PRIMARY KEY (job, part))")

    def progress_columns(self, conn: Any) -> set[str]:
        """The columns the checkpoint table has (one made by an earlier release lacks
        ``result`` and ``run``)."""
        raise NotImplementedError

    def key_param(self, value: Any) -> str:
        """The placeholder that gives ``value``, a key as the driver returned it, back to the
        database with its own type."""
        return self.placeholder

    def fetch(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> tuple[list, bool]:
        """(the rows of a query, whether some text came back as
        :class:`~engine.reencrypt.rowkeys.UndecodableText`)."""
        return conn.execute(sql, params).fetchall(), False

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
            if column.name == self.key:
                raise ColumnNotFound(f"column {column.name!r} is the table's key: the job "
                                     "reaches rows by it and never rewrites it")
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

    def check_keys(self, conn: Any) -> None:
        """Refuses a table with a NULL key (SQLite allows NULL in a primary key that is not an
        INTEGER PRIMARY KEY): keyset pagination cannot pass such a row (``key > NULL`` is
        never true) and an update cannot reach it (nor is ``key = NULL``).

        Raises:
            ColumnNotFound: naming the key column and how many rows.
        """
        k, t = self.quote(self.key), self.quote(self.table)
        nulls = int(conn.execute(f"SELECT COUNT(*) FROM {t} WHERE {k} IS NULL").fetchone()[0])
        if nulls:
            raise ColumnNotFound(f"the key {self.key!r} of {self.table!r} is NULL in {nulls:,} "
                                 "row(s): a job reaches rows by their key; give those rows one "
                                 "(and declare the column NOT NULL)")

    def check_fields(self, conn: Any, columns: Sequence[Column]) -> None:
        """Refuses, before anything is written, a plain column a blind index reads that holds
        a value of another type than text, binary or integer in some row (SQLite keeps a type
        per value: a REAL where the application wrote integers): met in a batch, it would stop
        the job there at every run.

        Raises:
            ColumnNotFound: naming the column.
        """
        for name in row_fields(columns):
            odd = self.odd_values(conn, name)
            if odd:
                raise ColumnNotFound(f"column {name!r}, which a blind index reads, holds "
                                     f"{odd:,} value(s) that are not text, binary or an "
                                     "integer (a real?); an index reads those only")

    def odd_values(self, conn: Any, column: str) -> int:
        """Rows whose ``column`` holds a value that is not text, binary, an integer or NULL
        (none where the database types columns)."""
        return 0

    def count(self, conn: Any) -> int:
        return int(conn.execute(f"SELECT COUNT(*) FROM {self.quote(self.table)}").fetchone()[0])

    def split(self, conn: Any, count: int) -> list[Partition]:
        """``count`` partitions of about equal size, recorded nowhere (for a read-only job)."""
        bounds = self._bounds(conn, count)
        return [Partition(i, lo, hi) for i, (lo, hi) in enumerate(zip([None] + bounds,
                                                                     bounds + [None]))]

    def plan(self, conn: Any, job: str, count: int) -> list[Partition]:
        """The job's partitions: those an earlier run recorded (with how far it got and what
        it found, finished ones too), or ``count`` new ones of about equal size, recorded
        now; either way owned by a new run from now on."""
        run = uuid.uuid4().hex
        with self.transaction(conn):
            self._progress_table(conn)
            p = self.placeholder
            rows = conn.execute(f"SELECT part, low, high, done, finished, result FROM "
                                f"{self.progress_name()} WHERE job = {p} ORDER BY part",
                                (job,)).fetchall()
            parts = _resumable(rows, run)
            if parts is not None:
                conn.execute(f"UPDATE {self.progress_name()} SET run = {p} WHERE job = {p}",
                             (run, job))
                return parts
            if rows:  # the job is complete (or not resumable): a new pass starts
                conn.execute(f"DELETE FROM {self.progress_name()} WHERE job = {p}", (job,))
            parts = [replace(part, run=run) for part in self.split(conn, count)]
            self._executemany(
                conn, f"INSERT INTO {self.progress_name()} (job, part, low, high, run) "
                      f"VALUES ({p}, {p}, {p}, {p}, {p})",
                [(job, part.index, encode_key(part.low), encode_key(part.high), run)
                 for part in parts])
        return parts

    def release(self, conn: Any, job: str, run: str) -> None:
        """Gives up ``run``'s hold on the job's checkpoints: a partition of it still running
        elsewhere (a Dask task, which cancelling does not stop) stops at its next batch
        without writing it."""
        p = self.placeholder
        with self.transaction(conn):
            conn.execute(f"UPDATE {self.progress_name()} SET run = NULL WHERE job = {p} AND "
                         f"run = {p}", (job, run))

    def resume_point(self, conn: Any, job: str, part: Partition) -> Partition:
        """``part`` as its checkpoint stands now (a partition run again, as Dask runs a task
        whose worker died, starts where the last attempt committed, not where the plan said).

        Raises:
            JobTakenOver: another run of the job owns its checkpoints now.
        """
        p = self.placeholder
        row = conn.execute(f"SELECT done, finished, result, run FROM {self.progress_name()}"
                           f" WHERE job = {p} AND part = {p}", (job, part.index)).fetchone()
        if row is None or row[3] != part.run:
            raise JobTakenOver(f"{self.display}: another run of the job {job!r} has taken "
                               "over its checkpoints; this one stops")
        done, finished, result, _run = row
        return replace(part, done=decode_key(done), finished=bool(finished),
                       earlier=None if result is None else PartitionResult.from_json(result))

    def _progress_table(self, conn: Any) -> None:
        conn.execute(self.progress_ddl())
        have = self.progress_columns(conn)
        for name in ("result", "run"):  # a table made by an earlier release lacks them
            if name not in have:
                conn.execute(f"ALTER TABLE {self.progress_name()} ADD COLUMN {name} TEXT")

    def results(self, conn: Any, job: str, max_failures: int) -> PartitionResult | None:
        """What every run of ``job`` committed, from its checkpoints (None: it has none);
        ``complete`` when every partition is finished."""
        p = self.placeholder
        rows = conn.execute(f"SELECT finished, result FROM {self.progress_name()} WHERE job = "
                            f"{p} ORDER BY part", (job,)).fetchall()
        if not rows:
            return None
        total = PartitionResult()
        for finished, result in rows:
            if result is not None:
                total.merge(PartitionResult.from_json(result), max_failures)
            total.complete = total.complete and bool(finished)
        return total

    def _bounds(self, conn: Any, count: int) -> list[Any]:
        """``count - 1`` keys that split the table into about equal ranges (one scan of the
        key's index, in the database)."""
        if count <= 1:
            return []
        k, t = self.quote(self.key), self.quote(self.table)
        rows, _ = self.fetch(
            conn, f"SELECT MAX({k}) FROM (SELECT {k}, NTILE({int(count)}) OVER (ORDER BY {k})"
                  f" AS tile FROM {t} WHERE {k} IS NOT NULL) AS tiles GROUP BY tile ORDER BY 1")
        return [r[0] for r in rows[:-1]]

    def forget(self, conn: Any, job: str) -> None:
        """Removes a finished job's checkpoints (a later run makes a new pass)."""
        with self.transaction(conn):
            conn.execute(f"DELETE FROM {self.progress_name()} WHERE job = "
                         f"{self.placeholder}", (job,))

    def finish(self, conn: Any, job: str, part: Partition, result: str | None) -> None:
        """Marks ``part`` finished, with what every run found in it (``result``).

        Raises:
            JobTakenOver: another run of the job owns its checkpoints now.
        """
        p = self.placeholder
        with self.transaction(conn):
            self._owned(conn.execute(
                f"UPDATE {self.progress_name()} SET finished = 1, result = {p}"
                f" WHERE job = {p} AND part = {p} AND run = {p}",
                (result, job, part.index, part.run)), job)

    def _checkpoint(self, conn: Any, job: str, part: Partition, done: Any,
                    result: str | None) -> None:
        p = self.placeholder
        self._owned(conn.execute(
            f"UPDATE {self.progress_name()} SET done = {p}, result = {p}"
            f" WHERE job = {p} AND part = {p} AND run = {p}",
            (encode_key(done), result, job, part.index, part.run)), job)

    def _owned(self, cursor: Any, job: str) -> None:
        """Inside the batch's transaction: raises (and so rolls it back) unless the
        checkpoint just moved was this run's."""
        if cursor.rowcount != 1:
            raise JobTakenOver(f"{self.display}: another run of the job {job!r} has taken "
                               "over its checkpoints; this one stops (its last batch was not "
                               "written)")

    def scan(self, conn: Any, part: Partition, columns: Sequence[Column], kinds: dict[str, str],
             batch_size: int) -> Iterator[ReadBatch]:
        """The partition's rows in key order, ``batch_size`` at a time, from where an earlier
        run left off.

        Raises:
            StoreUnavailable: the key order does not advance (a key the database compares
                otherwise than it returned it).
        """
        import pyarrow as pa

        fields = row_fields(columns)
        stored_indexes = {d.name for c in columns for d in c.indexes}  # read to check them
        names = [self.key] + sorted({n for c in columns for n in c.read_columns()}
                                    .union(fields, stored_indexes) - {self.key})
        aad_columns = {n for c in columns for n in c.aad.columns()}
        aad_only = aad_columns - {n for c in columns for n in c.stored_columns()} - set(fields)
        exprs = ", ".join(self.read_expression(n, kinds[n]) for n in names)
        k = self.quote(self.key)
        after = part.done if part.done is not None else part.low
        base = f"SELECT {exprs} FROM {self.quote(self.table)} WHERE {k} IS NOT NULL"
        while True:
            where, params = [base], []
            if after is not None:
                where.append(f"{k} > {self.key_param(after)}")
                params.append(after)
            if part.high is not None:
                where.append(f"{k} <= {self.key_param(part.high)}")
                params.append(part.high)
            rows, undecodable = self.fetch(
                conn, " AND ".join(where) + f" ORDER BY {k} LIMIT {int(batch_size)}", params)
            if not rows:
                return
            data = list(zip(*rows))
            arrays, originals, text = {}, {}, {}
            for name, values in zip(names, data):
                if name == self.key:
                    if name in aad_columns or name in fields:
                        arrays[name] = aad_values(values)
                    continue
                if name in aad_only:
                    arrays[name] = aad_values(values)
                    continue
                if name in fields:
                    _check_index_field(name, values)
                arrays[name], text[name] = arrow_values(values, undecodable)
                originals[name] = values
            yield ReadBatch(data[0], pa.RecordBatch.from_pydict(arrays), originals, text)
            if after is not None and rows[-1][0] == after:
                raise StoreUnavailable(f"{self.display}: the key {self.key!r} does not advance "
                                       "past a value; the job stops rather than read it again")
            after = rows[-1][0]

    def write(self, conn: Any, batch: ReadBatch, updates: dict[str, ColumnWrite],
              kinds: dict[str, str], job: str, part: Partition,
              result: Callable[[dict[str, int]], str] | None = None) -> dict[str, int]:
        """Writes, in one transaction, the new values at the given rows of each column with
        their blind index values (each row only where the column, and every other column its
        indexes read, still holds what was read) and the checkpoint, with what the partition
        has found so far: ``result(changed)``, given what this returns.

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
            self._checkpoint(conn, job, part, batch.last_key,
                             None if result is None else result(changed))
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
        rows = list(zip(*params))
        # one statement per placeholder its key needs (text that is not UTF-8 is cast back)
        groups: dict[str, list] = {}
        at = 1 + len(update.indexes)  # where the key is in a row's parameters
        if value_kinds(update.keys) & BYTES_VALUES:
            for row in rows:
                groups.setdefault(self.key_param(row[at]), []).append(row)
        else:
            groups[p] = rows
        return sum(self._executemany(
            conn, f"UPDATE {self.quote(self.table)} SET {', '.join(sets)} WHERE "
                  f"{self.quote(self.key)} = {key} AND {' AND '.join(checks)}", group)
            for key, group in groups.items())


def _resumable(rows: Sequence[Any], run: str) -> list[Partition] | None:
    """The partitions of a job's checkpoint rows ``(part, low, high, done, finished,
    result)``, for ``run`` to resume; None when there is nothing to resume: every partition
    finished, or some partition got somewhere without keeping what it found (an earlier
    release's checkpoints) or kept it unreadably. A new pass then finds it all again."""
    if not rows or all(r[4] for r in rows):
        return None
    parts = []
    for i, lo, hi, done, finished, result in rows:
        if result is None and (done is not None or finished):
            return None
        try:
            parts.append(Partition(int(i), decode_key(lo), decode_key(hi), decode_key(done),
                                   earlier=None if result is None else
                                   PartitionResult.from_json(result),
                                   finished=bool(finished), run=run))
        except (ValueError, KeyError, TypeError):
            return None
    return parts


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


def _describe_error(exc: BaseException) -> str:
    """A driver error as text: its class and primary message, never a statement's parameters
    nor a stored value. Messages that quote one are cut before it: PostgreSQL's data
    exceptions (SQLSTATE class 22: ``invalid input syntax for type integer: "..."``,
    ``invalid byte sequence for encoding "UTF8": 0x..``) and sqlite3's ``Could not decode to
    UTF-8 column 'c' with text '...'``."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    message = primary or (str(exc).splitlines()[0] if str(exc) else "")
    if str(getattr(exc, "sqlstate", None) or "").startswith("22"):
        message = message.partition(":")[0]
    message = message.partition(" with text ")[0]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
