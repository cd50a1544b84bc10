"""The re-encryption job keeps blind indexes: where a value moves to the new key version, its
row's index values move with it, in the same write. SQLite and a real PostgreSQL server (the
same tests), Parquet, in this process and in worker processes."""

from __future__ import annotations

import os
import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from engine import (
    BlindIndex,
    BlindIndexes,
    EncryptionService,
    InvalidArgument,
    InvalidArgumentType,
    KeyRotationService,
    KeyState,
    RotationPolicy,
    StaticKeyProvider,
)
from engine.blind_index import IndexDefinition
from engine.keys import KeyProviderError
from engine.reencrypt import (
    AadRule,
    Column,
    ColumnNotFound,
    IndexMismatch,
    SealedLayout,
    inventory,
    open_store,
    reencrypt,
)

from reencrypt_support import (
    K1,
    K2,
    K3,
    Contacts,
    assert_contacts_consistent,
    contact_indexes,
    contact_rows,
    file_digest,
    listing,
    make_contacts,
    master_key_environment,
    new_database,
    services,
    write_dataset,
)

EMAIL_AAD = {"email": AadRule.template(Contacts.AAD)}
COLUMNS = ["email", "last_name"]


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    postgres = request.getfixturevalue("postgres") if request.param == "postgres" else None
    return new_database(request.param, tmp_path, postgres)


def store_of(db):
    return open_store(db.url, "contacts", "id")


def test_after_a_rotation_and_a_job_the_new_index_values_find_every_row(db, tmp_path):
    old, new = services()
    contacts = make_contacts(db, 2000, old, nulls_every=9)
    assert set(assert_contacts_consistent(contacts, new).tolist()) == {0, 1}
    indexes = contact_indexes(new.provider)

    report = reencrypt(store_of(db), COLUMNS, aad=EMAIL_AAD, indexes=indexes, service=new,
                       batch_size=300)
    nulls = 2000 // 9
    assert report.complete and report.failed == 0 and report.changed == 0
    assert report.columns["email"].reencrypted == 2000 - nulls
    assert report.columns["last_name"].reencrypted == 2000
    assert set(assert_contacts_consistent(contacts, new).tolist()) == {0, 2}

    # the old candidates are no longer needed: the inventory shows nothing left under v1,
    # which is purged; a lookup then asks for the v2 value only, and a real query by it finds
    # the row (among the truncation's collisions)
    after = inventory(store_of(db), COLUMNS, aad=EMAIL_AAD, service=new)
    assert after.all_current()
    new.provider.set_state(1, KeyState.DEPRECATED)
    assert len(indexes.lookup("email_idx", "a@b.c")) == 2  # deprecated still decrypts
    KeyRotationService(new.provider, RotationPolicy(), state_dir=tmp_path / "rot").purge(
        1, inventory=after)
    table = contact_rows(contacts)
    rng = random.Random(7)
    present = [k for k, e in enumerate(contacts.plain["email"]) if e is not None]
    for k in rng.sample(present, 40):
        email, row_id = contacts.plain["email"][k], contacts.plain["id"][k]
        candidates = indexes.lookup("email_idx", email.strip().upper())
        assert candidates == [table["email_idx"][k]]
        marks = ", ".join(["%s"] * len(candidates))
        found = [r[0] for r in db.rows(f"SELECT id FROM contacts WHERE email_idx IN ({marks})",
                                       candidates)]
        assert row_id in found
        both = {"last_name": contacts.plain["last_name"][k],
                "birth_year": contacts.plain["birth_year"][k]}
        assert row_id in [r[0] for r in db.rows("SELECT id FROM contacts WHERE name_idx = %s",
                                                indexes.lookup("name_idx", both))]
    # a second pass moves nothing and leaves every index value as it is
    again = reencrypt(store_of(db), COLUMNS, aad=EMAIL_AAD, indexes=indexes, service=new)
    assert again.reencrypted == 0 and contact_rows(contacts) == table


