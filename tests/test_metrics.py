"""Prometheus metrics, scraped over loopback from a real exporter: one prefix and the seed's
names as aliases, every refused input counted once by a fixed kind, and the key facts true in
every process that holds a key."""

from __future__ import annotations

import datetime
import io
import os
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import engine
from engine import EncryptionService, FieldEncryption, StaticKeyProvider, metrics, tables, tls
from engine.errors import ERROR_TYPES
from engine.keys.base import GCM_RANDOM_IV_LIMIT
from engine.metrics import SEED_ALIASES, EngineMetrics, PushFailed
from engine.refusals import error_type_of
from engine.stream import FileEncryption, NotAnEngineFile

K1, K2, K3 = os.urandom(32), os.urandom(32), os.urandom(32)


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def private() -> EngineMetrics:
    return EngineMetrics(CollectorRegistry(), key_refresh_seconds=0)


def test_exporter_serves_the_engine_metrics(tmp_path):
    m = private()
    port = m.serve(0)
    try:
        m.encrypted(1_000_000)
        m.encrypted(5)
        m.decrypted(7)
        m.error("invalid_tag", 2)
        m.rotation_succeeded(1_700_000_000.0)
        m.set_versions_active(3)
        ca = tls.CertificateAuthority.create(tmp_path / "ca", passphrase="pw")
        cert, _ = ca.issue("svc.internal", dns_names=["svc.internal"])
        seconds = m.observe_certificate(cert)
        assert 364 * 86400 < seconds <= 365 * 86400
        got = scrape(port)
    finally:
        m.stop()
    subject = tls.certificate_subject(cert)
    for prefix in ("engine_", ""):  # the engine's names and the seed's, the same values
        assert got[(f"{prefix}encryption_operations_total", (("type", "encrypt"),))] == 1_000_005
        assert got[(f"{prefix}encryption_operations_total", (("type", "decrypt"),))] == 7
        assert got[(f"{prefix}encryption_errors_total", (("error_type", "invalid_tag"),))] == 2
        assert got[(f"{prefix}key_versions_active", ())] == 3
        assert abs(got[(f"{prefix}certificate_expiry_seconds", (("subject", subject),))]
                   - seconds) < 5
    assert got[("engine_key_rotation_last_success_timestamp_seconds", ())] == 1_700_000_000.0
    assert got[("key_rotation_last_success_timestamp", ())] == 1_700_000_000.0
    # every kind is exported from zero, so that rate() sees the first failure
    assert {dict(labels)["error_type"] for name, labels in got
            if name == "engine_encryption_errors_total"} == set(ERROR_TYPES)


VAULT_NODES = ("https://vault-0:8200", "https://vault-1:8200")


@pytest.fixture
def a_vault(monkeypatch):
    """Makes this process hold one Vault connection, up or not (what engine.vault.nodes reports
    for each open connection; the real routers are scraped in test_vault_ha.py)."""
    from engine.vault import nodes

    def install(up: bool) -> None:
        class Router:
            def status(self):
                return nodes.RouterStatus(VAULT_NODES, up, 2, time.monotonic())

            def probe(self):
                return up

        router = Router()
        monkeypatch.setattr(nodes, "live_routers", lambda: [router])

    return install


def test_every_name_has_the_prefix_or_is_a_seed_alias(a_vault):
    m = private()
    m.reencryption_progress(1, 2, 3, 4)
    a_vault(True)
    m.job_finished(0, 1.5)
    m.watch_keys(StaticKeyProvider({1: K1}))
    families = list(m.collect())
    aliases = set(SEED_ALIASES.values())
    names = {f.name for f in families}
    assert {n for n in names if not n.startswith("engine_")} == aliases
    assert len(names) >= 20
    quiet = EngineMetrics(CollectorRegistry(), seed_names=False)
    assert all(f.name.startswith("engine_") for f in quiet.collect())
    assert {f.name for f in quiet.describe()} == {f.name for f in private().describe()} - aliases


def test_two_engine_metrics_in_one_registry_are_refused():
    registry = CollectorRegistry()
    EngineMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        EngineMetrics(registry)


