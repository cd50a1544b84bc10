"""PostgreSQL through psycopg 3: text, varchar, bytea, json and jsonb columns.

jsonb values are read as their text (PostgreSQL's normalised form) and written back with
``::jsonb``; the optimistic check compares jsonb values as jsonb (json, which has no equality
operator, as text).

A database of encoding SQL_ASCII stores any bytes in a text value, and psycopg returns its text
as bytes; the job reads it as UTF-8 where it is, and as
:class:`~engine.reencrypt.rowkeys.UndecodableText` where it is not (as for SQLite).
"""

from __future__ import annotations

import contextlib
import urllib.parse
from dataclasses import dataclass
from typing import Any, Iterator

from ..errors import StoreUnavailable, TableNotFound
from ..rowkeys import UndecodableText
from .sql import BINARY, INTEGER, JSON_TEXT, JSONB, OTHER, TEXT, RowUpdate, SqlStore

__all__ = ["PostgresStore"]

CONNECT_TIMEOUT_S = 10
_KINDS = {
    "text": TEXT, "character varying": TEXT, "name": OTHER, "bytea": BINARY,
    "json": JSON_TEXT, "jsonb": JSONB, "smallint": INTEGER, "integer": INTEGER, "bigint": INTEGER,
}


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise StoreUnavailable("PostgreSQL needs psycopg 3: pip install 'psycopg[binary]' "
                               "(the engine's `postgres` extra)") from None
    return psycopg