def test_worker_processes_compute_the_indexes(db, monkeypatch, tmp_path):
    master_key_environment(monkeypatch, tmp_path)
    from engine import get_encryption_service

    service = get_encryption_service()
    contacts = make_contacts(db, 1500, service, nulls_every=11)
    KeyRotationService(service.provider, RotationPolicy(), state_dir=tmp_path / "rot").rotate_keys()
    definitions = [i.definition for i in contact_indexes(service.provider)]
    report = reencrypt(store_of(db), COLUMNS, aad=EMAIL_AAD, indexes=definitions, workers=2,
                       batch_size=200, partitions=2)
    assert report.complete and report.failed == 0
    assert set(assert_contacts_consistent(contacts, service).tolist()) == {0, 2}


def test_a_row_the_application_changes_meanwhile_keeps_the_applications_values(db):
    """The index is written only where the row still holds what the job read: the value it
    re-encrypts and the plain column a compound index reads."""
    old, new = services()
    contacts = make_contacts(db, 400, old)
    app_indexes = contact_indexes(old.provider)
    changed = {}

    def application_writes(event, detail):
        if changed:
            return
        email_row, year_row = detail["keys"][3], detail["keys"][4]
        email = f"new{email_row}@example.com"
        token = old.encrypt_many([email], aad=[f"contacts:{email_row}:email"])[0]
        k = email_row - 1
        values = app_indexes.compute_all({"email": [email], "last_name": [
            contacts.plain["last_name"][k]], "birth_year": [contacts.plain["birth_year"][k]]})
        db.run("UPDATE contacts SET email = %s, email_idx = %s, pair_idx = %s WHERE id = %s",
               (token, values["email_idx"][0], values["pair_idx"][0], email_row))
        contacts.plain["email"][k] = email
        k = year_row - 1
        value = app_indexes["name_idx"].compute({"last_name": [contacts.plain["last_name"][k]],
                                                 "birth_year": [1900]})[0]
        db.run("UPDATE contacts SET birth_year = %s, name_idx = %s WHERE id = %s",
               (1900, value, year_row))
        contacts.plain["birth_year"][k] = 1900
        changed.update(email=email_row, year=year_row)

    report = reencrypt(store_of(db), COLUMNS, aad=EMAIL_AAD, indexes=contact_indexes(new.provider),
                       service=new, batch_size=100, observer=application_writes)
    assert report.columns["email"].changed == 1 and report.columns["last_name"].changed == 1
    versions = assert_contacts_consistent(contacts, new)
    assert versions[changed["email"] - 1] == 1
    assert set(np.delete(versions, changed["email"] - 1).tolist()) == {2}
    report = reencrypt(store_of(db), COLUMNS, aad=EMAIL_AAD, indexes=contact_indexes(new.provider),
                       service=new)
    assert report.reencrypted == 2 and report.changed == 0
    assert set(assert_contacts_consistent(contacts, new).tolist()) == {2}


def test_rows_whose_index_cannot_be_computed_are_left_and_reported(db):
    """``pair_idx`` reads two encrypted columns: a row whose other column is already current
    is opened again for it; a row whose other column cannot be opened, or whose email fails
    the index's normaliser, keeps its old values and is listed."""
    old, new = services()
    contacts = make_contacts(db, 300, old)
    stranger = EncryptionService(StaticKeyProvider({1: K3}), metrics=False)
    current, tampered, not_an_email = 10, 20, 30
    name = contacts.plain["last_name"][current - 1]
    db.run("UPDATE contacts SET last_name = %s, name_idx = %s WHERE id = %s",
           (new.encrypt_many([name])[0], contact_indexes(new.provider)["name_idx"].compute(
               {"last_name": [name], "birth_year": [contacts.plain["birth_year"][current - 1]]}
           )[0], current))
    db.run("UPDATE contacts SET last_name = %s WHERE id = %s",
           (stranger.encrypt_many(["x"])[0], tampered))
    db.run("UPDATE contacts SET email = %s, email_idx = NULL, pair_idx = NULL WHERE id = %s",
           (old.encrypt_many(["no at sign"], aad=[f"contacts:{not_an_email}:email"])[0],
            not_an_email))
    def left_alone():
        return (db.rows("SELECT * FROM contacts WHERE id = %s", (tampered,)),
                db.rows("SELECT email, email_idx, pair_idx FROM contacts WHERE id = %s",
                        (not_an_email,)))

    before = left_alone()

    report = reencrypt(store_of(db), COLUMNS, aad=EMAIL_AAD, indexes=contact_indexes(new.provider),
                       service=new, batch_size=64)
    email, last_name = report.columns["email"], report.columns["last_name"]
    assert (email.unindexable, email.reencrypted) == (2, 298)
    assert (last_name.invalid_tag, last_name.current, last_name.reencrypted) == (1, 1, 298)
    assert sorted((f.column, f.key, f.reason) for f in report.failures) == [
        ("email", tampered, "unindexable"), ("email", not_an_email, "unindexable"),
        ("last_name", tampered, "invalid_tag")]
    assert left_alone() == before
    table = contact_rows(contacts)
    indexes = contact_indexes(new.provider)
    k = current - 1
    assert table["pair_idx"][k] == indexes["pair_idx"].compute(
        {"email": [contacts.plain["email"][k]], "last_name": [name]}, version=2)[0]
    assert new.reencrypt_many([table["email"][k]], [f"contacts:{current}:email"],
                              check_only=True).key_versions.tolist() == [2]


