"""Fork safety of the engine's locks (engine.locks): a child forked while another thread holds a
lock finds it unlocked, for every lock the engine has, and hundreds of children forked while a
job runs and other threads take those locks all finish."""

from __future__ import annotations

import ast
import os
import pathlib
import signal
import sqlite3
import threading
import time

import pytest

import engine
from engine import EncryptionService, EnvironmentKeyProvider, StaticKeyProvider, audit, locks
from engine.blind_index import BlindIndex
from engine.keys import _state
from engine.keys.base import ThreadRotationLock
from engine.keys.environment import DerivationPolicy

ENGINE = pathlib.Path(engine.__file__).parent
MASTER = "fork-test-master-key-of-at-least-32-bytes"
FAST = DerivationPolicy(iterations=1000)
LOCK_FACTORIES = {"Lock", "RLock", "Condition", "Semaphore", "BoundedSemaphore", "allocate_lock"}


def test_every_lock_in_the_engine_is_made_fork_safe():
    """No module makes a lock of its own: each comes from engine.locks.fork_safe_lock."""
    direct = []
    for path in sorted(ENGINE.rglob("*.py")):
        if path.name == "locks.py" and path.parent == ENGINE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if name in LOCK_FACTORIES:
                    direct.append(f"{path.relative_to(ENGINE)}:{node.lineno}")
    assert not direct, f"locks made without engine.locks.fork_safe_lock: {direct}"
    # and the factory really is what they call
    uses = [p for p in ENGINE.rglob("*.py") if "fork_safe_lock(" in p.read_text()]
    assert len(uses) >= 10


def in_child(body, timeout: float = 10.0) -> int:
    """Runs ``body`` in a forked child with a watchdog; returns its exit status (0: body
    returned; 3: the watchdog fired, the child hung)."""
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGALRM, lambda *_: os._exit(3))
            signal.alarm(int(timeout))
            body()
            os._exit(0)
        except BaseException:  # noqa: BLE001 - the child reports by its exit status
            os._exit(1)
    deadline = time.monotonic() + timeout + 5
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return 3
        time.sleep(0.001)


class Holder:
    """Holds locks on another thread until released."""

    def __init__(self, *held) -> None:
        self.held, self.taken, self.release = held, threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for lock in self.held:
            lock.acquire()
        self.taken.set()
        self.release.wait()
        for lock in reversed(self.held):
            lock.release()

    def __enter__(self):
        self.thread.start()
        assert self.taken.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.thread.join(10)


