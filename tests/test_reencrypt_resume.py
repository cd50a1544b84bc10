"""A job interrupted and run again: its report covers every run (failures found before the
interruption included), an interrupted job says exactly what it committed, and a run resumes
only the checkpoints of the same job (same target key version, same AAD rules). Also what
validation refuses before anything runs: a plain-text column with NULLs, a worker whose
current key version is not the job's."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from engine import EncryptionService, StaticKeyProvider
from engine.reencrypt import (
    AadRule,
    JobTakenOver,
    NotEncrypted,
    ReencryptionInterrupted,
    WorkerKeyMismatch,
    inventory,
    open_store,
    reencrypt,
)
from engine.reencrypt.transform import KeyCheck

from reencrypt_support import (
    INDEX_SECRET,
    K1,
    K2,
    K3,
    StaticServiceFactory,
    Users,
    assert_application_reads,
    make_users,
    new_database,
    services,
)

RULES = {"ssn": AadRule.template("users:{id}:ssn"), "note": AadRule.field_context("id")}
STRANGER = EncryptionService(StaticKeyProvider({7: b"\x77" * 32}), metrics=False)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    postgres = request.getfixturevalue("postgres") if request.param == "postgres" else None
    return new_database(request.param, tmp_path, postgres)


def spoil(db, table, n, old, every):
    """Every ``every``-th row's ssn made unreadable, by turns malformed, under an unknown key
    version, sealed for another row; returns {(key, reason)}."""
    bad = set()
    for k, i in enumerate(range(every, n + 1, every)):
        reason = ("malformed", "unknown_key_version", "invalid_tag")[k % 3]
        value = {"malformed": "123-45-6789",
                 "unknown_key_version": STRANGER.encrypt_many(["x"], aad=[f"users:{i}:ssn"])[0],
                 "invalid_tag": old.encrypt_many(["y"], aad=[f"users:{i + 1}:ssn"])[0]}[reason]
        db.run(f"UPDATE {table} SET ssn = %s WHERE id = %s", (value, i))
        bad.add((i, reason))
    return bad


def comparable(report):
    """A report's findings, without what depends on the run (time, rows this run)."""
    d = report.to_dict()
    for volatile in ("store", "table", "duration_s", "rows_per_s", "resumed_rows"):
        d.pop(volatile)
    d["failures"] = sorted((f["column"], f["key"], f["reason"]) for f in d["failures"])
    return d


class Crash(Exception):
    pass


def stop_after(batches, how):
    seen = []

    def observer(_event, _detail):
        seen.append(1)
        if len(seen) > batches:
            raise KeyboardInterrupt if how == "ctrl-c" else Crash

    return observer


def moved_values(store, new):
    """Values now under v2, in every column."""
    counts = inventory(store, Users.COLUMNS, aad=RULES, service=new)
    return sum(c.versions.get(2, 0) for c in counts.columns.values())


@pytest.mark.parametrize("how", ["crash", "ctrl-c"])
@pytest.mark.parametrize("seed", range(3))
def test_a_resumed_job_reports_what_every_run_found(db, how, seed):
    """Interrupted after any batches (of any partitions), as often as it happens, and run
    again: the final report is that of a run that was never interrupted, failures before
    every interruption included; an interrupted run's own report says exactly what it
    committed."""
    rng = random.Random(seed)
    old, new = services()
    n, every = 500, rng.choice([13, 41, 97])
    make_users(db, n, old, nulls_every=11)
    make_users(db, n, old, table="control", nulls_every=11)
    bad = spoil(db, "users", n, old, every)
    assert spoil(db, "control", n, old, every) == bad
    size, parts = rng.choice([25, 60, 128]), rng.choice([None, 2, 3])
    store = open_store(db.url, "users", "id")
    options = dict(aad=RULES, service=new, batch_size=size, partitions=parts)
    control = reencrypt(open_store(db.url, "control", "id"), Users.COLUMNS, **options)
    assert {(f.key, f.reason) for f in control.failures} == bad and control.failed == len(bad)

    runs = 0
    while True:
        runs += 1
        try:
            report = reencrypt(store, Users.COLUMNS, observer=stop_after(rng.randrange(4), how)
                               if runs < 6 else None, **options)
            break
        except Crash:
            pass
        except ReencryptionInterrupted as stopped:
            partial = stopped.report
            assert not partial.complete
            # what it says it did is what the table holds: every value it counts as moved
            # is under v2, none other
            assert partial.reencrypted == moved_values(store, new)
            assert {(f.key, f.reason) for f in partial.failures} <= bad
    assert runs > 1
    assert comparable(report) == comparable(control)
    assert report.resumed_rows < report.rows == n
    assert report.reencrypted == moved_values(store, new)


