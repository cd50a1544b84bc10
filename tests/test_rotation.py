"""Key rotation end to end: the rotation flow, retention, roll-back on failure at every step,
concurrency, the usage-limit trigger, the webhook over real HTTP, and the audit trail."""

from __future__ import annotations

import gc
import http.server
import json
import multiprocessing
import os
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

import engine
from engine import audit, rotation
from engine.keys import KeyState, MasterKeyMismatch
from engine.keys.environment import DerivationPolicy, EnvironmentKeyProvider
from engine.keys.static import StaticKeyProvider
from engine.metrics import EngineMetrics

MASTER = "m" * 40 + "-rotation"
AUDIT_KEY = os.urandom(32)


def env_provider(tmp_path):
    return EnvironmentKeyProvider(master_key=MASTER, state_path=tmp_path / "keys.json",
                                  policy=DerivationPolicy(iterations=1000))


@pytest.fixture(params=["static", "environment"])
def provider(request, tmp_path):
    if request.param == "static":
        return StaticKeyProvider({1: os.urandom(32)})
    return env_provider(tmp_path)


def service_for(provider, tmp_path, **kw):
    policy = kw.pop("policy", rotation.RotationPolicy(retention_versions=3))
    return rotation.KeyRotationService(provider, policy, state_dir=tmp_path / "rot",
                                       audit=audit.AuditLog(tmp_path / "audit.jsonl", AUDIT_KEY, fsync=False),
                                       **kw)


def seal_with_current(provider, data: bytes):
    key = provider.get_current_key()
    nonce = os.urandom(16)
    return key.version, nonce, key.cipher.encrypt(nonce, data)


def states(provider):
    return {i.version: i.state for i in provider.list_versions()}


def test_rotate_several_times_with_retention(provider, tmp_path):
    svc = service_for(provider, tmp_path)
    written = [seal_with_current(provider, b"data under v1")]
    seen_steps = []
    svc.observer = lambda step, detail: seen_steps.append(step)
    for expected in range(2, 7):
        result = svc.rotate_keys()
        assert (result.previous_version, result.new_version) == (expected - 1, expected)
        assert provider.get_current_key().version == expected
        written.append(seal_with_current(provider, f"data under v{expected}".encode()))
    assert seen_steps[:6] == list(rotation.STEPS)
    s = states(provider)
    assert s[6] is KeyState.ACTIVE
    assert [v for v, st in s.items() if st is KeyState.DECRYPT_ONLY] == [4, 5]
    assert [v for v, st in s.items() if st is KeyState.DEPRECATED] == [1, 2, 3]
    # data written under every version still decrypts (deprecated ones too, until a purge)
    for version, nonce, sealed in written:
        assert provider.get_key(version).cipher.decrypt(nonce, sealed).startswith(b"data under")
    entries = list(audit.read_entries(tmp_path / "audit.jsonl"))
    assert [e["event"] for e in entries].count("KEY_ROTATION") == 5
    assert {e["details"]["version"] for e in entries if e["event"] == "KEY_DEPRECATED"} == {1, 2, 3}
    assert audit.verify(tmp_path / "audit.jsonl", AUDIT_KEY).ok


def test_deprecated_and_decrypt_only_versions_refuse_encryption(tmp_path):
    provider = env_provider(tmp_path)
    provider.get_current_key()
    service_for(provider, tmp_path).rotate_keys()
    provider.set_state(2, KeyState.DEPRECATED)
    with pytest.raises(engine.keys.KeyVersionNotUsable):
        provider.get_current_key()


@pytest.mark.parametrize("failing_step", rotation.STEPS)
def test_failure_at_each_step_leaves_everything_as_before(provider, tmp_path, failing_step):
    svc = service_for(provider, tmp_path)
    svc.rotate_keys()
    svc.rotate_keys()
    before_states, before_current = states(provider), provider.get_current_key().version

    def observer(step, detail):
        if step == failing_step:
            raise RuntimeError(f"injected failure at {step}")

    svc.observer = observer
    with pytest.raises(rotation.RotationFailed) as err:
        svc.rotate_keys()
    assert err.value.step == failing_step
    assert provider.get_current_key().version == before_current
    after = states(provider)
    for version, state in before_states.items():
        assert after[version] is state
    # a version made before the failure is kept (data may use it) but can never encrypt again
    assert all(after[v] is KeyState.DEPRECATED for v in after if v not in before_states)
    events = [e["event"] for e in audit.read_entries(tmp_path / "audit.jsonl")]
    assert events[-1] == "KEY_ROTATION_FAILED"
    svc.observer = None
    assert svc.rotate_keys().previous_version == before_current  # and rotation works again


