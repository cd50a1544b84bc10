"""The stores a job reads and writes: :func:`open_store` makes one from a URL."""

from __future__ import annotations

import urllib.parse

from ..errors import UnknownStore
from .base import Store
from .parquet import ParquetStore
from .postgres import PostgresStore
from .sql import Partition, SqlStore
from .sqlite import SqliteStore

__all__ = ["ParquetStore", "Partition", "PostgresStore", "SqlStore", "SqliteStore", "Store",
           "open_store"]


def open_store(url: str, table: str | None = None, key: str | None = None) -> Store:
    """A store from its URL.

    ``sqlite:///relative.db`` or ``sqlite:////absolute/path.db``;
    ``postgresql://user:password@host:port/database`` (or ``postgres://``);
    ``parquet:///absolute/dataset/`` or ``parquet://relative/dataset/`` (a directory or one
    file). SQL stores need ``table`` and
    ``key`` (its primary key column); Parquet takes neither.

    Nothing is opened yet: the job connects (and checks the table) when it runs.

    Raises:
        UnknownStore: another scheme, a URL without a path, or a table or key missing (or
            given for Parquet).
    """
    if not isinstance(url, str):
        raise UnknownStore("a store is given by its URL (sqlite:///..., postgresql://..., "
                           "parquet:///...)")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme in ("postgresql", "postgres"):
        problem = None
        try:
            parts = urllib.parse.urlsplit(url)
            host, _port = parts.hostname, parts.port
        except ValueError as exc:  # a port out of range, a broken IPv6 literal, ...
            problem = str(exc)
        if problem is not None:  # the URL itself is not shown: it may hold a password
            raise UnknownStore(f"cannot read the PostgreSQL URL: {problem}")
        if not host:
            raise UnknownStore("a PostgreSQL URL names its host: postgresql://user@host/db")
        return PostgresStore(url, *_need(table, key, "postgresql"))
    if scheme == "sqlite" and sep and rest.startswith("/") and len(rest) > 1:
        return SqliteStore(rest[1:], *_need(table, key, "sqlite"))
    if scheme == "parquet" and sep and rest.strip("/"):
        if table is not None or key is not None:
            raise UnknownStore("a Parquet dataset has no table or key: each file is one unit")
        return ParquetStore(rest)
    raise UnknownStore(f"unknown store URL {_redacted(url)!r}: use sqlite:///path.db, "
                       "postgresql://user:password@host/database or parquet:///path/")


def _need(table: str | None, key: str | None, scheme: str) -> tuple[str, str]:
    if not table or not key:
        raise UnknownStore(f"a {scheme} store needs a table and its primary key column "
                           "(--table, --key)")
    return table, key


def _redacted(url: str) -> str:
    """``url`` without a password."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unreadable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