def test_a_job_interrupted_twice_keeps_the_failures_of_the_first_run(db):
    """The example of the issue: failures before the checkpoint, 'failed 0' after resuming."""
    old, new = services()
    make_users(db, 400, old)
    bad = spoil(db, "users", 40, old, 10)  # all in the first batch
    store = open_store(db.url, "users", "id")
    for _ in range(2):
        with pytest.raises(Crash):
            reencrypt(store, ["ssn"], aad={"ssn": RULES["ssn"]}, service=new, batch_size=100,
                      observer=stop_after(1, "crash"))
    report = reencrypt(store, ["ssn"], aad={"ssn": RULES["ssn"]}, service=new, batch_size=100)
    assert report.failed == len(bad) == 4
    assert {(f.key, f.reason) for f in report.failures} == bad
    assert report.resumed_rows == 200 and report.rows == 400
    assert report.reencrypted == 400 - 4


def test_failures_listed_stay_within_max_failures_across_runs(db):
    old, new = services()
    make_users(db, 300, old)
    bad = spoil(db, "users", 300, old, 5)  # 60 failures
    store = open_store(db.url, "users", "id")
    options = dict(aad={"ssn": RULES["ssn"]}, service=new, batch_size=50, max_failures=7)
    for _ in range(2):
        with pytest.raises(Crash):
            reencrypt(store, ["ssn"], observer=stop_after(1, "crash"), **options)
    report = reencrypt(store, ["ssn"], **options)
    assert report.failures_total == report.failed == len(bad)
    assert len(report.failures) == 7 and {(f.key, f.reason) for f in report.failures} <= bad
    none_listed = reencrypt(store, ["ssn"], **(options | {"max_failures": 0}))
    assert none_listed.failed == len(bad) and none_listed.failures == []


# ---------------------------------------------------------------- a job's identity


def test_a_job_to_a_newer_version_does_not_resume_an_older_jobs_checkpoints(db):
    old, v2 = services()
    v3 = EncryptionService(StaticKeyProvider({1: K1, 2: K2, 3: K3}, index_key=INDEX_SECRET),
                           metrics=False)
    users = make_users(db, 600, old)
    store = open_store(db.url, "users", "id")
    with pytest.raises(Crash):  # a job to v2 stops after three batches
        reencrypt(store, Users.COLUMNS, aad=RULES, service=v2, batch_size=100,
                  observer=stop_after(3, "crash"))
    report = reencrypt(store, Users.COLUMNS, aad=RULES, service=v3, batch_size=100)
    assert report.resumed_rows == 0 and report.rows == 600  # a pass of its own, whole
    assert report.reencrypted == 4 * 600
    counts = inventory(store, Users.COLUMNS, aad=RULES, service=v3)
    assert {name: c.versions for name, c in counts.columns.items()} == \
        dict.fromkeys(Users.COLUMNS, {3: 600})
    assert_application_reads(users, v3)
    # the v2 job, were it run again, finds its checkpoints and finishes its own pass
    again = reencrypt(store, Users.COLUMNS, aad=RULES, service=v2, batch_size=100)
    assert again.resumed_rows == 300


def test_a_job_with_another_aad_rule_does_not_resume(db):
    """Failures found under one AAD rule must not be carried into a job given another (the
    operator corrected it), nor its checkpoint skip the rows that failed."""
    old, new = services()
    make_users(db, 300, old)
    db.run("ALTER TABLE users ADD COLUMN label TEXT")
    db.run("UPDATE users SET label = 'ssn'")
    store = open_store(db.url, "users", "id")
    with pytest.raises(Crash):
        reencrypt(store, ["ssn"], aad={"ssn": AadRule.template("users:{id}:ssn")},
                  service=new, batch_size=50, observer=stop_after(2, "crash"))
    report = reencrypt(store, ["ssn"], aad={"ssn": AadRule.template("users:{id}:{label}")},
                       service=new, batch_size=50)
    assert report.resumed_rows == 0 and report.rows == 300
    assert report.reencrypted == 200 and report.already_current == 100


# ---------------------------------------------------------------- validation


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.one_of(st.none(), st.text(min_size=0, max_size=20)),
                       min_size=1, max_size=30).filter(lambda v: any(x is not None for x in v)),
       batch_size=st.integers(1, 40))
