"""The store protocol (engine.reencrypt.stores.base.Store): every store implements it, and the
job reaches a store only through it."""

from __future__ import annotations

import ast
import pathlib

import pytest

from engine.reencrypt import open_store
from engine.reencrypt.stores import ParquetStore, PostgresStore, SqliteStore, Store

ENGINE = pathlib.Path(__file__).resolve().parents[1] / "engine"
STORE_CLASSES = {"ParquetStore", "PostgresStore", "SqliteStore", "SqlStore"}


@pytest.mark.parametrize("url, kwargs, cls", [
    ("sqlite:///crm.db", {"table": "users", "key": "id"}, SqliteStore),
    ("postgresql://app@db/crm", {"table": "users", "key": "id"}, PostgresStore),
    ("parquet:///data/users/", {}, ParquetStore),
])
def test_every_store_implements_the_protocol(url, kwargs, cls):
    store = open_store(url, **kwargs)
    assert type(store) is cls and isinstance(store, Store)
    assert isinstance(store.writes_whole_partitions, bool)


def test_a_store_class_is_named_only_in_the_stores_package():
    """No module outside engine/reencrypt/stores/ switches on a store's class (an isinstance
    or an import of a concrete store); the package's public face re-exports them."""
    offenders = []
    for path in ENGINE.rglob("*.py"):
        rel = path.relative_to(ENGINE).as_posix()
        if rel.startswith("reencrypt/stores/") or rel == "reencrypt/__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.Name):
                names = [node.id]
            offenders += [f"{rel}:{node.lineno} {n}" for n in names if n in STORE_CLASSES]
    assert offenders == []


def test_a_store_that_is_not_a_store_is_refused():
    from engine.errors import InvalidArgumentType
    from engine.reencrypt import inventory

    with pytest.raises(InvalidArgumentType, match="open_store"):
        inventory(object(), ["ssn"])