def test_bad_index_configuration_is_refused_before_anything_is_written(db):
    old, new = services()
    make_contacts(db, 50, old)
    snapshot = db.rows("SELECT * FROM contacts ORDER BY id")
    p = new.provider
    cases = [
        (ColumnNotFound, "phone_idx", BlindIndex(p, "contacts", "email", name="phone_idx")),
        (ColumnNotFound, "text column", BlindIndex(p, "contacts", "email", name="birth_year")),
        (ColumnNotFound, "no column 'phone'",
         BlindIndex(p, "contacts", ["email", "phone"], name="email_idx")),
        (InvalidArgument, "none of the job's columns", BlindIndex(p, "contacts", "birth_year")),
        (InvalidArgument, "named twice", [BlindIndex(p, "contacts", "email"),
                                          BlindIndex(p, "contacts", "last_name",
                                                     name="email_idx")]),
        (InvalidArgument, "like a column the job reads: last_name",
         BlindIndex(p, "contacts", "email", name="last_name")),
        (InvalidArgument, "like a column the job reads: id",  # the AAD template reads it
         BlindIndex(p, "contacts", "email", name="id")),
        (InvalidArgument, "like a column the job reads: birth_year",
         [BlindIndex(p, "contacts", ["last_name", "birth_year"]),
          BlindIndex(p, "contacts", "email", name="birth_year")]),
        (InvalidArgumentType, "IndexDefinition", ["email_idx"]),
    ]
    for error, message, indexes in cases:
        with pytest.raises(error, match=message):
            reencrypt(store_of(db), COLUMNS, aad=EMAIL_AAD, indexes=indexes, service=new)
    with pytest.raises(ColumnNotFound, match="the table's key"):
        reencrypt(store_of(db), ["last_name"], service=new,
                  indexes=BlindIndex(p, "contacts", "last_name", name="id"))
    no_index_secret = EncryptionService(StaticKeyProvider({1: K1, 2: K2}), metrics=False)
    with pytest.raises(KeyProviderError, match="index_key"):
        reencrypt(store_of(db), COLUMNS, aad=EMAIL_AAD, service=no_index_secret,
                  indexes=[IndexDefinition("contacts", ("email",), ("email",), 16, "email_idx")])
    assert db.rows("SELECT * FROM contacts ORDER BY id") == snapshot


def dataset_indexes(provider):
    return BlindIndexes(BlindIndex(provider, "users", "ssn", normalizer="digits", bits=12),
                        BlindIndex(provider, "users", ["email", "id"], normalizer="text",
                                   bits=14, name="email_idx"))