def test_expired_certificate_is_negative(tmp_path):
    m = private()
    ca = tls.CertificateAuthority.create(tmp_path / "ca", passphrase="pw")
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=400)
    cert, _ = ca.issue("old.internal", now=past)
    assert m.observe_certificate(cert) < 0


def test_certificate_expiry_counts_down_between_scrapes(tmp_path):
    """A long-running exporter's certificate gauge moves with time (it used to be frozen at the
    moment it was observed); the absolute notAfter is exported for alerts and pushes."""
    m = private()
    ca = tls.CertificateAuthority.create(tmp_path / "ca", passphrase="pw")
    cert, _ = ca.issue("svc.internal")
    m.observe_certificate(cert)
    registry = m.registry
    first = registry.get_sample_value("engine_certificate_expiry_seconds",
                                      {"subject": tls.certificate_subject(cert)})
    time.sleep(1.2)
    second = registry.get_sample_value("engine_certificate_expiry_seconds",
                                       {"subject": tls.certificate_subject(cert)})
    assert 1.0 < first - second < 3.0
    not_after = registry.get_sample_value("engine_certificate_not_after_timestamp_seconds",
                                          {"subject": tls.certificate_subject(cert)})
    assert abs(not_after - (time.time() + second)) < 3


def test_process_wide_metrics_are_one_object():
    assert metrics.get_metrics() is metrics.get_metrics()


# ---- key facts: true in every process that holds a key

def test_key_facts_come_from_the_provider_not_from_a_rotation_in_this_process():
    m = private()
    provider = StaticKeyProvider({1: K1, 2: K2, 3: K3}, states={1: "deprecated"})
    EncryptionService(provider, metrics=m).encrypt_many(["a"] * 10)
    sample = m.registry.get_sample_value
    assert sample("engine_key_versions_active") == 2 == sample("key_versions_active")
    assert sample("engine_key_current_version") == 3
    assert sample("engine_key_current_usage_encryptions") >= 10  # a lease is reserved
    assert sample("engine_key_current_usage_limit") == GCM_RANDOM_IV_LIMIT
    created = provider.list_versions()[-1].created_at.timestamp()
    assert sample("engine_key_rotation_last_success_timestamp_seconds") == created
    provider.create_version()
    assert sample("engine_key_versions_active") == 3 and sample("engine_key_current_version") == 4


def test_xaes_versions_have_no_usage_limit():
    m = private()
    EncryptionService(StaticKeyProvider({1: K1}, algorithm="xaes-256-gcm"), metrics=m)
    assert m.registry.get_sample_value("engine_key_current_usage_limit") is None
    assert m.registry.get_sample_value("engine_key_current_usage_encryptions") == 0