def test_validation_refuses_a_plain_text_column_with_nulls(tmp_path_factory, values,
                                                           batch_size):
    db = new_database("sqlite", tmp_path_factory.mktemp("plain"))
    db.run("CREATE TABLE t (id INTEGER PRIMARY KEY, ssn TEXT)")
    db.run_many("INSERT INTO t VALUES (%s, %s)", list(enumerate(values)))
    _, new = services()
    sample = values[:batch_size]
    store = open_store(db.url, "t", "id")
    for job in (inventory, reencrypt):
        if all(v is None for v in sample):  # nothing to judge: the job runs, and counts
            report = job(store, ["ssn"], service=new, batch_size=batch_size)
            assert report.columns["ssn"].malformed == sum(v is not None for v in values)
            continue
        with pytest.raises(NotEncrypted, match="'ssn'"):
            job(store, ["ssn"], service=new, batch_size=batch_size)
    assert not db.has_table("engine_reencrypt_progress") or all(v is None for v in sample)


def test_validation_refuses_plain_text_with_nulls_in_postgresql(postgres, tmp_path):
    db = new_database("postgres", tmp_path, postgres)
    db.run("CREATE TABLE t (id BIGINT PRIMARY KEY, ssn TEXT)")
    db.run_many("INSERT INTO t VALUES (%s, %s)",
                [(i, None if i % 3 else f"plain {i}") for i in range(30)])
    _, new = services()
    for job in (inventory, reencrypt):
        with pytest.raises(NotEncrypted):
            job(open_store(db.url, "t", "id"), ["ssn"], service=new)


@pytest.mark.parametrize("worker", ["newer", "older"])
def test_a_worker_whose_current_version_is_not_the_jobs_is_refused(db, worker):
    """The job encrypts under v2; a worker that would encrypt under v3 (a rotation it saw
    first), or under v1 while it holds v2 (an older configuration), seals nothing."""
    old, new = services()
    make_users(db, 200, old)
    snapshot = db.rows("SELECT * FROM users ORDER BY id")
    keys = ((1, K1), (2, K2), (3, K3)) if worker == "newer" else ((1, K1), (2, K2))
    factory = StaticServiceFactory(keys, current=3 if worker == "newer" else 1)
    check = KeyCheck.of(new)
    with pytest.raises(WorkerKeyMismatch, match="version"):
        check.verify(factory())
    check.verify(StaticServiceFactory(((1, K1), (2, K2)), current=2)())  # the same: accepted
    with pytest.raises(WorkerKeyMismatch):  # a worker process builds its own service
        reencrypt(open_store(db.url, "users", "id"), ["card"], service=new,
                  service_factory=factory, workers=1)
    assert db.rows("SELECT * FROM users ORDER BY id") == snapshot


@pytest.mark.parametrize("second_run", ["finishes", "stops"])
def test_a_second_run_of_the_same_job_takes_it_over(db, second_run):
    """Two runs of one job at once (a scheduled run overlapping a manual one): the one that
    started last owns the checkpoints, and the first stops at its next batch without
    writing it, instead of both writing each other's checkpoints."""
    old, new = services()
    make_users(db, 500, old)
    store = open_store(db.url, "users", "id")
    options = dict(aad={"ssn": RULES["ssn"]}, service=new, batch_size=50)
    second = []

    def start_another_run(_event, _detail):
        if second:
            return
        second.append(None)  # while the first run is between its first read and write
        if second_run == "finishes":
            second.append(reencrypt(store, ["ssn"], **options))
            return
        with pytest.raises(Crash):
            reencrypt(store, ["ssn"], observer=stop_after(3, "crash"), **options)

    with pytest.raises(JobTakenOver):
        reencrypt(store, ["ssn"], observer=start_another_run, **options)
    if second_run == "finishes":
        assert second[1].complete and second[1].reencrypted == 500
        assert db.rows("SELECT COUNT(*) FROM engine_reencrypt_progress")[0][0] == 0
        return
    # the second run's checkpoint stands: resumed, the job counts its three batches
    report = reencrypt(store, ["ssn"], **options)
    assert report.resumed_rows == 150 and report.reencrypted == 500 and report.changed == 0
    assert inventory(store, ["ssn"], aad={"ssn": RULES["ssn"]}, service=new).all_current()


def test_unreadable_checkpoints_start_a_new_pass(db):
    old, new = services()
    make_users(db, 300, old)
    store = open_store(db.url, "users", "id")
    options = dict(aad={"ssn": RULES["ssn"]}, service=new, batch_size=50)
    with pytest.raises(Crash):
        reencrypt(store, ["ssn"], observer=stop_after(2, "crash"), **options)
    db.run("UPDATE engine_reencrypt_progress SET result = 'not what a run wrote'")
    report = reencrypt(store, ["ssn"], **options)
    assert report.resumed_rows == 0 and report.rows == 300
    assert report.reencrypted == 200 and report.already_current == 100
