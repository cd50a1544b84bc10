"""Shared fixtures. The whole suite runs once per backend: CI sets ENGINE_BACKEND to
``ipsec-mb`` and then to ``openssl``; every AesGcm built without ``backend=`` follows it."""

from __future__ import annotations

import os
import uuid

import pytest

import engine

# Tests that cannot mean under the ASan runtime (make test-asan) what they mean elsewhere, by
# marker: they are left out only when that runtime is preloaded, and run everywhere else.
#  - forks_with_threads: GCC 12's AddressSanitizer runtime takes no lock around fork(), so a child
#    forked while another thread is inside the sanitizer's allocator inherits that lock held and
#    hangs at its first allocation;
#  - measures_memory: ASan's shadow memory and freed-memory quarantine raise the peak a test
#    measures, whatever the code does.
_ASAN_PRELOADED = "libasan" in os.environ.get("LD_PRELOAD", "")
_NOT_UNDER_ASAN = {
    "forks_with_threads": "GCC 12's ASan runtime can hang a child forked while other threads "
                          "allocate",
    "measures_memory": "ASan's shadow memory and quarantine change the peak memory measured",
}


# The modules whose subject is the native core's own paths (single messages, batches, tokens,
# chunks, XAES, derivations, the C-API objects, hostile calls into them): marked ``native``, so
# make test runs them on the second backend too (the whole suite runs on the first).
NATIVE_MODULES = frozenset({
    "test_aead", "test_batch", "test_cbench", "test_chunks", "test_columns_format", "test_derive",
    "test_envelope", "test_kat", "test_nonces", "test_objects", "test_properties",
    "test_robustness", "test_service", "test_stream", "test_stream_files", "test_xaes",
    "test_xaes_keys",
})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module is not None and item.module.__name__.rpartition(".")[2] in NATIVE_MODULES:
            item.add_marker(pytest.mark.native)
    if not _ASAN_PRELOADED:
        return
    for item in items:
        for marker, reason in _NOT_UNDER_ASAN.items():
            if marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A known-answer test (marker ``vectors``) never skips: its vectors travel with the
    repository, so a skip means a lost file or a broken loader, and fails the test."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.get_closest_marker("vectors") is not None:
        report.outcome = "failed"
        report.longrepr = f"known-answer test skipped: {report.longrepr}"


def pytest_report_header(config):
    info = engine.backend_info()
    return f"engine backend: {info['backend']} {info['version']} ({info['isa']}), threads={info['threads']}"


@pytest.fixture(scope="session")
def bao():
    """A real OpenBao dev server on a free loopback port, for the whole session (started only
    when a test asks for it; a missing binary fails the test, never skips it)."""
    from engine.testing.openbao import BaoNotFound, BaoServer

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
def names():
    """A fresh Transit key name and KV folder per test, so Vault tests share a server safely."""
    tag = uuid.uuid4().hex[:10]
    return {"key_name": f"k-{tag}", "kv_path": f"test/{tag}/encryption"}


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def aead(key) -> engine.AesGcm:
    return engine.AesGcm(key)
