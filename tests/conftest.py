"""Shared fixtures. The whole suite runs once per backend: CI sets ENGINE_BACKEND to
``ipsec-mb`` and then to ``openssl``; every AesGcm built without ``backend=`` follows it."""

from __future__ import annotations

import os

import pytest

import engine


def pytest_report_header(config):
    info = engine.backend_info()
    return f"engine backend: {info['backend']} {info['version']} ({info['isa']}), threads={info['threads']}"


@pytest.fixture(scope="session")
def bao():
    """A real OpenBao dev server on a free loopback port, for the whole session (started only
    when a test asks for it; a missing binary fails the test, never skips it)."""
    from openbao import BaoNotFound, BaoServer

    try:
        server = BaoServer().start()
    except BaoNotFound as exc:
        pytest.fail(f"OpenBao is required for the Vault tests: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server (Debian's binaries, run by engine.testing.postgres) in a
    temporary directory on a free loopback port, for the whole session. Durability settings
    are off: the tests kill clients, never the server. A missing binary fails the test."""
    from engine.testing.postgres import PostgresNotFound, PostgresServer

    try:
        server = PostgresServer({"fsync": "off", "synchronous_commit": "off",
                                 "full_page_writes": "off"}).start()
    except PostgresNotFound as exc:
        pytest.fail(f"PostgreSQL is required for these tests: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def aead(key) -> engine.AesGcm:
    return engine.AesGcm(key)
