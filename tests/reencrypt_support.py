"""Shared set-up for the re-encryption tests: real databases (SQLite files, the session's
PostgreSQL server) behind one small interface, and tables of values sealed under an old key
version."""

from __future__ import annotations

import os
import sqlite3
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine import (
    Batch,
    BlindIndex,
    BlindIndexes,
    EncryptionService,
    FieldEncryption,
    SealedBatch,
    StaticKeyProvider,
)

K1, K2, K3 = b"\x11" * 32, b"\x22" * 32, b"\x33" * 32
INDEX_SECRET = b"\x44" * 32
MASTER = "reencryption-test-master-key-0123456789"


def services() -> tuple[EncryptionService, EncryptionService]:
    """(a service on v1 only, a service whose current version is v2 and that keeps v1); both
    derive the same blind index keys."""
    return (EncryptionService(StaticKeyProvider({1: K1}, index_key=INDEX_SECRET), metrics=False),
            EncryptionService(StaticKeyProvider({1: K1, 2: K2}, index_key=INDEX_SECRET),
                              metrics=False))


class Database:
    """One database: ``url`` for the job, ``run``/``rows`` for the test (``%s`` parameters)."""

    kind = ""
    blob = "BLOB"
    json_type = "TEXT"
    key_type = "INTEGER"

    def __init__(self, url: str) -> None:
        self.url = url

    def connect(self) -> Any:
        raise NotImplementedError

    def run(self, sql: str, params: Any = ()) -> None:
        with self.connect() as conn:
            conn.execute(self._sql(sql), params)

    def run_many(self, sql: str, rows: list) -> None:
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.executemany(self._sql(sql), rows)
            conn.commit()
        finally:
            conn.close()

    def rows(self, sql: str, params: Any = ()) -> list:
        conn = self.connect()
        try:
            return conn.execute(self._sql(sql), params).fetchall()
        finally:
            conn.close()

    def _sql(self, sql: str) -> str:
        return sql

    def has_table(self, name: str) -> bool:
        raise NotImplementedError


class SqliteDatabase(Database):
    kind = "sqlite"

    def __init__(self, path: str) -> None:
        super().__init__(f"sqlite:///{path}")
        self.path = path

    def connect(self) -> Any:
        return sqlite3.connect(self.path, timeout=60)

    def _sql(self, sql: str) -> str:
        return sql.replace("%s", "?")

    def has_table(self, name: str) -> bool:
        return bool(self.rows("SELECT 1 FROM sqlite_master WHERE name = %s", (name,)))


class PostgresDatabase(Database):
    kind = "postgres"
    blob = "BYTEA"
    json_type = "JSONB"
    key_type = "BIGINT"

    def connect(self) -> Any:
        return psycopg.connect(self.url)

    def has_table(self, name: str) -> bool:
        return self.rows("SELECT to_regclass(%s)", (name,))[0][0] is not None


def new_database(kind: str, tmp_path: Any, postgres: Any = None) -> Database:
    if kind == "sqlite":
        path = str(tmp_path / f"{uuid.uuid4().hex[:8]}.db")
        sqlite3.connect(path).close()
        return SqliteDatabase(path)
    name = "t" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return PostgresDatabase(postgres.url_for(name))


@dataclass
class Users:
    """A ``users`` table: ``ssn`` (text tokens, AAD ``users:{id}:ssn``), ``email`` (the JSON envelope,
    no AAD; jsonb in PostgreSQL), ``card`` (binary tokens in a blob/bytea, no
    AAD) and ``note`` (FieldEncryption(bind_context=True) values), all sealed under v1."""

    db: Database
    n: int
    plain: dict[str, list]

    COLUMNS = ("ssn", "email", "card", "note")


def make_users(db: Database, n: int, old: EncryptionService, *, table: str = "users",
               nulls_every: int = 0) -> Users:
    ids = list(range(1, n + 1))
    ssn = [f"{i:03d}-00-{i % 10000:04d}" for i in ids]
    email = [f"user{i}@example.com" for i in ids]
    card = [f"4111 0000 {i:08d}".encode() for i in ids]
    note = [f"note for {i}" for i in ids]
    ssn_tokens = old.encrypt_many(ssn, aad=[f"users:{i}:ssn" for i in ids])
    email_json = [old.encrypt(e).to_json() for e in email]
    card_tokens = old.encrypt_many(card, binary=True).to_list()
    note_tokens = [r["note"] for r in FieldEncryption(old, bind_context=True).encrypt_column(
        [{"id": i, "note": t} for i, t in zip(ids, note)], "note")]
    db.run(f"CREATE TABLE {table} (id {db.key_type} PRIMARY KEY, ssn TEXT, email {db.json_type},"
           f" card {db.blob}, note TEXT, other TEXT)")
    rows = []
    for k, i in enumerate(ids):
        null = nulls_every and k % nulls_every == nulls_every - 1
        rows.append((i, None if null else ssn_tokens[k], email_json[k], card_tokens[k],
                     note_tokens[k], f"plain {i}"))
        if null:
            ssn[k] = None
    cast = "%s::jsonb" if db.kind == "postgres" else "%s"
    db.run_many(f"INSERT INTO {table} VALUES (%s, %s, {cast}, %s, %s, %s)", rows)
    return Users(db, n, {"ssn": ssn, "email": email, "card": card, "note": note})


