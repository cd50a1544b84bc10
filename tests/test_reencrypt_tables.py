"""The re-encryption job on real tables: SQLite files and a real PostgreSQL server, the same
tests for both."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from engine import EncryptionService, KeyRotationService, RotationPolicy, StaticKeyProvider
from engine.audit import AuditLog, read_entries, verify
from engine.errors import InvalidArgument
from engine.metrics import EngineMetrics
from engine.reencrypt import (
    AadRule,
    ColumnNotFound,
    NotEncrypted,
    StoreUnavailable,
    TableNotFound,
    UnknownStore,
    WorkerKeyMismatch,
    WrongKeyOrAad,
    handover,
    inventory,
    open_store,
    reencrypt,
)
from engine.reencrypt.rowkeys import decode_key
from engine.rotation import VersionStillInUse

from reencrypt_support import (
    K1,
    Users,
    assert_application_reads,
    file_digest,
    make_users,
    master_key_environment,
    new_database,
    services,
)

RULES = {"ssn": AadRule.template("users:{id}:ssn"), "note": AadRule.field_context("id")}


def rules(*columns):
    """The AAD rules of these columns (a job refuses a rule for a column it does not have)."""
    return {c: RULES[c] for c in columns if c in RULES}


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    postgres = request.getfixturevalue("postgres") if request.param == "postgres" else None
    return new_database(request.param, tmp_path, postgres)


def store_of(db, table="users", key="id"):
    return open_store(db.url, table, key)


def test_inventory_reencrypt_inventory(db):
    old, new = services()
    users = make_users(db, 2500, old, nulls_every=7)
    store = store_of(db)
    before = inventory(store, Users.COLUMNS, aad=RULES, service=new, batch_size=400)
    assert before.current_version == 2 and not before.all_current()
    nulls = 2500 // 7
    assert before.columns["ssn"].versions == {1: 2500 - nulls} and before.columns["ssn"].null == nulls
    assert before.values_under(1) == {"users.ssn": 2500 - nulls, "users.email": 2500,
                                      "users.card": 2500, "users.note": 2500}

    report = reencrypt(store, Users.COLUMNS, aad=RULES, service=new, batch_size=400)
    assert report.complete and report.rows == 2500 and report.target_version == 2
    assert report.reencrypted == 4 * 2500 - nulls and report.failed == 0
    assert report.scanned == 4 * 2500 and report.already_current == 0

    after = inventory(store, Users.COLUMNS, aad=RULES, service=new)
    assert after.all_current() and after.values_under(1) == dict.fromkeys(before.values_under(1), 0)
    assert_application_reads(users, new)
    # the checkpoints of a finished job are gone: a second run is a new, empty pass
    assert db.rows("SELECT COUNT(*) FROM engine_reencrypt_progress")[0][0] == 0
    again = reencrypt(store, Users.COLUMNS, aad=RULES, service=new, batch_size=1000)
    assert again.reencrypted == 0 and again.already_current == 4 * 2500 - nulls


def test_unreadable_values_are_reported_and_never_written(db):
    old, new = services()
    make_users(db, 300, old)
    stranger = EncryptionService(StaticKeyProvider({3: b"\x33" * 32}), metrics=False)
    bad = {5: "123-45-6789", 6: stranger.encrypt_many(["x"], aad=["users:6:ssn"])[0],
           7: old.encrypt_many(["y"], aad=["users:8:ssn"])[0]}  # sealed for another row
    for i, value in bad.items():
        db.run("UPDATE users SET ssn = %s WHERE id = %s", (value, i))
    report = reencrypt(store_of(db), ["ssn"], aad=rules("ssn"), service=new, batch_size=64)
    c = report.columns["ssn"]
    assert (c.malformed, c.unknown_key_version, c.invalid_tag) == (1, 1, 1)
    assert c.reencrypted == 297 and report.failed == 3
    assert sorted((f.key, f.reason) for f in report.failures) == [
        (5, "malformed"), (6, "unknown_key_version"), (7, "invalid_tag")]
    for i, value in bad.items():
        assert db.rows("SELECT ssn FROM users WHERE id = %s", (i,))[0][0] == value


def test_a_job_resumes_after_a_crash_without_redoing_committed_batches(db):
    old, new = services()
    users = make_users(db, 1000, old)
    store = store_of(db)
    batches = []

    def crash_on_fourth(event, detail):
        batches.append(detail["keys"][-1])
        if len(batches) == 4:
            raise RuntimeError("the job dies here")

    with pytest.raises(RuntimeError):
        reencrypt(store, Users.COLUMNS, aad=RULES, service=new, batch_size=100,
                  observer=crash_on_fourth)
    # three batches committed, with their checkpoint; the fourth not at all
    done = db.rows("SELECT done FROM engine_reencrypt_progress")
    assert [decode_key(d[0]) for d in done] == [300]
    moved = inventory(store, ["card"], service=new).columns["card"].versions
    assert moved == {2: 300, 1: 700}
    report = reencrypt(store, Users.COLUMNS, aad=RULES, service=new, batch_size=100)
    # the report covers the whole table: the 300 rows of the first run, 700 of this one
    assert report.rows == 1000 and report.resumed_rows == 300
    assert report.reencrypted == 4 * 1000 and report.scanned == 4 * 1000
    assert_application_reads(users, new)
    assert inventory(store, Users.COLUMNS, aad=RULES, service=new).all_current()


def test_a_value_the_application_changes_meanwhile_is_left_for_the_next_pass(db):
    old, new = services()
    make_users(db, 500, old)
    store = store_of(db)
    app_value = {}

    def application_writes(event, detail):
        if not app_value:  # between the job's read and its write of the first batch
            key = detail["keys"][10]
            app_value[key] = old.encrypt_many(["changed by the app"], aad=[f"users:{key}:ssn"])[0]
            db.run("UPDATE users SET ssn = %s WHERE id = %s", (app_value[key], key))

    report = reencrypt(store, ["ssn"], aad=rules("ssn"), service=new, batch_size=100,
                       observer=application_writes)
    (key, value), = app_value.items()
    assert report.changed == 1 and report.reencrypted == 499
    assert db.rows("SELECT ssn FROM users WHERE id = %s", (key,))[0][0] == value  # not lost
    second = reencrypt(store, ["ssn"], aad=rules("ssn"), service=new, batch_size=100)
    assert second.reencrypted == 1 and second.already_current == 499
    token = db.rows("SELECT ssn FROM users WHERE id = %s", (key,))[0][0]
    assert new.decrypt_text(token, aad=f"users:{key}:ssn") == "changed by the app"


@pytest.mark.parametrize("case", ["no table", "no column", "no aad column", "key not primary",
                                  "plain text", "wrong aad", "integer column"])
def test_bad_input_is_refused_before_anything_is_written(db, case):
    old, new = services()
    make_users(db, 50, old)
    table, key, columns, aad, error = "users", "id", ["ssn"], rules("ssn"), None
    if case == "no table":
        table, error = "clients", TableNotFound
    elif case == "no column":
        columns, error = ["ssn", "phone"], ColumnNotFound
    elif case == "no aad column":
        aad, error = {"ssn": AadRule.template("users:{user_id}:ssn")}, ColumnNotFound
    elif case == "key not primary":
        key, error = "other", ColumnNotFound
    elif case == "plain text":
        columns, aad, error = ["other"], None, NotEncrypted
    elif case == "wrong aad":
        aad, error = {"ssn": AadRule.template("customers:{id}:ssn")}, WrongKeyOrAad
    else:
        columns, aad, error = ["id"], None, ColumnNotFound
    snapshot = db.rows("SELECT * FROM users ORDER BY id")
    digest = file_digest(db.path) if db.kind == "sqlite" else None
    with pytest.raises(error) as info:
        reencrypt(open_store(db.url, table, key), columns, aad=aad, service=new)
    assert isinstance(info.value, InvalidArgument)  # a usage error, with the name in it
    assert db.rows("SELECT * FROM users ORDER BY id") == snapshot
    assert not db.has_table("engine_reencrypt_progress")
    if digest is not None:
        assert file_digest(db.path) == digest  # not a byte of the file changed


def test_local_worker_processes_share_the_cryptography(db, monkeypatch, tmp_path):
    master_key_environment(monkeypatch, tmp_path)
    from engine import get_encryption_service

    svc = get_encryption_service()
    old = EncryptionService(svc.provider, metrics=False)
    users = make_users(db, 3000, old)
    KeyRotationService(svc.provider, RotationPolicy(), state_dir=tmp_path / "rot").rotate_keys()
    seen = []
    report = reencrypt(store_of(db), Users.COLUMNS, aad=RULES, workers=2, batch_size=250,
                       partitions=3, progress=lambda done, total: seen.append((done, total)))
    assert report.complete and report.reencrypted == 4 * 3000
    assert seen[0] == (0, 3000)  # the total shows before the first batch
    assert seen[-1] == (3000, 3000) and len(seen) == 1 + 12
    assert_application_reads(users, get_encryption_service())


def test_workers_build_the_coordinators_provider_from_its_configuration(db, monkeypatch,
                                                                         tmp_path):
    """The service given to the job has its own state file, not the one the workers' environment
    names: the workers still hold its keys, because they build the provider from its
    configuration (and read only the master key from their environment)."""
    from engine import EnvironmentKeyProvider
    from engine.keys import DerivationPolicy

    master_key_environment(monkeypatch, tmp_path)
    monkeypatch.setenv("ENGINE_KEY_STATE_FILE", str(tmp_path / "elsewhere" / "keys.json"))
    provider = EnvironmentKeyProvider(state_path=tmp_path / "own" / "keys.json",
                                      policy=DerivationPolicy(iterations=1000))
    users = make_users(db, 400, EncryptionService(provider, metrics=False))
    provider.create_version()
    service = EncryptionService(provider, metrics=False)
    report = reencrypt(store_of(db), Users.COLUMNS, aad=RULES, service=service, workers=2,
                       batch_size=100)
    assert report.complete and report.reencrypted == 4 * 400
    assert_application_reads(users, service)
    assert not (tmp_path / "elsewhere").exists()  # no worker looked at the environment's file


def test_a_worker_whose_key_is_not_the_coordinators_seals_nothing(db, monkeypatch, tmp_path):
    old, new = services()  # the data's keys
    make_users(db, 200, old)
    snapshot = db.rows("SELECT * FROM users ORDER BY id")
    master_key_environment(monkeypatch, tmp_path)  # the workers' environment: other keys
    with pytest.raises(WorkerKeyMismatch):
        reencrypt(store_of(db), ["card"], service=new, workers=1)
    assert db.rows("SELECT * FROM users ORDER BY id") == snapshot
    with pytest.raises(InvalidArgument):  # workers build their service: it must pickle
        reencrypt(store_of(db), ["card"], service_factory=lambda: new, workers=1)


def test_audit_metrics_purge_and_handover(db, tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", b"a" * 32)
    metrics = EngineMetrics(CollectorRegistry())
    provider = StaticKeyProvider({1: K1})
    app = EncryptionService(provider, metrics=metrics, audit=log)
    make_users(db, 600, app)
    store = store_of(db)
    rotation = KeyRotationService(provider, RotationPolicy(retention_versions=1),
                                  state_dir=tmp_path / "rot", audit=log,
                                  on_rotated=handover(store, ["ssn", "card"], aad=rules("ssn"),
                                                      service=app, batch_size=200))
    rotation.rotate_keys()  # the hand-over re-encrypts ssn and card, not email or note
    events = [e for e in read_entries(tmp_path / "audit.jsonl")
              if e["event"].startswith("REENCRYPTION")]
    assert [e["event"] for e in events] == ["REENCRYPTION_STARTED", "REENCRYPTION_COMPLETED"]
    assert events[0]["details"]["target_version"] == 2
    assert events[0]["details"]["values_to_scan"] == 1200
    done = events[1]["details"]
    assert (done["reencrypted"], done["failed"], done["complete"]) == (1200, 0, True)
    assert verify(tmp_path / "audit.jsonl", b"a" * 32).ok
    registry = metrics.registry
    assert registry.get_sample_value("engine_reencryption_values_total",
                                     {"outcome": "reencrypted"}) == 1200
    assert registry.get_sample_value("engine_reencryption_values_remaining") == 0

    columns = ["ssn", "card", "email", "note"]
    with pytest.raises(VersionStillInUse) as refused:
        rotation.purge(1, inventory=inventory(store, columns, aad=RULES, service=app))
    assert "users.email: 600" in str(refused.value) and "users.note: 600" in str(refused.value)
    assert "users.ssn" not in str(refused.value)
    assert 1 in [i.version for i in provider.list_versions()]
    reencrypt(store, columns, aad=RULES, service=app)
    rotation.purge(1, inventory=[inventory(store, columns, aad=RULES, service=app)])
    assert [i.version for i in provider.list_versions()] == [2]


def test_unknown_and_unreachable_stores(tmp_path):
    _, new = services()
    for url in ("mysql://db/x", "sqlite:/relative.db", "parquet://", "users.db"):
        with pytest.raises(UnknownStore):
            open_store(url, "users", "id")
    with pytest.raises(UnknownStore):
        open_store("sqlite:///x.db")  # a table needs its key
    with pytest.raises(StoreUnavailable):
        reencrypt(open_store(f"sqlite:///{tmp_path}/missing.db", "users", "id"), ["ssn"],
                  service=new)
    assert not (tmp_path / "missing.db").exists()
    from engine.testing.postgres import free_port

    down = open_store(f"postgresql://u:secret-pw@127.0.0.1:{free_port()}/db", "users", "id")
    with pytest.raises(StoreUnavailable) as info:
        inventory(down, ["ssn"], service=new)
    assert "secret-pw" not in str(info.value) and "secret-pw" not in repr(down)