@pytest.mark.parametrize("workers", [0, 2])
def test_parquet_files_are_rewritten_with_their_indexes(workers, tmp_path, monkeypatch):
    """``ssn`` is a column of tokens, ``email`` the three-column layout; ``email_idx`` reads
    the email's plaintext and the plain ``id``."""
    master_key_environment(monkeypatch, tmp_path)
    from engine import get_encryption_service

    service = get_encryption_service()
    path = str(tmp_path / "users")
    plain = write_dataset(path, service, files=3, rows=400,
                          indexes=dataset_indexes(service.provider))
    # one ssn the digits normaliser refuses: that row keeps its old ciphertext and index
    first = sorted(plain)[0]
    table = pq.read_table(first)
    odd = service.encrypt_many(["no digits"], aad=["users:5:ssn"], arrow=True)
    table = table.set_column(1, "ssn", pc.if_else(pa.array(np.arange(400) == 5),
                                                   pa.repeat(odd[0], 400), table["ssn"]))
    pq.write_table(table, first)
    plain[first][1][5] = "no digits"
    left_index = table["ssn_idx"][5].as_py()
    KeyRotationService(service.provider, RotationPolicy(), state_dir=tmp_path / "rot").rotate_keys()
    columns = [Column("ssn", AadRule.template("users:{id}:ssn")),
               Column("email", sealed=SealedLayout())]
    report = reencrypt(open_store(f"parquet://{path}"), columns,
                       indexes=dataset_indexes(service.provider), workers=workers,
                       batch_size=150)
    assert report.complete and report.failed == 1
    assert [(f.column, f.key, f.reason) for f in report.failures] == [
        ("ssn", f"{os.path.basename(first)}#5", "unindexable")]
    indexes = dataset_indexes(service.provider)
    for name, (ids, ssn, emails) in plain.items():
        table = pq.read_table(name)
        versions = service.reencrypt_many(table["ssn"], [f"users:{i}:ssn" for i in ids],
                                          check_only=True).key_versions
        assert set(versions.tolist()) == ({0, 2} if name != first else {0, 1, 2})
        assert service.decrypt_many_text(table["ssn"].drop_null(), [
            f"users:{i}:ssn" for i, s in zip(ids, ssn) if s is not None]) == \
            [s for s in ssn if s is not None]
        left = (versions == 1).tolist()
        assert sum(left) == (name == first)
        expected = indexes.compute_all({"ssn": [None if x else s for s, x in zip(ssn, left)],
                                        "email": emails, "id": ids.tolist()}, version=2)
        assert table["ssn_idx"].to_pylist() == [left_index if x else e for e, x in
                                                zip(expected["ssn_idx"], left)]
        assert table["email_idx"].to_pylist() == expected["email_idx"]
        assert table.schema.field("ssn_idx").type == pa.string()


@pytest.mark.parametrize("second", ["without the index column", "with an integer index column"])
def test_a_file_of_the_dataset_unlike_the_first_is_refused_before_anything_is_written(
        second, tmp_path):
    """Files of one dataset may have different columns; the job checks each file's own,
    before it rewrites any (a file without the index column once had its last column, the
    ciphertexts, replaced by index values)."""
    old, new = services()
    path = tmp_path / "users"
    path.mkdir()
    emails = [f"user{i}@example.com" for i in range(20)]
    tokens = old.encrypt_many(emails)
    index = BlindIndex(old.provider, "users", "email", normalizer="email", bits=12)
    pq.write_table(pa.table({"id": range(20), "email_idx": index.compute(emails),
                             "email": tokens}), path / "a.parquet")
    other = {"id": range(20, 40), "email": tokens}
    if second == "with an integer index column":
        other = {"id": range(20, 40), "email_idx": range(20), "email": tokens}
    pq.write_table(pa.table(other), path / "b.parquet")
    before = {name: file_digest(str(path / name)) for name in listing(str(path))}
    with pytest.raises(ColumnNotFound, match="email_idx.*b.parquet"):
        reencrypt(open_store(f"parquet://{path}"), ["email"], service=new,
                  indexes=BlindIndex(new.provider, "users", "email", normalizer="email", bits=12))
    assert {name: file_digest(str(path / name)) for name in listing(str(path))} == before