def assert_application_reads(users: Users, service: EncryptionService, table: str = "users") -> None:
    """Every value opens in the application, as the application opens it."""
    rows = users.db.rows(f"SELECT id, ssn, email, card, note FROM {table} ORDER BY id")
    ids = [r[0] for r in rows]
    present = [k for k, r in enumerate(rows) if r[1] is not None]
    ssn = service.decrypt_many_text([rows[k][1] for k in present],
                                    aad=[f"users:{ids[k]}:ssn" for k in present])
    assert ssn == [users.plain["ssn"][k] for k in present]
    emails = [service.decrypt_text(r[2] if isinstance(r[2], str) else _json(r[2])) for r in rows]
    assert emails == users.plain["email"]
    assert service.decrypt_many([bytes(r[3]) for r in rows]).to_list() == users.plain["card"]
    notes = FieldEncryption(service, bind_context=True).decrypt_column(
        [{"id": i, "note": r[4]} for i, r in zip(ids, rows)], "note")
    assert [n["note"] for n in notes] == users.plain["note"]


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def master_key_environment(monkeypatch: Any, tmp_path: Any) -> None:
    """The environment provider's variables, for jobs whose workers build their own service."""
    monkeypatch.setenv("ENCRYPTION_MASTER_KEY", MASTER)
    monkeypatch.setenv("ENGINE_KEY_STATE_FILE", str(tmp_path / "keys.json"))
    monkeypatch.setenv("ENCRYPTION_KDF_ITERATIONS", "1000")
    monkeypatch.delenv("VAULT_ENABLED", raising=False)
    monkeypatch.delenv("ENGINE_AUDIT_LOG", raising=False)
    from engine.service import reset_encryption_service

    reset_encryption_service()


def file_digest(path: str) -> bytes:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).digest()


def listing(path: str) -> list[str]:
    return sorted(os.listdir(path))


def write_dataset(path, service, files=3, rows=500, *, nulls=True, indexes=None):
    """Files with an ``id``, a ``ssn`` column of text tokens (AAD ``users:{id}:ssn``), and an
    email in SealedBatch.to_arrow()'s three columns plus ``key_version``; with ``indexes``
    (BlindIndexes over those columns), their columns too (``string``), as the application
    computes them."""
    os.makedirs(path, exist_ok=True)
    key = service.provider.get_current_key()
    plain = {}
    for f in range(files):
        ids = np.arange(f * rows, (f + 1) * rows)
        ssn = [f"{i:09d}" for i in ids]
        tokens = service.encrypt_many(ssn, aad=[f"users:{i}:ssn" for i in ids], arrow=True)
        emails = [f"user{i}@example.com".encode() for i in ids]
        sealed = key.cipher.seal_batch(Batch.from_list(emails)).to_arrow()
        version = pa.array(np.full(rows, key.version, dtype=np.int32))
        if nulls:
            keep = pa.array(ids % 11 != 0)
            tokens = pc.if_else(keep, tokens, pa.nulls(rows, tokens.type))
            ssn = [s if i % 11 else None for s, i in zip(ssn, ids)]
        table = pa.table({"id": ids, "ssn": tokens, "nonce": sealed["nonce"], "tag": sealed["tag"],
                          "ciphertext": sealed["ciphertext"], "key_version": version},
                         metadata={"owner": "crm"})
        if indexes is not None:
            values = indexes.compute_all({"ssn": ssn, "email": emails, "id": ids.tolist()})
            for name, column in values.items():
                table = table.append_column(name, pa.array(column, pa.string()))
        name = os.path.join(path, f"part-{f}.parquet")
        pq.write_table(table, name, compression="zstd")
        plain[name] = (ids, ssn, emails)
    return plain


def assert_dataset_reads(plain, service, version):
    key = service.provider.get_key(version)
    for name, (ids, ssn, emails) in plain.items():
        table = pq.read_table(name)
        assert table.schema.metadata[b"owner"] == b"crm"
        assert set(table["key_version"].to_pylist()) == {version}
        present = [k for k, s in enumerate(ssn) if s is not None]
        tokens = table["ssn"].take(pa.array(present))
        assert service.decrypt_many_text(tokens, [f"users:{ids[k]}:ssn" for k in present]) == \
            [ssn[k] for k in present]
        opened = key.cipher.open_batch(SealedBatch.from_arrow(table.select(["nonce", "tag",
                                                                            "ciphertext"])))
        assert opened.to_list() == emails


# ---------------------------------------------------------------- blind indexes

