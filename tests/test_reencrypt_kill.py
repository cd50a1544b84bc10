"""Nothing is lost when the job is killed: SIGKILL at 20 random moments of a 200,000-row run,
on SQLite and on PostgreSQL, a restart after each, then every row is checked; and a job that
keeps blind indexes, killed the same way, leaves every row's index values with its
ciphertexts."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from engine import FieldEncryption, KeyRotationService, RotationPolicy
from engine.reencrypt import AadRule, inventory, open_store
from engine.reencrypt.rowkeys import decode_key

from reencrypt_support import (
    assert_contacts_consistent,
    make_contacts,
    master_key_environment,
    new_database,
)

ROWS = 200_000
KILLS = 20
BATCH = 2000


def _insert(db, rows):
    if db.kind == "postgres":
        with db.connect() as conn:
            with conn.cursor().copy("COPY users (id, ssn, note) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
    else:
        db.run_many("INSERT INTO users (id, ssn, note) VALUES (%s, %s, %s)", rows)


class Checkpoint:
    """Reads how far the job's checkpoint is, over one connection (a new one per look would
    compete with the job for the CPU: PostgreSQL's SCRAM login is deliberately slow)."""

    def __init__(self, db):
        self.conn = db.connect()
        if db.kind == "postgres":
            self.conn.autocommit = True

    def done(self):
        try:
            rows = self.conn.execute("SELECT done FROM engine_reencrypt_progress").fetchall()
        except Exception:  # noqa: BLE001 - the table does not exist before the first run
            if not getattr(self.conn, "autocommit", True):
                self.conn.rollback()
            return 0
        return max((decode_key(r[0]) for r in rows if r[0] is not None), default=0)

    def close(self):
        self.conn.close()


