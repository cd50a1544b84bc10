"""Re-encryption on Dask distributed: a LocalCluster of worker processes, and real `dask
scheduler` / `dask worker` processes started from the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from engine import BlindIndex, BlindIndexes, KeyRotationService, RotationPolicy
from engine.reencrypt import (
    AadRule,
    Column,
    SchedulerUnavailable,
    SealedLayout,
    executors,
    inventory,
    open_store,
    reencrypt,
)
from engine.testing.postgres import free_port

from reencrypt_support import (
    MASTER,
    Contacts,
    Users,
    assert_application_reads,
    assert_contacts_consistent,
    assert_dataset_reads,
    contact_indexes,
    file_digest,
    make_contacts,
    make_users,
    new_database,
    write_dataset,
)

RULES = {"ssn": AadRule.template("users:{id}:ssn"), "note": AadRule.field_context("id")}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """The environment every process of these tests builds its keys from (the workers of a
    cluster read it when they start)."""
    state = tmp_path_factory.mktemp("keys")
    env = {"ENCRYPTION_MASTER_KEY": MASTER, "ENGINE_KEY_STATE_FILE": str(state / "keys.json"),
           "ENCRYPTION_KDF_ITERATIONS": "1000"}
    saved = {k: os.environ.get(k) for k in [*env, "VAULT_ENABLED", "ENGINE_AUDIT_LOG"]}
    os.environ.update(env)
    for k in ("VAULT_ENABLED", "ENGINE_AUDIT_LOG"):
        os.environ.pop(k, None)
    from engine.service import get_encryption_service, reset_encryption_service

    reset_encryption_service()
    yield get_encryption_service(), state
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    reset_encryption_service()


@pytest.fixture(scope="module")
def cluster(keys):
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as local:
        yield local


def rotate(service, state):
    KeyRotationService(service.provider, RotationPolicy(), state_dir=state / "rot").rotate_keys()


def test_key_ranges_and_files_become_tasks_on_a_local_cluster(keys, cluster, tmp_path):
    service, state = keys
    db = new_database("sqlite", tmp_path)
    users = make_users(db, 2000, service)
    dataset = str(tmp_path / "users")
    plain = write_dataset(dataset, service, files=4, rows=300)
    rotate(service, state)
    version = service.provider.get_current_key().version

    calls = []
    report = reencrypt(open_store(db.url, "users", "id"), Users.COLUMNS, aad=RULES,
                       dask=cluster.scheduler_address, partitions=5, batch_size=150,
                       progress=lambda done, total: calls.append(done))
    assert report.complete and report.rows == 2000 and report.reencrypted == 8000
    # the tasks report their batches as they commit them: the bar moves within a key range
    # (of about 400 rows), and each row counts once
    assert calls == sorted(calls) and calls[-1] == 2000, calls
    assert min(b - a for a, b in zip(calls, calls[1:]) if b > a) <= 150, calls
    assert_application_reads(users, service)
    assert db.rows("SELECT COUNT(*) FROM engine_reencrypt_progress")[0][0] == 0

    columns = [Column("ssn", AadRule.template("users:{id}:ssn")),
               Column("email", sealed=SealedLayout())]
    store = open_store(f"parquet://{dataset}")
    report = reencrypt(store, columns, dask=cluster.scheduler_address, batch_size=100)
    assert report.complete and report.rows == 1200 and report.failed == 0
    assert_dataset_reads(plain, service, version)
    assert inventory(store, columns, dask=cluster.scheduler_address).all_current()


def test_tasks_keep_blind_indexes_with_the_values(keys, cluster, tmp_path):
    service, state = keys
    db = new_database("sqlite", tmp_path)
    contacts = make_contacts(db, 1200, service, nulls_every=7)
    dataset = str(tmp_path / "users")
    dataset_indexes = BlindIndexes(BlindIndex(service.provider, "users", "ssn",
                                              normalizer="digits", bits=12))
    plain = write_dataset(dataset, service, files=3, rows=200, indexes=dataset_indexes)
    rotate(service, state)
    version = service.provider.get_current_key().version
    # a worker's provider looks at the key state file again after at most 0.25 s: until then
    # it may still name the version before (the job would stop with WorkerKeyMismatch)
    from distributed import Client

    from engine import get_encryption_service

    with Client(cluster.scheduler_address) as client:
        deadline = time.monotonic() + 60
        while set(client.run(lambda: get_encryption_service().provider.get_current_key()
                             .version).values()) != {version}:
            assert time.monotonic() < deadline
            time.sleep(0.05)

    report = reencrypt(open_store(db.url, "contacts", "id"), ["email", "last_name"],
                       aad={"email": AadRule.template(Contacts.AAD)},
                       indexes=contact_indexes(service.provider),
                       dask=cluster.scheduler_address, partitions=4, batch_size=100)
    assert report.complete and report.failed == 0
    assert set(assert_contacts_consistent(contacts, service).tolist()) == {0, version}

    report = reencrypt(open_store(f"parquet://{dataset}"),
                       [Column("ssn", AadRule.template("users:{id}:ssn"))],
                       indexes=dataset_indexes, dask=cluster.scheduler_address, batch_size=64)
    assert report.complete and report.failed == 0
    for name, (_ids, ssn, _emails) in plain.items():
        assert pq.read_table(name)["ssn_idx"].to_pylist() == \
            dataset_indexes["ssn_idx"].compute(ssn, version=version)


def test_an_unreachable_scheduler_is_an_error_before_anything_is_written(keys, tmp_path,
                                                                         monkeypatch):
    service, _ = keys
    db = new_database("sqlite", tmp_path)
    make_users(db, 20, service)
    digest = file_digest(db.path)
    monkeypatch.setattr(executors, "DASK_CONNECT_TIMEOUT_S", 2.0)
    started = time.monotonic()
    with pytest.raises(SchedulerUnavailable) as info:
        reencrypt(open_store(db.url, "users", "id"), ["card"],
                  dask=f"tcp://127.0.0.1:{free_port()}")
    assert time.monotonic() - started < 30
    assert "does not answer" in str(info.value)
    assert file_digest(db.path) == digest


@pytest.mark.slow
def test_a_task_run_again_after_its_worker_died_resumes_where_it_committed(keys, tmp_path):
    """Dask runs a task again when its worker dies: the new attempt starts where the dead one
    committed (not where the plan said), so the report still tells moved values from values
    that were current, and nothing is lost or sealed twice."""
    import threading

    from distributed import Client, LocalCluster

    from engine.reencrypt.rowkeys import decode_key

    service, state = keys
    db = new_database("sqlite", tmp_path)
    n = 30_000
    db.run("CREATE TABLE users (id INTEGER PRIMARY KEY, ssn TEXT)")
    ids = list(range(1, n + 1))
    db.run_many("INSERT INTO users VALUES (%s, %s)", list(zip(ids, service.encrypt_many(
        [f"{i:09d}" for i in ids], aad=[f"users:{i}:ssn" for i in ids]))))
    rotate(service, state)
    aad = {"ssn": AadRule.template("users:{id}:ssn")}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as local, Client(local) as client:
        outcome = {}

        def job():
            try:
                outcome["report"] = reencrypt(open_store(db.url, "users", "id"), ["ssn"],
                                              aad=aad, dask=client, partitions=2,
                                              batch_size=100)
            except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
                outcome["error"] = exc

        runner = threading.Thread(target=job)
        runner.start()
        deadline = time.monotonic() + 120
        started = False  # both partitions have committed batches
        while not started and runner.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
            try:
                done = [decode_key(r[0]) for r in
                        db.rows("SELECT done FROM engine_reencrypt_progress")]
            except Exception:  # noqa: BLE001 - not created yet
                continue
            started = len(done) == 2 and None not in done
        assert started and runner.is_alive(), outcome
        pid = next(iter(client.run(os.getpid).values()))
        os.kill(pid, signal.SIGKILL)
        runner.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    report = outcome["report"]
    assert report.complete and report.rows == n and report.changed == 0
    assert report.reencrypted == n and report.already_current == 0
    rows = db.rows("SELECT id, ssn FROM users ORDER BY id")
    assert service.decrypt_many_text([r[1] for r in rows],
                                     aad=[f"users:{i}:ssn" for i in ids]) == \
        [f"{i:09d}" for i in ids]


@pytest.mark.slow
def test_ctrl_c_stops_the_tasks_still_running_on_the_cluster(keys, cluster, tmp_path):
    """Cancelling a Dask future does not stop a task that runs: after Ctrl-C the job gives up
    its checkpoints, so each task stops at its next batch, and the report printed (what was
    committed) stays true."""
    from engine.reencrypt.rowkeys import decode_key

    service, state = keys
    db = new_database("sqlite", tmp_path)
    n = 40_000
    db.run("CREATE TABLE users (id INTEGER PRIMARY KEY, ssn TEXT)")
    ids = list(range(1, n + 1))
    db.run_many("INSERT INTO users VALUES (%s, %s)",
                list(zip(ids, service.encrypt_many([f"{i:09d}" for i in ids]))))
    rotate(service, state)
    version = service.provider.get_current_key().version
    job = subprocess.Popen(
        [sys.executable, "-m", "engine", "reencrypt", "--store", db.url, "--table", "users",
         "--key", "id", "--column", "ssn", "--dask", cluster.scheduler_address,
         "--partitions", "2", "--batch-size", "20", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120

    def checkpoints():
        try:
            return [decode_key(r[0]) for r in
                    db.rows("SELECT done FROM engine_reencrypt_progress ORDER BY part")]
        except Exception:  # noqa: BLE001 - not created yet
            return []

    while job.poll() is None and time.monotonic() < deadline:
        done = checkpoints()
        if len(done) == 2 and None not in done:
            break
        time.sleep(0.01)
    job.send_signal(signal.SIGINT)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    stopped = checkpoints()
    time.sleep(2)  # a task still running would move its checkpoint meanwhile
    assert checkpoints() == stopped
    partial = json.loads(out)
    moved = inventory(open_store(db.url, "users", "id"), ["ssn"]).columns["ssn"].versions
    assert partial["reencrypted"] == moved.get(version, 0) > 0 and not partial["complete"]
    final = reencrypt(open_store(db.url, "users", "id"), ["ssn"], dask=cluster.scheduler_address,
                      partitions=2, batch_size=500)
    assert final.complete and final.reencrypted == n


def _start(args, env, log):
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_the_command_line_on_real_scheduler_and_worker_processes(keys, postgres, tmp_path):
    service, state = keys
    db = new_database("postgres", tmp_path, postgres)
    users = make_users(db, 1500, service)
    rotate(service, state)
    env = dict(os.environ)
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    scheduler_file = str(tmp_path / "scheduler.json")
    log = open(tmp_path / "dask.log", "wb")
    scheduler = _start([dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                        "--no-dashboard", "--scheduler-file", scheduler_file], env, log)
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(scheduler_file) and time.monotonic() < deadline:
            time.sleep(0.1)
        worker = _start([dask, "worker", "--scheduler-file", scheduler_file, "--nworkers", "2",
                         "--nthreads", "1", "--no-dashboard"], env, log)
        with open(scheduler_file) as f:
            address = json.load(f)["address"]
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=60)
        done = subprocess.run(
            [sys.executable, "-m", "engine", "reencrypt", "--store", db.url, "--table", "users",
             "--key", "id", "--column", "ssn", "--column", "email", "--column", "card",
             "--column", "note", "--aad", "ssn=template:users:{id}:ssn",
             "--aad", "note=field-context:id", "--dask", address, "--partitions", "4",
             "--batch-size", "200", "--json"],
            env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["reencrypted"] == 6000 and report["complete"] and report["failed"] == 0
        assert_application_reads(users, service)
    finally:
        for process in (worker, scheduler):
            if process is not None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in (worker, scheduler):
            if process is not None:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        log.close()
