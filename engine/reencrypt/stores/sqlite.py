"""SQLite through the standard library's ``sqlite3``, in WAL mode (readers never wait for the
job's writes, and the job's short write transactions wait for the application's).

SQLite stores any bytes in a TEXT value; ``sqlite3`` refuses to return a batch with one that
is not UTF-8 (a legacy latin-1 value), with a message that quotes it. Such a batch is read
again with each such value as :class:`~engine.reencrypt.rowkeys.UndecodableText`: in a column
of the job it is malformed (reported by key, never written), in the key column it is bound
back as TEXT.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from ..errors import StoreUnavailable, TableNotFound
from ..rowkeys import UndecodableText
from .sql import BINARY, INTEGER, TEXT, SqlStore

__all__ = ["SqliteStore"]

BUSY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class SqliteStore(SqlStore):
    """A table of an SQLite database file.

    Args:
        path: the database file (it must exist: the job never creates one).
        table: the table.
        key: its primary key column (integer or text).
        progress_table: where checkpoints are kept, in the same database.
    """

    path: str
    table: str
    key: str
    progress_table: str = "engine_reencrypt_progress"

    scheme = "sqlite"

    @property
    def display(self) -> str:
        return f"sqlite:///{self.path}"

    def connect(self, *, write: bool = False) -> Any:
        """A connection; one that writes first puts the database in WAL mode. A read-only one
        changes nothing in the file."""
        if not os.path.isfile(self.path):
            raise StoreUnavailable(f"{self.display}: no such database file")
        mode = "rw" if write else "ro"
        uri = f"file:{urllib.parse.quote(os.path.abspath(self.path))}?mode={mode}"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S,
                               check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            if write:
                conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def quote(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    @contextlib.contextmanager
    def transaction(self, conn: Any) -> Iterator[None]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def describe(self, conn: Any) -> dict[str, str]:
        rows = conn.execute("SELECT name, type FROM pragma_table_info(?)", (self.table,)).fetchall()
        if not rows:
            raise TableNotFound(f"{self.display} has no table {self.table!r}")
        return {name: _kind(declared) for name, declared in rows}

    def primary_key(self, conn: Any) -> list[str]:
        rows = conn.execute("SELECT name, pk FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk",
                            (self.table,)).fetchall()
        return [name for name, _ in rows]

    def progress_columns(self, conn: Any) -> set[str]:
        return {r[0] for r in conn.execute("SELECT name FROM pragma_table_info(?)",
                                           (self.progress_table,)).fetchall()}

    def odd_values(self, conn: Any, column: str) -> int:
        return int(conn.execute(f"SELECT COUNT(*) FROM {self.quote(self.table)} WHERE "
                                f"typeof({self.quote(column)}) = 'real'").fetchone()[0])

    def key_param(self, value: Any) -> str:
        return "CAST(? AS TEXT)" if type(value) is UndecodableText else "?"

    def fetch(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> tuple[list, bool]:
        params = [bytes(v) if type(v) is UndecodableText else v for v in params]
        try:
            return conn.execute(sql, params).fetchall(), False
        except sqlite3.OperationalError as exc:
            if not str(exc).startswith(_UNDECODABLE):
                raise
        # read again outside the handler: the error quotes the value, and must not become the
        # context of anything raised from here
        conn.text_factory = _text_or_bytes
        try:
            return conn.execute(sql, params).fetchall(), True
        finally:
            conn.text_factory = str


_UNDECODABLE = "Could not decode to UTF-8"


def _text_or_bytes(raw: bytes) -> Any:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return UndecodableText(raw)


def _kind(declared: str | None) -> str:
    """A column's kind from its declared type, by SQLite's affinity rules (section 3.1 of
    "Datatypes In SQLite"). Any column but an INTEGER one may hold text or blobs, value by
    value; the job reads each value's own type."""
    t = (declared or "").upper()
    if "INT" in t:
        return INTEGER
    if "BLOB" in t or not t:
        return BINARY
    return TEXT