def kill_at_random_moments(command, checkpoint, rows, kills, rng, *, workers_every, jitter):
    """Runs ``command`` ``kills`` times, killing each run with SIGKILL; yields (k, whether run
    k had ended before its kill) after each. Kill k happens at a random moment once the
    checkpoint has passed a random key in the k-th part of the table (the first anywhere in
    the start-up), so the kills are spread over the whole job and each run dies part-way; one
    run in ``workers_every`` uses two worker processes."""
    targets = sorted(rng.randrange(rows * k // kills, rows * (k + 1) // kills)
                     for k in range(kills))
    for k, target in enumerate(targets):
        workers = ["--workers", "2"] if k % workers_every == workers_every - 1 else []
        job = subprocess.Popen(command + workers, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while job.poll() is None and checkpoint.done() < target and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, jitter))
        finished = job.poll() is not None
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        yield k, finished


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_sigkill_at_twenty_random_moments_loses_nothing(kind, request, tmp_path, monkeypatch):
    master_key_environment(monkeypatch, tmp_path)
    from engine import get_encryption_service

    service = get_encryption_service()
    postgres = request.getfixturevalue("postgres") if kind == "postgres" else None
    db = new_database(kind, tmp_path, postgres)
    db.run(f"CREATE TABLE users (id {db.key_type} PRIMARY KEY, ssn TEXT, note TEXT)")
    ids = list(range(1, ROWS + 1))
    ssn = [f"{i:09d}" for i in ids]
    notes = [f"note {i}" for i in ids]
    ssn_tokens = service.encrypt_many(ssn, aad=[f"users:{i}:ssn" for i in ids])
    note_tokens = [r["note"] for r in FieldEncryption(service, bind_context=True).encrypt_column(
        [{"id": i, "note": n} for i, n in zip(ids, notes)], "note")]
    _insert(db, list(zip(ids, ssn_tokens, note_tokens)))
    del ssn_tokens, note_tokens
    KeyRotationService(service.provider, RotationPolicy(), state_dir=tmp_path / "rot").rotate_keys()

    seed = random.randrange(2**32)
    rng = random.Random(seed)
    command = [sys.executable, "-m", "engine", "reencrypt", "--store", db.url, "--table", "users",
               "--key", "id", "--column", "ssn", "--column", "note",
               "--aad", "ssn=template:users:{id}:ssn", "--aad", "note=field-context:id",
               "--batch-size", str(BATCH), "--json"]
    killed_at = []
    checkpoint = Checkpoint(db)
    for k, finished in kill_at_random_moments(command, checkpoint, ROWS, KILLS, rng,
                                              workers_every=5, jitter=0.05):
        assert not finished, f"run {k} ended before its kill (seed {seed})"
        killed_at.append(checkpoint.done())
    checkpoint.close()
    # the kills fell all along the run (the last may follow the last batch's commit, while
    # the job was still closing)
    assert killed_at[KILLS // 2] < ROWS, (killed_at, seed)

    final = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    report = json.loads(final.stdout)
    assert report["complete"] and report["failed"] == 0

    rows = db.rows("SELECT id, ssn, note FROM users ORDER BY id")
    assert [r[0] for r in rows] == ids  # no row lost, none added
    # each value opens once, under its original AAD, to its original plaintext: a value
    # encrypted twice would open to a token, one lost would not open
    assert service.decrypt_many_text([r[1] for r in rows],
                                     aad=[f"users:{i}:ssn" for i in ids]) == ssn
    opened = FieldEncryption(service, bind_context=True).decrypt_column(
        [{"id": r[0], "note": r[2]} for r in rows], "note")
    assert [r["note"] for r in opened] == notes
    store = open_store(db.url, "users", "id")
    counts = inventory(store, ["ssn", "note"], service=service,
                       aad={"ssn": AadRule.template("users:{id}:ssn"),
                            "note": AadRule.field_context("id")}, batch_size=20_000)
    assert counts.all_current()
    assert {name: c.versions for name, c in counts.columns.items()} == \
        {"ssn": {2: ROWS}, "note": {2: ROWS}}


INDEXED_ROWS = 30_000
INDEXED_KILLS = 8


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_sigkill_leaves_each_rows_ciphertexts_and_index_values_together(kind, request, tmp_path,
                                                                        monkeypatch):
    """After every kill, each row's blind index values are those of the key version its
    ciphertexts are under: both old or both new, never one of each."""
    master_key_environment(monkeypatch, tmp_path)
    from engine import get_encryption_service

    service = get_encryption_service()
    postgres = request.getfixturevalue("postgres") if kind == "postgres" else None
    db = new_database(kind, tmp_path, postgres)
    contacts = make_contacts(db, INDEXED_ROWS, service, nulls_every=13)
    KeyRotationService(service.provider, RotationPolicy(), state_dir=tmp_path / "rot").rotate_keys()
    command = [sys.executable, "-m", "engine", "reencrypt", "--store", db.url, "--table",
               "contacts", "--key", "id", "--column", "email", "--column", "last_name",
               "--aad", "email=template:contacts:{id}:email",
               "--index", "email_idx=email:email:16",
               "--index", "name_idx=last_name+birth_year:text:10",
               "--index", "pair_idx=email+last_name:text:20", "--batch-size", "500", "--json"]
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    checkpoint = Checkpoint(db)
    mixed = 0
    for _ in kill_at_random_moments(command, checkpoint, INDEXED_ROWS, INDEXED_KILLS, rng,
                                    workers_every=4, jitter=0.02):
        versions = set(assert_contacts_consistent(contacts, service).tolist()) - {0}
        mixed += versions == {1, 2}
    checkpoint.close()
    assert mixed >= INDEXED_KILLS // 2, f"too few kills fell mid-job (seed {seed})"

    final = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    report = json.loads(final.stdout)
    assert report["complete"] and report["failed"] == 0
    assert set(assert_contacts_consistent(contacts, service).tolist()) == {0, 2}


# ---------------------------------------------------------------- failures across runs

FAILING_ROWS = 24_000
FAILING_EVERY = 97


def _table_with_failures(kind, request, tmp_path, monkeypatch):
    """A ``users (id, ssn)`` table of text tokens under v1 (AAD ``users:{id}:ssn``), every
    97th value unreadable (by turns malformed, sealed for another row, under a version no
    provider holds), then a rotation to v2. Returns (db, command, {(key, reason)})."""
    master_key_environment(monkeypatch, tmp_path)
    from engine import EncryptionService, StaticKeyProvider, get_encryption_service

    service = get_encryption_service()
    postgres = request.getfixturevalue("postgres") if kind == "postgres" else None
    db = new_database(kind, tmp_path, postgres)
    db.run(f"CREATE TABLE users (id {db.key_type} PRIMARY KEY, ssn TEXT, note TEXT)")
    ids = list(range(1, FAILING_ROWS + 1))
    tokens = service.encrypt_many([f"{i:09d}" for i in ids], aad=[f"users:{i}:ssn" for i in ids])
    stranger = EncryptionService(StaticKeyProvider({9: b"\x99" * 32}), metrics=False)
    bad = set()
    for k, i in enumerate(range(FAILING_EVERY, FAILING_ROWS + 1, FAILING_EVERY)):
        reason = ("malformed", "invalid_tag", "unknown_key_version")[k % 3]
        tokens[i - 1] = {"malformed": "not a token",
                         "invalid_tag": tokens[i],  # the next row's value
                         "unknown_key_version": stranger.encrypt_many(["x"])[0]}[reason]
        bad.add((i, reason))
    _insert(db, [(i, t, None) for i, t in zip(ids, tokens)])
    KeyRotationService(service.provider, RotationPolicy(), state_dir=tmp_path / "rot").rotate_keys()
    command = [sys.executable, "-m", "engine", "reencrypt", "--store", db.url, "--table", "users",
               "--key", "id", "--column", "ssn", "--aad", "template:users:{id}:ssn",
               "--batch-size", "150", "--max-failures", "100000", "--json"]
    return db, command, bad


def _moved(db):
    """Values under v2 (the engine's text tokens carry their version: counted by inventory)."""
    from engine import get_encryption_service

    counts = inventory(open_store(db.url, "users", "id"), ["ssn"],
                       aad=AadRule.template("users:{id}:ssn"), service=get_encryption_service())
    return counts.columns["ssn"].versions.get(2, 0)


@pytest.mark.slow
@pytest.mark.parametrize("signal_name, workers", [("SIGKILL", 0), ("SIGINT", 0), ("SIGINT", 2)])
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_an_interrupted_job_resumed_reports_every_failure(kind, signal_name, workers, request,
                                                          tmp_path, monkeypatch):
    """Killed (SIGKILL) or stopped with Ctrl-C (SIGINT to the process group, as a terminal
    sends it) part-way, then run again: the second run's report and exit code count the
    failures of both runs. Ctrl-C exits 130 with one line and, with --json, the report of what
    was committed."""
    db, command, bad = _table_with_failures(kind, request, tmp_path, monkeypatch)
    command += ["--workers", str(workers)] if workers else []
    checkpoint = Checkpoint(db)
    rng = random.Random()
    target = rng.randrange(FAILING_ROWS // 5, FAILING_ROWS // 2)
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    deadline = time.monotonic() + 120
    while job.poll() is None and checkpoint.done() < target and time.monotonic() < deadline:
        time.sleep(0.005)
    assert job.poll() is None, "the job ended before it could be interrupted"
    os.killpg(job.pid, getattr(signal, signal_name))
    out, err = job.communicate(timeout=120)
    stopped_at = checkpoint.done()
    checkpoint.close()
    assert stopped_at < FAILING_ROWS
    if signal_name == "SIGINT":
        assert job.returncode == 130, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "run it again to resume" in err
        partial = json.loads(out)
        assert not partial["complete"] and partial["rows"] == stopped_at
        assert partial["reencrypted"] == _moved(db)  # what it says is what it committed
        assert {(f["key"], f["reason"]) for f in partial["failures"]} == \
            {(i, r) for i, r in bad if i <= stopped_at}
    else:
        assert job.returncode == -signal.SIGKILL
    final = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert final.returncode == 1, final.stderr  # failures, from either run
    report = json.loads(final.stdout)
    assert report["complete"] and report["rows"] == FAILING_ROWS
    assert report["resumed_rows"] == stopped_at
    assert report["failed"] == len(bad)
    assert {(f["key"], f["reason"]) for f in report["failures"]} == bad
    assert report["reencrypted"] == FAILING_ROWS - len(bad) == _moved(db)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_dead_worker_process_exits_3_and_the_job_resumes(kind, request, tmp_path,
                                                           monkeypatch):
    db, command, bad = _table_with_failures(kind, request, tmp_path, monkeypatch)
    command += ["--workers", "2"]
    checkpoint = Checkpoint(db)
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    deadline = time.monotonic() + 120
    while job.poll() is None and checkpoint.done() < FAILING_ROWS // 5 \
            and time.monotonic() < deadline:
        time.sleep(0.005)
    workers = [pid for pid in _children(job.pid) if b"spawn_main" in _cmdline(pid)
               and b"resource_tracker" not in _cmdline(pid)]
    assert workers and job.poll() is None
    os.kill(workers[0], signal.SIGKILL)
    out, err = job.communicate(timeout=120)
    checkpoint.close()
    assert job.returncode == 3, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "worker process died" in err and "run it again to resume" in err
    final = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert final.returncode == 1, final.stderr
    report = json.loads(final.stdout)
    assert report["complete"] and report["failed"] == len(bad)


def _children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rpartition(b")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