@dataclass(frozen=True)
class PostgresStore(SqlStore):
    """A table of a PostgreSQL database.

    Args:
        url: ``postgresql://user:password@host:port/database`` (libpq's URL form).
        table: the table, optionally ``schema.table``; names are taken as written (quoted).
        key: its primary key column (integer or text).
        progress_table: where checkpoints are kept, in the same schema as ``table``.
    """

    url: str
    table: str
    key: str
    progress_table: str = "engine_reencrypt_progress"

    scheme = "postgresql"
    placeholder = "%s"

    def __repr__(self) -> str:
        return f"PostgresStore({self.display!r}, table={self.table!r}, key={self.key!r})"

    @property
    def display(self) -> str:
        try:
            parts = urllib.parse.urlsplit(self.url)
            host = parts.hostname or ""
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            return "postgresql://<unreadable URL>"
        user = f"{parts.username}@" if parts.username else ""
        host = f"[{host}]" if ":" in host else host
        return f"postgresql://{user}{host}{port}{parts.path}"

    def connect(self, *, write: bool = False) -> Any:
        psycopg = _psycopg()
        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        if _sql_ascii(conn):
            _read_text_as_utf8(conn)
        return conn

    def fetch(self, conn: Any, sql: str, params: Any = ()) -> tuple[list, bool]:
        return conn.execute(sql, params).fetchall(), _sql_ascii(conn)

    def errors(self) -> tuple[type[BaseException], ...]:
        return (_psycopg().Error,)

    def quote(self, name: str) -> str:
        return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))

    def progress_name(self) -> str:
        schema = self.table.rpartition(".")[0]
        return self.quote(f"{schema}.{self.progress_table}" if schema else self.progress_table)

    @contextlib.contextmanager
    def transaction(self, conn: Any) -> Iterator[None]:
        """BEGIN ... COMMIT; on any error a ROLLBACK where one can be sent, else (Ctrl-C
        landed while a command was under way, the connection is lost) the connection is
        closed, which rolls the transaction back on the server (psycopg's own transaction
        block would log that its rollback failed)."""
        psycopg = _psycopg()
        conn.execute("BEGIN")
        try:
            yield
        except BaseException:
            idle = (psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR)
            closed = conn.closed or conn.pgconn.transaction_status not in idle
            if not closed:
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error:
                    closed = True
            if closed:
                conn.close()
            raise
        conn.execute("COMMIT")

    def describe(self, conn: Any) -> dict[str, str]:
        rows = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, NULL) FROM pg_attribute a"
            " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
            (self.quote(self.table),)).fetchall()
        if not rows:
            raise TableNotFound(f"{self.display} has no table {self.table!r}")
        return {name: _KINDS.get(t, OTHER) for name, t in rows}

    def primary_key(self, conn: Any) -> list[str]:
        rows = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
            " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) AND i.indisprimary",
            (self.quote(self.table),)).fetchall()
        return [r[0] for r in rows]

    def progress_columns(self, conn: Any) -> set[str]:
        return {r[0] for r in conn.execute(
            "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = to_regclass(%s)"
            " AND a.attnum > 0 AND NOT a.attisdropped", (self.progress_name(),)).fetchall()}

    def update_rows(self, conn: Any, kinds: dict[str, str], update: RowUpdate) -> int:
        """The batch goes to a temporary table by COPY (psycopg packs the rows in C), then one
        ``UPDATE ... FROM`` applies it with the same optimistic check: several times faster
        than a statement per row, whose cost here is psycopg's Python per statement. The join
        is bounded by the batch's first and last key (a batch is in the database's key order,
        which for text is the column's collation, not Python's: never ``min``/``max``), so
        the table is reached through its primary key's index, never scanned whole."""
        column, keys = update.column, update.keys
        q = self.quote
        # the staging table's columns: (name there, the table's column it copies, values)
        staged = [("k", self.key, keys), ("old", column, update.old), ("new", column, update.new)]
        staged += [(f"i{n}", name, values) for n, (name, values) in
                   enumerate(update.indexes.items())]
        sets = [f"{q(column)} = s.new"] + [f"{q(name)} = s.i{n}" for n, name in
                                           enumerate(update.indexes)]
        match = "t.{c}::text = s.old::text" if kinds[column] == JSON_TEXT else "t.{c} = s.old"
        checks = [match.format(c=q(column))]
        for n, (name, (read, written)) in enumerate(update.fields.items()):
            staged.append((f"f{n}", name, read))
            same = ("t.{c}::text IS NOT DISTINCT FROM s.{s}::text" if kinds[name] == JSON_TEXT
                    else "t.{c} IS NOT DISTINCT FROM s.{s}")
            checks.append(same.format(c=q(name), s=f"f{n}"))
            if written is not None:
                staged.append((f"w{n}", name, written))
                checks[-1] = f"({checks[-1]} OR {same.format(c=q(name), s=f'w{n}')})"
        staging = q(f"engine_reencrypt_{column}")
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                              (f"pg_temp.{staging}",)).fetchone()[0]
        if not exists:
            conn.execute(f"CREATE TEMPORARY TABLE {staging} ON COMMIT DELETE ROWS AS SELECT "
                         + ", ".join(f"{q(source)} AS {name}" for name, source, _ in staged)
                         + f" FROM {q(self.table)} WITH NO DATA")
        names = ", ".join(name for name, _, _ in staged)
        with conn.cursor().copy(f"COPY {staging} ({names}) FROM STDIN") as copy:
            for row in zip(*(values for _, _, values in staged)):
                copy.write_row(row)
        k = q(self.key)
        return conn.execute(
            f"UPDATE {q(self.table)} AS t SET {', '.join(sets)} FROM {staging} AS s"
            f" WHERE t.{k} = s.k AND t.{k} BETWEEN %s AND %s AND " + " AND ".join(checks),
            (keys[0], keys[-1])).rowcount

    def read_expression(self, column: str, kind: str) -> str:
        if kind in (JSON_TEXT, JSONB):
            return f"{self.quote(column)}::text"
        return self.quote(column)

    def value_param(self, kind: str) -> str:
        return {JSON_TEXT: "%s::json", JSONB: "%s::jsonb"}.get(kind, "%s")

    def compare(self, column: str, kind: str) -> str:
        if kind == JSON_TEXT:
            return f"{self.quote(column)}::text = %s"
        return f"{self.quote(column)} = {self.value_param(kind)}"

    def same(self, column: str, kind: str) -> str:
        if kind == JSON_TEXT:
            return f"{self.quote(column)}::text IS NOT DISTINCT FROM %s"
        return f"{self.quote(column)} IS NOT DISTINCT FROM {self.value_param(kind)}"


def _sql_ascii(conn: Any) -> bool:
    return bool(conn.info.encoding == "ascii")


def _read_text_as_utf8(conn: Any) -> None:
    """On a connection to a SQL_ASCII database: text is read as UTF-8, or as
    :class:`UndecodableText` where it is not, and such a value is written back as the same
    bytes of text (never as bytea)."""
    from psycopg.adapt import Dumper, Loader

    class TextLoader(Loader):
        def load(self, data: Any) -> Any:
            raw = bytes(data)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return UndecodableText(raw)

    class RawTextDumper(Dumper):
        oid = conn.adapters.types["text"].oid

        def dump(self, obj: Any) -> bytes:
            return bytes(obj)

    for name in ("text", "varchar", "bpchar", "name", '"char"'):
        conn.adapters.register_loader(name, TextLoader)
    conn.adapters.register_loader(0, TextLoader)  # unknown: a literal's type
    conn.adapters.register_dumper(UndecodableText, RawTextDumper)