@pytest.fixture
def env_provider(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCRYPTION_MASTER_KEY", MASTER)
    monkeypatch.setenv("ENGINE_KEY_STATE_FILE", str(tmp_path / "keys.json"))
    monkeypatch.setenv("ENCRYPTION_KDF_ITERATIONS", "1000")
    monkeypatch.setenv("ENGINE_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    monkeypatch.delenv("VAULT_ENABLED", raising=False)
    from engine.rotation import reset_key_rotation_service
    from engine.service import reset_encryption_service

    reset_encryption_service()
    reset_key_rotation_service()
    yield EnvironmentKeyProvider(master_key=MASTER, state_path=tmp_path / "keys.json",
                                 policy=FAST)
    reset_encryption_service()
    reset_key_rotation_service()


def one_of_each(provider, tmp_path):
    """An object of every kind that owns a lock, with the lock."""
    from engine import metrics, rotation, service
    from engine.webhook import Webhook

    svc = EncryptionService(provider, metrics=False)
    static = StaticKeyProvider({1: os.urandom(32)}, index_key=os.urandom(32))
    counts = metrics.OperationCounts()
    log = audit.AuditLog(tmp_path / "each.jsonl", os.urandom(32), fsync=False)
    index = BlindIndex(static, "t", "c")
    rotator = rotation.KeyRotationService(static, state_dir=tmp_path / "rot")
    return {
        "EnvironmentKeyProvider._lock": provider._lock,
        "keys._state._CACHE_LOCK": _state._CACHE_LOCK,
        "service._service_lock": service._service_lock,
        "the usage meter's lock": svc._usage._lock,
        "StaticKeyProvider._lock": static._lock,
        "ThreadRotationLock": ThreadRotationLock()._lock,
        "OperationCounts._lock": counts._lock,
        "metrics._lock": metrics._lock,
        "AuditLog._lock": log._lock,
        "BlindIndex._lock": index._lock,
        "rotation._service_lock": rotation._service_lock,
        "KeyRotationService._thread_lock": rotator._thread_lock,
        "Webhook._lock": Webhook("http://127.0.0.1:9/")._lock,
    }


@pytest.mark.forks_with_threads
def test_a_lock_held_by_another_thread_at_fork_is_free_in_the_child(env_provider, tmp_path):
    named = one_of_each(env_provider, tmp_path)
    with Holder(*named.values()):
        for name, lock in named.items():
            assert in_child(lambda lock=lock: lock.acquire(timeout=1) or os._exit(2)) == 0, name
    # the whole registry, Vault's locks included when they exist
    registered = list(locks._LOCKS)
    assert len(registered) >= len(named)
    with Holder(*registered):
        assert in_child(lambda: all(lock.acquire(timeout=1) for lock in registered)
                        or os._exit(2)) == 0


@pytest.mark.forks_with_threads
def test_the_calls_that_take_the_locks_finish_in_a_child(env_provider, tmp_path):
    """What hung before: the provider re-reading its state file, the derived-key cache, the
    process-wide services, each with its lock held by another thread at fork."""
    from engine import rotation, service

    p = env_provider
    p.get_current_key()

    def calls() -> None:
        p.refresh()
        p.get_key(1)
        _state.clear_cache()
        service.reset_encryption_service()
        engine.get_encryption_service().encrypt_token("x")
        rotation.reset_key_rotation_service()
        engine.get_key_rotation_service()

    for lock in (p._lock, _state._CACHE_LOCK, service._service_lock, rotation._service_lock):
        with Holder(lock):
            assert in_child(calls) == 0, lock


@pytest.mark.forks_with_threads
def test_hundreds_of_forks_during_a_running_job(env_provider, tmp_path):
    """A re-encryption inventory runs in a loop on one thread and another thread changes the key
    state file (so the provider re-reads it under its lock), rebuilds the derived-key cache and
    the process-wide service, computes blind indexes and writes audit entries, while 200
    children are forked; each child uses all of these and must finish."""
    from engine import reencrypt, service

    p = env_provider
    svc = EncryptionService(p, metrics=False, audit=audit.AuditLog(
        tmp_path / "job-audit.jsonl", p.audit_key(), fsync=False))
    db = tmp_path / "job.db"
    rows = 2000
    tokens = svc.encrypt_many([f"value {i}" for i in range(rows)])
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", list(enumerate(tokens, 1)))
    conn.close()
    index = BlindIndex(p, "t", "v")
    stop = threading.Event()
    errors: list[BaseException] = []
    runs = [0, 0]

    def job() -> None:
        try:
            while not stop.is_set():
                store = reencrypt.open_store(f"sqlite:///{db}", "t", "id")
                report = reencrypt.inventory(store, ["v"], service=svc, batch_size=250)
                assert report.columns["v"].versions == {1: rows}
                runs[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    def churn() -> None:
        try:
            while not stop.is_set():
                p.record_usage(1, 1)  # rewrites the state file: the next read takes the lock
                p.refresh()
                p.get_key(1)
                _state.clear_cache()
                service.reset_encryption_service()
                engine.get_encryption_service()
                index.compute(["a@example.com"])
                svc.audit.key_access(1, "encrypt")
                runs[1] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def child() -> None:
        p.refresh()
        p.get_key(1)
        _state.clear_cache()
        assert svc.decrypt_many(tokens[:10]).to_list()[0] == b"value 0"
        svc.encrypt_token("child")
        index.compute(["b@example.com"])
        svc.audit.key_access(1, "decrypt")
        engine.get_encryption_service().encrypt_token("x")

    threads = [threading.Thread(target=job), threading.Thread(target=churn)]
    for t in threads:
        t.start()
    hung = failed = 0
    try:
        for _ in range(200):
            status = in_child(child, timeout=20)
            hung += status == 3
            failed += status not in (0, 3)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert hung == 0 and failed == 0, (hung, failed)
    assert runs[0] >= 1 and runs[1] >= 10, runs
    assert audit.verify(tmp_path / "job-audit.jsonl", p.audit_key()).ok