def test_an_index_over_an_encrypted_column_left_out_of_the_job_is_refused(db):
    """``pair_idx`` reads ``email`` and ``last_name``, both encrypted: a job given only
    ``email`` once hashed ``last_name``'s ciphertexts as if they were plain values, and wrote
    index values no lookup finds, reporting no failure."""
    old, new = services()
    make_contacts(db, 60, old)
    snapshot = db.rows("SELECT * FROM contacts ORDER BY id")
    with pytest.raises(ColumnNotFound, match="'last_name'.*holds ciphertexts"):
        reencrypt(store_of(db), ["email"], aad=EMAIL_AAD, service=new,
                  indexes=contact_indexes(new.provider)["pair_idx"])
    assert db.rows("SELECT * FROM contacts ORDER BY id") == snapshot
    # a plain column (an integer, here) is read as it is
    report = reencrypt(store_of(db), ["last_name"], service=new,
                       indexes=contact_indexes(new.provider)["name_idx"])
    assert report.reencrypted == 60 and report.failed == 0


def test_a_plain_column_of_floats_is_refused_not_hashed_as_other_text(db):
    """The application indexes ``birth_year`` as the integer 1990; a REAL column hands the
    job 1990.0, whose index value no lookup asks for (the job once wrote those for every row
    and reported no failure)."""
    old, new = services()
    make_contacts(db, 40, old)
    db.run("ALTER TABLE contacts ADD COLUMN birth_real REAL")
    db.run("UPDATE contacts SET birth_real = birth_year")
    snapshot = db.rows("SELECT * FROM contacts ORDER BY id")
    index = BlindIndex(new.provider, "contacts", ["last_name", "birth_real"], normalizer="text",
                       bits=10, name="name_idx")
    with pytest.raises(ColumnNotFound, match="'birth_real'"):
        reencrypt(store_of(db), ["last_name"], service=new, indexes=index)
    assert db.rows("SELECT * FROM contacts ORDER BY id") == snapshot


def test_an_index_unlike_the_applications_is_refused_before_anything_is_written(db):
    """Other bits, another normaliser, another table or the fields in another order compute
    none of the stored index values: the job stops before it rewrites them all with values
    the application's lookups never ask for. Rows whose index is stale or NULL do not stop it."""
    old, new = services()
    contacts = make_contacts(db, 80, old)
    db.run("UPDATE contacts SET email_idx = 'ffff' WHERE id < 5")  # stale: re-indexed
    db.run("UPDATE contacts SET email_idx = NULL WHERE id >= 5 AND id < 10")
    snapshot = db.rows("SELECT * FROM contacts ORDER BY id")
    p = new.provider
    wrong = [BlindIndex(p, "contacts", "email", normalizer="email", bits=18),
             BlindIndex(p, "contacts", "email", normalizer="lower", bits=16),  # not trimmed
             BlindIndex(p, "users", "email", normalizer="email", bits=16),
             BlindIndex(p, "contacts", ["last_name", "email"], normalizer="text", bits=20,
                        name="pair_idx")]
    for index in wrong:
        with pytest.raises(IndexMismatch, match=f"'{index.name}'"):
            reencrypt(store_of(db), COLUMNS, aad=EMAIL_AAD, service=new, indexes=index)
    assert db.rows("SELECT * FROM contacts ORDER BY id") == snapshot
    report = reencrypt(store_of(db), COLUMNS, aad=EMAIL_AAD, service=new,
                       indexes=contact_indexes(p), batch_size=25)
    assert report.reencrypted == 160 and report.failed == 0
    assert set(assert_contacts_consistent(contacts, new).tolist()) == {2}


def test_a_real_deep_in_a_plain_column_is_refused_before_anything_is_written(db):
    """SQLite keeps a type per value: one REAL among the integers of ``birth_year``, far past
    the rows validation samples, would stop the job at its batch, at every run."""
    old, new = services()
    make_contacts(db, 90, old)
    if db.kind == "sqlite":
        db.run("UPDATE contacts SET birth_year = 1990.5 WHERE id = 77")
    snapshot = db.rows("SELECT * FROM contacts ORDER BY id")
    index = contact_indexes(new.provider)["name_idx"]
    if db.kind == "postgres":  # a typed column cannot hold one
        assert reencrypt(store_of(db), ["last_name"], service=new, indexes=index,
                         batch_size=10).reencrypted == 90
        return
    with pytest.raises(ColumnNotFound, match="'birth_year'.* 1 value"):
        reencrypt(store_of(db), ["last_name"], service=new, indexes=index, batch_size=10)
    assert db.rows("SELECT * FROM contacts ORDER BY id") == snapshot