def test_a_retained_key_that_changed_fails_post_verification(tmp_path):
    """The canaries sealed when each version was made catch a retained key that is no longer
    the same key, even where the provider itself cannot tell (keys handed in from elsewhere)."""
    keys = {1: os.urandom(32)}
    svc = service_for(StaticKeyProvider(keys), tmp_path)
    result = svc.rotate_keys()
    assert result.new_version == 2
    changed = StaticKeyProvider({1: os.urandom(32), 2: os.urandom(32)})
    with pytest.raises(rotation.RotationFailed) as err:
        service_for(changed, tmp_path).rotate_keys()
    assert err.value.step == "post_verification"


def test_another_master_key_is_caught_before_anything_changes(tmp_path):
    provider = env_provider(tmp_path)
    service_for(provider, tmp_path).rotate_keys()
    before = (tmp_path / "keys.json").read_bytes()
    other = EnvironmentKeyProvider(master_key="x" * 40 + "-another", state_path=tmp_path / "keys.json",
                                   policy=DerivationPolicy(iterations=1000))
    with pytest.raises(rotation.RotationFailed) as err:
        service_for(other, tmp_path).rotate_keys()
    assert err.value.step == "pre_validation"
    assert isinstance(err.value.__cause__, MasterKeyMismatch)
    assert (tmp_path / "keys.json").read_bytes() == before


def test_interval_and_usage_triggers(tmp_path):
    provider = env_provider(tmp_path)
    provider.get_current_key()
    now = [time.time()]
    svc = service_for(provider, tmp_path, clock=lambda: now[0],
                      policy=rotation.RotationPolicy(interval_days=30, usage_limit=1000, usage_fraction=0.5))
    assert not svc.is_rotation_needed()
    now[0] += 31 * 86400
    assert svc.rotation_reason() == "interval"
    now[0] -= 31 * 86400
    provider.record_usage(1, 499)
    assert not svc.is_rotation_needed()
    provider.record_usage(1, 1)
    assert svc.rotation_reason() == "usage"
    svc.rotate_keys(reason="usage")
    assert not svc.is_rotation_needed()
    disabled = service_for(provider, tmp_path, policy=rotation.RotationPolicy(enabled=False))
    now[0] += 400 * 86400
    assert not disabled.is_rotation_needed()


def test_policy_from_environment():
    p = rotation.RotationPolicy.from_environment({
        "KEY_ROTATION_ENABLED": "false", "KEY_ROTATION_INTERVAL_DAYS": "7",
        "KEY_RETENTION_VERSIONS": "2", "KEY_ROTATION_WEBHOOK": "http://127.0.0.1:1/hook"})
    assert (p.enabled, p.interval_days, p.retention_versions, p.webhook) == (False, 7.0, 2, "http://127.0.0.1:1/hook")
    assert rotation.RotationPolicy.from_environment({}).interval_days == 30
    with pytest.raises(engine.InvalidArgument, match="KEY_ROTATION_INTERVAL_DAYS"):
        rotation.RotationPolicy.from_environment({"KEY_ROTATION_INTERVAL_DAYS": "soon"})
    with pytest.raises(engine.InvalidArgument):
        rotation.RotationPolicy(retention_versions=0)


def _rotate_in_child(state_path, state_dir, barrier, results):
    provider = EnvironmentKeyProvider(master_key=MASTER, state_path=state_path,
                                      policy=DerivationPolicy(iterations=1000))
    svc = rotation.KeyRotationService(provider, rotation.RotationPolicy(), state_dir=state_dir)
    barrier.wait()
    try:
        r = svc.rotate_keys(wait=False)
        results.put(("rotated", r.new_version))
    except rotation.RotationInProgress:
        results.put(("busy", None))