CONTACT_COLUMNS = ("id", "email", "last_name", "birth_year", "email_idx", "name_idx", "pair_idx")


def contact_indexes(provider: Any) -> BlindIndexes:
    """The ``contacts`` table's blind indexes: ``email_idx`` over one encrypted column,
    ``name_idx`` over an encrypted and a plain column, ``pair_idx`` over two encrypted ones."""
    return BlindIndexes(
        BlindIndex(provider, "contacts", "email", normalizer="email", bits=16),
        BlindIndex(provider, "contacts", ["last_name", "birth_year"], normalizer="text",
                   bits=10, name="name_idx"),
        BlindIndex(provider, "contacts", ["email", "last_name"], normalizer="text", bits=20,
                   name="pair_idx"))


@dataclass
class Contacts:
    """A ``contacts`` table written by the application under v1: ``email`` (text tokens, AAD
    ``contacts:{id}:email``, NULL in some rows), ``last_name`` (text tokens, no AAD),
    ``birth_year`` (a plain integer), and the index columns of :func:`contact_indexes`."""

    db: Database
    plain: dict[str, list]

    AAD = "contacts:{id}:email"


def make_contacts(db: Database, n: int, old: EncryptionService, *,
                  nulls_every: int = 0) -> Contacts:
    ids = list(range(1, n + 1))
    email = [None if nulls_every and i % nulls_every == 0 else f" Contact{i}@Example.com"
             for i in ids]
    last_name = [f"Name{i % 97}" for i in ids]
    birth_year = [1940 + i % 70 for i in ids]
    index = contact_indexes(old.provider).compute_all(
        {"email": email, "last_name": last_name, "birth_year": birth_year})
    present = [k for k, e in enumerate(email) if e is not None]
    email_tokens: list = [None] * n
    for k, token in zip(present, old.encrypt_many([email[k] for k in present],
                                                  aad=[f"contacts:{ids[k]}:email"
                                                       for k in present])):
        email_tokens[k] = token
    db.run(f"CREATE TABLE contacts (id {db.key_type} PRIMARY KEY, email TEXT, last_name TEXT,"
           " birth_year INTEGER, email_idx TEXT, name_idx TEXT, pair_idx TEXT)")
    db.run_many("INSERT INTO contacts VALUES (%s, %s, %s, %s, %s, %s, %s)",
                list(zip(ids, email_tokens, old.encrypt_many(last_name), birth_year,
                         index["email_idx"], index["name_idx"], index["pair_idx"])))
    return Contacts(db, {"id": ids, "email": email, "last_name": last_name,
                         "birth_year": birth_year})


def contact_rows(contacts: Contacts) -> dict[str, list]:
    """The table, column by column, in key order."""
    rows = contacts.db.rows(f"SELECT {', '.join(CONTACT_COLUMNS)} FROM contacts ORDER BY id")
    return dict(zip(CONTACT_COLUMNS, (list(c) for c in zip(*rows))))


def assert_contacts_consistent(contacts: Contacts, service: EncryptionService) -> np.ndarray:
    """Every row's ciphertexts open to the application's plaintext, and each index value is
    the one of the key version its ciphertexts are under: both old or both new. Returns the
    version of each row (0 where the email is NULL)."""
    table = contact_rows(contacts)
    assert table["id"] == contacts.plain["id"]
    aad = [f"contacts:{i}:email" for i in table["id"]]
    found = service.reencrypt_many(table["email"], aad, check_only=True)
    names = service.reencrypt_many(table["last_name"], check_only=True)
    present = [k for k, e in enumerate(table["email"]) if e is not None]
    assert service.decrypt_many_text([table["email"][k] for k in present],
                                     aad=[aad[k] for k in present]) == \
        [contacts.plain["email"][k] for k in present]
    assert service.decrypt_many_text(table["last_name"]) == contacts.plain["last_name"]
    indexes = contact_indexes(service.provider)
    columns = {c: contacts.plain[c] for c in ("email", "last_name", "birth_year")}
    found_versions = set(found.key_versions.tolist()) | set(names.key_versions.tolist())
    expected = {v: indexes.compute_all(columns, version=v) for v in found_versions - {0}}
    for name, versions in (("email_idx", found.key_versions), ("pair_idx", found.key_versions),
                           ("name_idx", names.key_versions)):
        want = [expected[int(v)][name][k] if v else None for k, v in enumerate(versions)]
        assert table[name] == want, name
    return found.key_versions


@dataclass(frozen=True)
class StaticServiceFactory:
    """Builds a worker's service over static keys (a module-level class: it pickles, and a
    spawned worker imports it): ``keys`` as ``((version, key), ...)``, encrypting under
    ``current``."""

    keys: tuple[tuple[int, bytes], ...]
    current: int

    def __call__(self) -> EncryptionService:
        return EncryptionService(StaticKeyProvider(dict(self.keys), current=self.current,
                                                   index_key=INDEX_SECRET), metrics=False)