class _HangingProvider(StaticKeyProvider):
    """A provider whose listing hangs until released (Vault that stopped answering)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.release = threading.Event()

    def list_versions(self):
        self.release.wait(30)
        return super().list_versions()


def test_a_hanging_provider_delays_no_scrape(a_vault):
    m = EngineMetrics(CollectorRegistry(), key_refresh_seconds=0)
    provider = _HangingProvider({1: K1, 2: K2})
    EncryptionService(provider, metrics=m)
    a_vault(False)
    port = m.serve(0)
    try:
        t0 = time.monotonic()
        got = scrape(port)
        assert time.monotonic() - t0 < 3.0
        assert got[("engine_vault_up", (("vault", ",".join(VAULT_NODES)),))] == 0  # the alert's input
        assert ("engine_key_current_version", ()) not in got
        provider.release.set()
        deadline = time.monotonic() + 10
        while ("engine_key_current_version", ()) not in got and time.monotonic() < deadline:
            got = scrape(port)
        assert got[("engine_key_versions_active", ())] == 2
    finally:
        provider.release.set()
        m.stop()


SERVICE_PROCESS = """
import sys, time
import engine
from engine.metrics import get_metrics
service = engine.get_encryption_service()
service.decrypt(service.encrypt_token("a value"))
print(get_metrics().serve(0), flush=True)
sys.stdin.read()
"""


@pytest.fixture
def key_env(tmp_path):
    return {**os.environ, "ENCRYPTION_MASTER_KEY": "metrics-test-master-key-" * 2, "ENCRYPTION_KDF_ITERATIONS": "1000",
            "ENGINE_KEY_STATE_FILE": str(tmp_path / "keys.json"), "VAULT_ENABLED": "false",
            "ENGINE_STATE_DIR": str(tmp_path / "state")}


def test_key_versions_active_in_a_service_process(key_env):
    """A process that only encrypts (no rotation in it) exports the versions its provider holds,
    and follows a rotation another process makes."""
    cli = [sys.executable, "-m", "engine"]
    for _ in range(2):
        assert subprocess.run([*cli, "rotate"], env=key_env, capture_output=True,
                              timeout=120).returncode == 0
    proc = subprocess.Popen([sys.executable, "-c", SERVICE_PROCESS], env=key_env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        port = int(proc.stdout.readline())
        got = scrape(port)
        assert got[("key_versions_active", ())] == 2 == got[("engine_key_versions_active", ())]
        assert got[("engine_key_current_version", ())] == 2
        assert got[("engine_encryption_operations_total", (("type", "encrypt"),))] == 1
        assert subprocess.run([*cli, "rotate"], env=key_env, capture_output=True,
                              timeout=120).returncode == 0
        deadline = time.monotonic() + 15  # the facts are read again after 5 s
        while got[("engine_key_current_version", ())] != 3 and time.monotonic() < deadline:
            time.sleep(0.5)
            got = scrape(port)
        assert got[("engine_key_versions_active", ())] == 3
        assert got[("engine_key_current_version", ())] == 3
    finally:
        proc.stdin.close()
        proc.wait(30)


def test_rotation_failure_is_recorded_with_its_time(tmp_path):
    from engine.rotation import KeyRotationService, RotationFailed, RotationPolicy

    m = private()
    provider = StaticKeyProvider({1: K1})

    def fail(step, detail):
        if step == "post_verification":
            raise RuntimeError("injected")

    rotation = KeyRotationService(provider, RotationPolicy(interval_days=2), state_dir=tmp_path,
                                  metrics=m, observer=fail, clock=lambda: 2_000_000_000.0)
    with pytest.raises(RotationFailed):
        rotation.rotate_keys()
    sample = m.registry.get_sample_value
    assert sample("engine_key_rotation_last_failure_timestamp_seconds") == 2_000_000_000.0
    assert sample("engine_encryption_errors_total", {"error_type": "key_rotation_failed"}) == 1
    assert sample("engine_key_rotation_interval_seconds") == 2 * 86400
    assert sample("engine_key_rotation_last_success_timestamp_seconds") < 2_000_000_000.0


# ---- refused inputs: every one counted once, by a kind from a fixed set

def _provider() -> StaticKeyProvider:
    return StaticKeyProvider({1: K1, 2: K2})


def _foreign_token() -> str:
    return EncryptionService(StaticKeyProvider({7: K3}), metrics=False).encrypt_token("x")


def _wrong_key_token(version: int = 2) -> str:
    return EncryptionService(StaticKeyProvider({version: K3}), metrics=False).encrypt_token("x")


def _non_utf8_token(svc) -> str:
    return svc.encrypt_token(b"\xff\xfe")


def _engine_file(svc, data=b"secret data", context=b"ctx") -> bytes:
    return FileEncryption(svc).encrypt(data, context)


def _table():
    return pa.table({"id": [1, 2, 3], "email": ["a@x", "b@x", "c@x"], "n": [1, 2, 3]})


def _exhausted(svc):
    svc.provider.record_usage(2, GCM_RANDOM_IV_LIMIT)
    return svc.encrypt_token("x")


def _decrypt_only_service(m):
    return EncryptionService(StaticKeyProvider({1: K1}, states={1: "decrypt-only"}), metrics=m)


# (what, call(service) -> raises, error type, count)
REFUSALS = [
    # the service
    ("service.decrypt: not base64", lambda s: s.decrypt("ef1:!!!!"), "malformed", 1),
    ("service.decrypt: plain text", lambda s: s.decrypt("hello there"), "malformed", 1),
    ("service.decrypt: JSON of another shape", lambda s: s.decrypt('{"a": 1}'), "malformed", 1),
    ("service.decrypt: bytes of no format", lambda s: s.decrypt(b"\x00" * 40), "malformed", 1),
    ("service.decrypt_text: wrong AAD", lambda s: s.decrypt_text(s.encrypt_token("x", "a"), "b"),
     "invalid_tag", 1),
    ("service.decrypt: wrong key", lambda s: s.decrypt(_wrong_key_token()), "invalid_tag", 1),
    ("service.decrypt: envelope, wrong AAD",
     lambda s: s.decrypt(s.encrypt(b"x", aad=b"a").to_json(), aad=b"b"), "invalid_tag", 1),
    ("service.decrypt: unknown version", lambda s: s.decrypt(_foreign_token()),
     "unknown_key_version", 1),
    ("service.decrypt_text: not UTF-8", lambda s: s.decrypt_text(_non_utf8_token(s)),
     "invalid_argument", 1),
    ("service.decrypt: AAD of a wrong type", lambda s: s.decrypt(s.encrypt_token("x"), aad=3),
     "invalid_argument", 1),
    ("service.encrypt: a number", lambda s: s.encrypt(123), "invalid_argument", 1),
    ("service.encrypt_token: a float", lambda s: s.encrypt_token(1.5), "invalid_argument", 1),
    ("service.encrypt_token: used up", _exhausted, "key_usage_exhausted", 1),
    ("service.encrypt_many: one value", lambda s: s.encrypt_many("abc"), "invalid_argument", 1),
    ("service.encrypt_many: AAD count", lambda s: s.encrypt_many(["a", "b"], aad=["x"]),
     "invalid_argument", 1),
    ("service.decrypt_many: one malformed",
     lambda s: s.decrypt_many([s.encrypt_token("a"), "ef1:AAAA"]), "malformed", 1),
    ("service.decrypt_many: three wrong AAD",
     lambda s: s.decrypt_many(s.encrypt_many(["a", "b", "c", "d"], aad="k")[:3], aad="j"),
     "invalid_tag", 3),
    ("service.decrypt_many: unknown version", lambda s: s.decrypt_many([_foreign_token()]),
     "unknown_key_version", 1),
    ("service.decrypt_many_text: not UTF-8",
     lambda s: s.decrypt_many_text(s.encrypt_many([b"\xff"], binary=True)),
     "invalid_argument", 1),
    ("service.reencrypt_many: one value", lambda s: s.reencrypt_many("abc"), "invalid_argument", 1),
    ("service.reencrypt_many: a number", lambda s: s.reencrypt_many([1]), "invalid_argument", 1),
    # fields
    ("fields.encrypt_field: a number", lambda s: FieldEncryption(s).encrypt_field({"a": 5}, "a"),
     "invalid_argument", 1),
    ("fields.decrypt_field: garbage",
     lambda s: FieldEncryption(s).decrypt_field({"a": "ef1:garbage"}, "a"), "malformed", 1),
    ("fields.encrypt_field: no id",
     lambda s: FieldEncryption(s, bind_context=True).encrypt_field({"a": "x"}, "a"),
     "invalid_argument", 1),
    ("fields.decrypt_field: moved to another record",
     lambda s: FieldEncryption(s, bind_context=True).decrypt_field(
         {"id": 2, "a": FieldEncryption(s, bind_context=True).encrypt_field(
             {"id": 1, "a": "x"}, "a")["a"]}, "a"), "invalid_tag", 1),
    ("fields.encrypt_column: a foreign token kept",
     lambda s: FieldEncryption(s).encrypt_column(["x", _wrong_key_token(), "y"], "a",
                                                 skip_encrypted=True), "invalid_tag", 1),
    ("fields.decrypt_column: garbage", lambda s: FieldEncryption(s).decrypt_column(
        ["ef1:garbage", None], "a"), "malformed", 1),
    ("fields.encrypt_column: not records", lambda s: FieldEncryption(s).encrypt_column(42, "a"),
     "invalid_argument", 1),
    # tables
    ("tables.encrypt_columns: no such column",
     lambda s: tables.encrypt_columns(_table(), "nope", service=s), "invalid_argument", 1),
    ("tables.decrypt_columns: an int column",
     lambda s: tables.decrypt_columns(_table(), "n", service=s), "invalid_argument", 1),
    ("tables.encrypt_columns: not a table",
     lambda s: tables.encrypt_columns([1, 2], "a", service=s), "invalid_argument", 1),
    ("tables.encrypt_columns: bad template",
     lambda s: tables.encrypt_columns(_table(), "email", aad_template="{", service=s),
     "invalid_argument", 1),
    ("tables.decrypt_columns: a column never encrypted",
     lambda s: tables.decrypt_columns(_table(), "email", service=s), "invalid_argument", 1),
    ("tables.decrypt_columns: another template",
     lambda s: tables.decrypt_columns(tables.encrypt_columns(
         _table(), "email", aad_template="{id}", service=s), "email", aad_template="x{id}",
         service=s), "invalid_tag", 3),
    ("tables.encrypt_columns_file: unknown format",
     lambda s: tables.encrypt_columns_file("in.xlsx", "out.xlsx", ["a"], service=s),
     "invalid_argument", 1),
    # engine files
    ("files.decrypt: not an engine file", lambda s: FileEncryption(s).decrypt(b"plain text"),
     "malformed", 1),
    ("files.decrypt: wrong context", lambda s: FileEncryption(s).decrypt(_engine_file(s), b"x"),
     "invalid_tag", 1),
    ("files.decrypt: truncated",
     lambda s: FileEncryption(s).decrypt(_engine_file(s, b"y" * 70000)[:-20], b"ctx"),
     "invalid_tag", 1),
    ("files.decrypt: modified",
     lambda s: FileEncryption(s).decrypt(_engine_file(s)[:-1] + b"\x00", b"ctx"),
     "invalid_tag", 1),
    ("files.decrypt: unknown version",
     lambda s: FileEncryption(s).decrypt(b"EFCB\x01\x00\x00\x00\x09" + b"\x00" * 64),
     "unknown_key_version", 1),
    ("files.decrypt_stream: not an engine file",
     lambda s: FileEncryption(s).decrypt_stream(io.BytesIO(b"nope"), io.BytesIO()),
     "malformed", 1),
    ("files.reader: not an engine file", lambda s: FileEncryption(s).reader(io.BytesIO(b"xx")),
     "malformed", 1),
    ("files.encrypt: context of a wrong type", lambda s: FileEncryption(s).encrypt(b"x", 3.5),
     "invalid_argument", 1),
]


@pytest.mark.parametrize("what, call, kind, count", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_every_refused_input_is_counted_once(what, call, kind, count):
    m = private()
    service = EncryptionService(_provider(), metrics=m)
    with pytest.raises(engine.EngineError) as info:
        call(service)
    assert error_type_of(info.value, ((NotAnEngineFile, "malformed"),)) == kind
    counted = {t: m.error_count(t) for t in ERROR_TYPES}
    assert counted == {t: (count if t == kind else 0) for t in ERROR_TYPES}, what


@pytest.mark.parametrize("how", ["reader", "open"])
def test_a_streaming_reader_counts_its_failure_once(how):
    m = private()
    service = EncryptionService(_provider(), metrics=m)
    sealed = bytearray(_engine_file(service, os.urandom(200_000)))
    sealed[100_000] ^= 1  # a chunk in the middle
    files = FileEncryption(service)
    reader = files.reader(io.BytesIO(bytes(sealed)), b"ctx") if how == "reader" else \
        files.open(io.BytesIO(bytes(sealed)), b"ctx")
    for _ in range(3):  # every later read raises again: still one refusal
        with pytest.raises(engine.InvalidTag):
            reader.read()
    assert isinstance(reader, io.RawIOBase)
    assert m.error_count("invalid_tag") == 1
    assert sum(m.error_count(t) for t in ERROR_TYPES) == 1


@pytest.mark.parametrize("layer", ["service", "files"])
def test_a_key_version_that_may_not_encrypt_is_counted(layer):
    m = private()
    service = _decrypt_only_service(m)
    with pytest.raises(engine.KeyVersionNotUsable):
        service.encrypt_token("x") if layer == "service" else FileEncryption(service).encrypt(b"x")
    assert m.error_count("key_version_not_usable") == 1


def test_file_that_cannot_be_read_is_not_an_encryption_error(tmp_path):
    m = private()
    service = EncryptionService(_provider(), metrics=m)
    with pytest.raises(OSError):
        FileEncryption(service).decrypt_file(str(tmp_path / "missing"), str(tmp_path / "out"))
    assert sum(m.error_count(t) for t in ERROR_TYPES) == 0


def test_process_wide_service_counts_into_the_process_wide_metrics(monkeypatch, key_env):
    for name, value in key_env.items():
        monkeypatch.setenv(name, value)
    m = EngineMetrics(CollectorRegistry())
    monkeypatch.setattr(metrics, "_metrics", m)
    engine.reset_encryption_service()
    try:
        with pytest.raises(engine.EnvelopeError):
            FieldEncryption.decrypt_field({"a": "ef1:garbage"}, "a")  # no service named
        with pytest.raises(engine.InvalidArgumentType):
            tables.encrypt_columns("not a table", "a")
    finally:
        engine.reset_encryption_service()
    assert m.error_count("malformed") == 1 and m.error_count("invalid_argument") == 1


def test_a_second_refusal_while_handling_the_first_is_counted_too():
    m = private()
    service = EncryptionService(_provider(), metrics=m)
    with pytest.raises(engine.EnvelopeError):
        try:
            service.decrypt_text("legacy value")
        except engine.EnvelopeError:
            service.decrypt(b"legacy value")  # a caller's fallback, refused as well
    assert m.error_count("malformed") == 2


def test_counting_off_counts_nothing_and_changes_no_error():
    service = EncryptionService(_provider(), metrics=False)
    with pytest.raises(engine.EnvelopeError, match="."):
        service.decrypt("ef1:!!!!")


def test_reencrypt_many_counts_the_values_it_cannot_open():
    m = private()
    service = EncryptionService(_provider(), metrics=m)
    values = [_foreign_token(), _foreign_token(), _wrong_key_token(1), "plain", None,
              service.encrypt_token("ok")]
    service.reencrypt_many(values)
    assert m.error_count("unknown_key_version") == 2
    assert m.error_count("invalid_tag") == 1


def test_error_labels_never_come_from_elsewhere():
    m = private()
    m.error("'; DROP TABLE --", 3)
    m.error("invalid_tag")
    kinds = {dict(labels)["error_type"] for (name, labels) in _samples(m)
             if name == "engine_encryption_errors_total"}
    assert kinds == set(ERROR_TYPES)
    assert m.error_count("other") == 3


def _samples(m: EngineMetrics):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in m.collect() for s in f.samples}


def test_counting_never_replaces_the_error():
    class Broken:
        def error(self, *args):
            raise RuntimeError("the metrics are broken")

    service = EncryptionService(_provider(), metrics=False)
    EncryptionService._metrics.__set__(service, Broken())  # no public way to break them
    with pytest.raises(engine.EnvelopeError):
        service.decrypt("ef1:!!!!")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=80), st.binary(max_size=80),
                 st.builds(lambda b: "ef1:" + b, st.text(alphabet="ABCDEFabcdef0123456789-_",
                                                         max_size=80))))
def test_any_garbage_is_refused_and_counted_exactly_once(garbage):
    m = private()
    service = EncryptionService(StaticKeyProvider({1: K1}), metrics=m)
    for call in (service.decrypt, service.decrypt_text, lambda g: service.decrypt_many([g]),
                 lambda g: FileEncryption(service).decrypt(g if isinstance(g, bytes) else
                                                           g.encode())):
        before = sum(m.error_count(t) for t in ERROR_TYPES)
        with pytest.raises(engine.EngineError):
            call(garbage)
        assert sum(m.error_count(t) for t in ERROR_TYPES) == before + 1


def test_push_to_a_gateway_nobody_listens_on_fails_with_one_typed_error():
    from engine.testing.postgres import free_port

    m = private()
    with pytest.raises(PushFailed, match="did not take the metrics"):
        m.push(f"http://127.0.0.1:{free_port()}", "job", {"command": "test"}, timeout=2)


def test_batches_are_counted_by_record():
    m = private()
    service = EncryptionService(_provider(), metrics=m)
    tokens = service.encrypt_many(np.array(["a"] * 1000, dtype=object).tolist())
    service.decrypt_many(tokens)
    assert m.operations.value("encrypt") == 1000 == m.operations.value("decrypt")