@pytest.mark.forks_with_threads
def test_two_processes_cannot_rotate_at_once(tmp_path):
    provider = env_provider(tmp_path)
    provider.get_current_key()
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    # Hold the lock in this process while the children try: both must see it busy.
    svc = service_for(provider, tmp_path)
    gate = threading.Event()
    release = threading.Event()

    def slow(step, detail):
        if step == "post_verification":
            gate.set()
            release.wait(10)

    svc.observer = slow
    t = threading.Thread(target=svc.rotate_keys)
    t.start()
    assert gate.wait(10)
    procs = [ctx.Process(target=_rotate_in_child, args=(tmp_path / "keys.json", tmp_path / "rot", barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(20)
    release.set()
    t.join(10)
    outcomes = sorted(results.get(timeout=5)[0] for _ in procs)
    assert outcomes == ["busy", "busy"]
    assert [i.version for i in provider.list_versions()] == [1, 2]
    # once free, two racing processes rotate one after the other, never together
    args = (tmp_path / "keys.json", tmp_path / "rot", ctx.Barrier(1), results)
    procs = [ctx.Process(target=_rotate_in_child, args=args) for _ in range(2)]
    for p in procs:
        p.start()
        p.join(20)
    assert sorted(results.get(timeout=5)[1] for _ in procs) == [3, 4]


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_posts_json_and_a_dead_webhook_never_blocks(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.received = []
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        provider = env_provider(tmp_path)
        provider.get_current_key()
        svc = service_for(provider, tmp_path, policy=rotation.RotationPolicy(webhook=url))
        svc.rotate_keys()
        svc.observer = lambda step, d: (_ for _ in ()).throw(RuntimeError("boom")) if step == "deprecate" else None
        with pytest.raises(rotation.RotationFailed):
            svc.rotate_keys()
        svc.wait_for_webhooks(10)
    finally:
        server.shutdown()
        server.server_close()
    events = [m["event"] for m in _Hook.received]
    assert events == ["KEY_ROTATION", "KEY_ROTATION_FAILED"]
    assert _Hook.received[0]["new_version"] == 2 and _Hook.received[1]["step"] == "deprecate"
    # a webhook nobody listens on: the rotation returns at once and succeeds
    dead = service_for(provider, tmp_path, policy=rotation.RotationPolicy(
        webhook=f"http://127.0.0.1:{server.server_address[1]}/gone", webhook_timeout=0.5, webhook_retries=2))
    t0 = time.perf_counter()
    assert dead.rotate_keys().new_version == 4
    assert time.perf_counter() - t0 < 2.0
    dead.wait_for_webhooks(10)


def test_metrics_and_scheduler(tmp_path):
    provider = env_provider(tmp_path)
    metrics = EngineMetrics(CollectorRegistry())
    now = [time.time()]
    svc = service_for(provider, tmp_path, metrics=metrics, clock=lambda: now[0],
                      policy=rotation.RotationPolicy(interval_days=1, retention_versions=2))
    assert svc.run_forever(check_every=0.01, max_checks=2) == 1  # no version yet: creates one
    now[0] += 2 * 86400
    assert svc.run_forever(check_every=0.01, max_checks=1) == 1  # the interval has passed
    sample = metrics.registry.get_sample_value
    assert sample("engine_key_rotation_last_success_timestamp_seconds") == now[0]
    assert sample("engine_key_versions_active") == 2
    now[0] = time.time()
    assert svc.run_forever(check_every=0.01, max_checks=2) == 0  # fresh key: nothing to do


def test_purge_only_deprecated(tmp_path):
    provider = env_provider(tmp_path)
    svc = service_for(provider, tmp_path, policy=rotation.RotationPolicy(retention_versions=1))
    provider.get_current_key()
    svc.rotate_keys()
    with pytest.raises(engine.InvalidArgument, match="only deprecated"):
        svc.purge(2)
    svc.purge(1)
    assert [i.version for i in provider.list_versions()] == [2]
    with pytest.raises(engine.keys.UnknownKeyVersion):
        provider.get_key(1)


# ---- the service, rotation, usage, metrics and audit working together ----

from engine.formats.envelope import EncryptedData  # noqa: E402
from engine.service import EncryptionService  # noqa: E402


def _encrypt_in_child(state_path, out):
    provider = EnvironmentKeyProvider(master_key=MASTER, state_path=state_path,
                                      policy=DerivationPolicy(iterations=1000))
    out.put(EncryptedData.from_token(EncryptionService(provider, metrics=False)
                                     .encrypt_many(["x"])[0]).key_version)


def test_service_follows_rotation_at_once_here_and_in_other_processes(tmp_path):
    provider = env_provider(tmp_path)
    svc = EncryptionService(provider, metrics=False)
    old = svc.encrypt("before")
    assert old.key_version == 1
    service_for(provider, tmp_path).rotate_keys()
    assert svc.encrypt("after").key_version == 2
    assert svc.decrypt(old) == b"before"
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_encrypt_in_child, args=(tmp_path / "keys.json", out))
    p.start()
    p.join(60)
    assert out.get(timeout=5) == 2


def test_usage_is_counted_per_batch_with_leases_and_triggers_rotation(tmp_path):
    calls = []

    class Counting(EnvironmentKeyProvider):
        __slots__ = ()

        def record_usage(self, version, count, **kw):
            calls.append(count)
            return super().record_usage(version, count, **kw)

    provider = Counting(master_key=MASTER, state_path=tmp_path / "keys.json",
                        policy=DerivationPolicy(iterations=1000))
    svc = EncryptionService(provider, metrics=False, usage_lease=1000)
    for _ in range(5):
        svc.encrypt_many([b"x"] * 300)
    svc.encrypt(b"one more")
    assert calls == [1000, 1000]  # 1501 encryptions: two leases, persisted twice
    assert provider.usage(1) == 2000 >= 1501
    rot = service_for(provider, tmp_path, policy=rotation.RotationPolicy(usage_limit=3000, usage_fraction=0.5))
    assert rot.rotation_reason() == "usage"
    rot.rotate_keys(reason="usage")
    assert svc.encrypt(b"x").key_version == 2 and not rot.is_rotation_needed()
    del svc
    gc.collect()  # the unused reservations go back: the count is what was used
    assert provider.usage(1) == 1501 and provider.usage(2) == 1


def test_service_metrics_count_records_and_errors(tmp_path):
    metrics = EngineMetrics(CollectorRegistry())
    svc = EncryptionService(StaticKeyProvider({1: os.urandom(32)}), metrics=metrics)
    tokens = svc.encrypt_many([b"a"] * 1000)
    svc.decrypt_many(tokens)
    svc.decrypt(svc.encrypt(b"z"))
    with pytest.raises(engine.InvalidTag):
        svc.decrypt(svc.encrypt(b"z"), aad=b"wrong")
    with pytest.raises(engine.BatchInvalidTag):
        svc.decrypt_many(tokens[:3], aad=b"wrong")
    sample = metrics.registry.get_sample_value
    assert sample("encryption_operations_total", {"type": "encrypt"}) == 1002
    assert sample("encryption_operations_total", {"type": "decrypt"}) == 1001
    assert metrics.error_count("invalid_tag") == 4


def test_service_writes_one_audit_entry_per_batch(tmp_path, monkeypatch):
    provider = env_provider(tmp_path)
    monkeypatch.setenv("ENCRYPTION_MASTER_KEY", MASTER)
    monkeypatch.setenv("ENGINE_KEY_STATE_FILE", str(tmp_path / "keys.json"))
    monkeypatch.setenv("ENCRYPTION_KDF_ITERATIONS", "1000")
    monkeypatch.setenv("ENGINE_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    from engine.service import get_encryption_service, reset_encryption_service

    reset_encryption_service()
    try:
        svc = get_encryption_service()
        tokens = svc.encrypt_many(["secret value"] * 10_000)
        svc.decrypt_many(tokens)
    finally:
        reset_encryption_service()
    entries = list(audit.read_entries(tmp_path / "audit.jsonl"))
    assert [(e["event"], e["details"]["operation"], e["details"]["records"]) for e in entries] == [
        ("KEY_ACCESS", "encrypt", 10_000), ("KEY_ACCESS", "decrypt", 10_000)]
    assert audit.verify(tmp_path / "audit.jsonl", provider.audit_key()).ok
    text = (tmp_path / "audit.jsonl").read_text()
    assert "secret value" not in text and MASTER not in text
