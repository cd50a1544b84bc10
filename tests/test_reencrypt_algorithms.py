"""Re-encryption between key versions of every pair of algorithms (AES-256-GCM and
XAES-256-GCM), on SQLite and on Parquet (token columns and the three-column layout), in this
process and in worker processes that prove they hold the coordinator's key."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine import EncryptionService, KeyRotationService, RotationPolicy, StaticKeyProvider
from engine.reencrypt import (
    AadRule,
    Column,
    ColumnNotFound,
    SealedLayout,
    WorkerKeyMismatch,
    inventory,
    open_store,
    reencrypt,
)
from engine.reencrypt.transform import KeyCheck

from reencrypt_support import (
    K1,
    K2,
    Users,
    assert_application_reads,
    make_users,
    master_key_environment,
    new_database,
)

AES, XAES = "aes-256-gcm", "xaes-256-gcm"
PAIRS = [(AES, XAES), (XAES, AES), (XAES, XAES), (AES, AES)]
RULES = {"ssn": AadRule.template("users:{id}:ssn"), "note": AadRule.field_context("id")}
PARQUET_COLUMNS = [Column("ssn", AadRule.template("users:{id}:ssn")),
                   Column("email", sealed=SealedLayout())]


def pair_services(first: str, second: str) -> tuple[EncryptionService, EncryptionService]:
    """(the application on v1 of ``first``, the application after a rotation to v2 of
    ``second``)."""
    return (EncryptionService(StaticKeyProvider({1: K1}, algorithm=first), metrics=False),
            EncryptionService(StaticKeyProvider({1: K1, 2: K2}, algorithms={1: first, 2: second}),
                              metrics=False))


def nonce_size(algorithm: str) -> int:
    return 24 if algorithm == XAES else 16


@pytest.mark.parametrize("first,second", PAIRS)
def test_key_check_seals_with_the_targets_own_nonce(first, second):
    _, new = pair_services(first, second)
    check = KeyCheck.of(new)
    assert len(check.nonce) == nonce_size(second)
    check.verify(new)
    other = EncryptionService(StaticKeyProvider({1: K1, 2: K1}, algorithms={1: first, 2: second}),
                              metrics=False)
    with pytest.raises(WorkerKeyMismatch):  # the same version number under another key
        check.verify(other)
    swapped = AES if second == XAES else XAES
    mixed = EncryptionService(StaticKeyProvider({1: K1, 2: K2},
                                                algorithms={1: first, 2: swapped}), metrics=False)
    with pytest.raises(WorkerKeyMismatch):  # the same key under the other algorithm
        check.verify(mixed)


@pytest.mark.parametrize("first,second", PAIRS)
def test_sqlite_moves_every_kind_of_value_between_algorithms(tmp_path, first, second):
    old, new = pair_services(first, second)
    db = new_database("sqlite", tmp_path)
    users = make_users(db, 300, old, nulls_every=9)
    store = open_store(db.url, "users", "id")
    before = inventory(store, Users.COLUMNS, aad=RULES, service=new)
    assert all(set(c.versions) == {1} for c in before.columns.values())
    report = reencrypt(store, Users.COLUMNS, aad=RULES, service=new, batch_size=64)
    assert report.complete and report.failed == 0
    assert report.reencrypted == 4 * 300 - before.columns["ssn"].null
    assert_application_reads(users, new)
    after = inventory(store, Users.COLUMNS, aad=RULES, service=new)
    assert after.all_current() and all(set(c.versions) == {2} for c in after.columns.values())
    emails = [r[0] for r in db.rows("SELECT email FROM users")]
    assert all(f'"algorithm":"{second}"' in e for e in emails)


def write_sealed_dataset(path: str, service: EncryptionService, rows: int = 200) -> dict:
    """One file: ``ssn`` text tokens (AAD ``users:{id}:ssn``), ``email`` in the three-column
    layout with a ``binary`` nonce column (either algorithm's nonces fit)."""
    os.makedirs(path, exist_ok=True)
    key = service.provider.get_current_key()
    ids = np.arange(rows)
    ssn = [f"{i:09d}" for i in ids]
    emails = [f"user{i}@example.com".encode() for i in ids]
    sealed = key.cipher.seal_batch(emails).to_arrow()
    name = os.path.join(path, "part-0.parquet")
    pq.write_table(pa.table({
        "id": ids,
        "ssn": service.encrypt_many(ssn, aad=[f"users:{i}:ssn" for i in ids], arrow=True),
        "nonce": sealed["nonce"].cast(pa.binary()), "tag": sealed["tag"],
        "ciphertext": sealed["ciphertext"],
        "key_version": pa.array(np.full(rows, key.version, dtype=np.int32))}), name)
    return {"file": name, "ids": ids, "ssn": ssn, "emails": emails}


def assert_sealed_dataset_reads(data: dict, service: EncryptionService, version: int) -> None:
    from engine import SealedBatch

    table = pq.read_table(data["file"])
    key = service.provider.get_key(version)
    assert set(table["key_version"].to_pylist()) == {version}
    assert set(pa.compute.binary_length(table["nonce"]).to_pylist()) == \
        {key.cipher.NONCE_SIZE}
    assert service.decrypt_many_text(table["ssn"], [f"users:{i}:ssn" for i in data["ids"]]) == \
        data["ssn"]
    nonces = np.frombuffer(b"".join(table["nonce"].to_pylist()), np.uint8).reshape(
        len(data["ids"]), -1)
    sealed = SealedBatch(nonces=nonces, tags=table["tag"].combine_chunks(),
                         ciphertexts=table["ciphertext"].combine_chunks())
    assert key.cipher.open_batch(sealed).to_list() == data["emails"]


@pytest.mark.parametrize("first,second", PAIRS)
def test_parquet_moves_tokens_and_the_sealed_layout_between_algorithms(tmp_path, first, second):
    old, new = pair_services(first, second)
    data = write_sealed_dataset(str(tmp_path / "users"), old)
    store = open_store(f"parquet://{tmp_path / 'users'}")
    before = inventory(store, PARQUET_COLUMNS, service=new)
    assert before.columns["email"].versions == {1: 200}
    assert before.columns["ssn"].versions == {1: 200}
    report = reencrypt(store, PARQUET_COLUMNS, service=new, batch_size=64)
    assert report.complete and report.failed == 0 and report.reencrypted == 400
    assert_sealed_dataset_reads(data, new, 2)
    assert inventory(store, PARQUET_COLUMNS, service=new).all_current()


def test_a_fixed_size_nonce_column_that_cannot_hold_the_targets_nonces_is_refused(tmp_path):
    old, new = pair_services(AES, XAES)
    path = str(tmp_path / "users")
    os.makedirs(path)
    sealed = old.provider.get_current_key().cipher.seal_batch([b"a", b"b"]).to_arrow()
    name = os.path.join(path, "p.parquet")
    pq.write_table(sealed.append_column("key_version", pa.array([1, 1], pa.int32())), name)
    before = open(name, "rb").read()
    with pytest.raises(ColumnNotFound, match="24-byte nonces"):
        reencrypt(open_store(f"parquet://{path}"), [Column("email", sealed=SealedLayout())],
                  service=new)
    assert open(name, "rb").read() == before
    assert sorted(os.listdir(path)) == ["_engine_reencrypt_progress.json", "p.parquet"] or \
        sorted(os.listdir(path)) == ["p.parquet"]


@pytest.mark.parametrize("first,second", [(AES, XAES), (XAES, XAES)])
def test_worker_processes_move_values_onto_xaes(tmp_path, monkeypatch, first, second):
    master_key_environment(monkeypatch, tmp_path)
    from engine import get_encryption_service
    from engine.service import reset_encryption_service

    monkeypatch.setenv("ENCRYPTION_ALGORITHM", first)
    reset_encryption_service()
    app = get_encryption_service()
    db = new_database("sqlite", tmp_path)
    users = make_users(db, 200, app)
    data = write_sealed_dataset(str(tmp_path / "users"), app)
    monkeypatch.setenv("ENCRYPTION_ALGORITHM", second)
    reset_encryption_service()
    app = get_encryption_service()
    KeyRotationService(app.provider, RotationPolicy(), state_dir=tmp_path / "rot").rotate_keys()
    assert app.provider.get_current_key().algorithm == second
    report = reencrypt(open_store(db.url, "users", "id"), Users.COLUMNS, aad=RULES, service=app,
                       workers=1, batch_size=50)
    assert report.complete and report.failed == 0 and report.reencrypted == 800
    assert_application_reads(users, app)
    report = reencrypt(open_store(f"parquet://{tmp_path / 'users'}"), PARQUET_COLUMNS,
                       service=app, workers=1, batch_size=50)
    assert report.complete and report.reencrypted == 400
    assert_sealed_dataset_reads(data, app, 2)
