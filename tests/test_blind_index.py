"""Blind indexes (engine.blind_index): known answers against Python's hmac, properties of
truncation and normalisation, keys per table, column and version from every provider, lookups
across versions, a real SQLite search, and the errors."""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from engine import (
    Batch,
    BlindIndex,
    BlindIndexes,
    EncryptionService,
    EnvironmentKeyProvider,
    FieldEncryption,
    InvalidArgument,
    InvalidArgumentType,
    KeyState,
    StaticKeyProvider,
    UnknownKeyVersion,
    tables,
)
from engine.blind_index import (
    IndexDefinition,
    NormalisationError,
    UnknownBlindIndex,
    bits_for_rows,
)
from engine.keys import KeyProviderError

MASTER = "dev-only-master-key-of-at-least-32-bytes!"


def provider(versions=(1,), **kw) -> StaticKeyProvider:
    return StaticKeyProvider({v: os.urandom(32) for v in versions}, index_key=os.urandom(32), **kw)


def reference(key: bytes, message: bytes, bits: int) -> str:
    """Python's hmac, truncated to ``bits`` (low bits of the last hex digit zeroed)."""
    value = int.from_bytes(hmac.new(key, message, hashlib.sha256).digest(), "big") >> (256 - bits)
    chars = (bits + 3) // 4
    return format(value << (4 * chars - bits), f"0{chars}x")


def ascii_lower(s: str) -> str:
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in s)


WHITESPACE = " \t\n\v\f\r"


# ---------------------------------------------------------------- known answers


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.binary(max_size=300), min_size=1, max_size=50),
       bits=st.integers(1, 32))
def test_exact_values_match_pythons_hmac(values, bits):
    p = provider()
    index = BlindIndex(p, "t", "c", bits=bits)
    key = p.index_key("t", "c", 1)
    assert index.compute(values) == [reference(key, v, bits) for v in values]


def test_a_known_answer_with_a_fixed_key():
    p = StaticKeyProvider({1: bytes(32)}, index_key=bytes(range(32)))
    key = p.index_key("users", "email", 1)
    # the key derivation, written out with Python's hmac
    message = (b"engine blind index v1" + (5).to_bytes(4, "big") + b"users"
               + (5).to_bytes(4, "big") + b"email" + (1).to_bytes(4, "big"))
    assert key == hmac.new(bytes(range(32)), message, hashlib.sha256).digest()
    index = BlindIndex(p, "users", "email", normalizer="email", bits=32)
    assert index.compute([" Alice@Example.COM"]) == [
        hmac.new(key, b"alice@example.com", hashlib.sha256).hexdigest()[:8]]


def test_many_rows_on_threads_match_python():
    p = provider()
    rng = np.random.default_rng(1)
    values = [os.urandom(int(rng.integers(0, 80))) for _ in range(20_000)]
    index = BlindIndex(p, "t", "c", bits=24, threads=2)
    key = p.index_key("t", "c", 1)
    got = index.compute(Batch.from_list(values))
    assert got == [reference(key, v, 24) for v in values]


# ---------------------------------------------------------------- normalisation


text = st.text(alphabet=st.sampled_from(list("aAbBzZ09 @.\t\n-_é") + ["Ö", "ß"]), max_size=30)


@settings(max_examples=200, deadline=None)
@given(value=text)
def test_text_and_email_normalisers_match_a_reference(value):
    p = provider()
    key = p.index_key("t", "c", 1)
    normal = ascii_lower(value.strip(WHITESPACE))
    assert BlindIndex(p, "t", "c", normalizer="text", bits=32).compute([value]) == [
        reference(key, normal.encode(), 32)]
    email = BlindIndex(p, "t", "c", normalizer="email", bits=32)
    local, at, domain = normal.partition("@")
    valid = (normal.count("@") == 1 and local and domain and len(normal.encode()) <= 254
             and not any(c in WHITESPACE for c in normal))
    if valid:
        assert email.compute([value]) == [reference(key, normal.encode(), 32)]
        assert email.compute([normal]) == email.compute([value])  # idempotent
    else:
        with pytest.raises(NormalisationError) as err:
            email.compute(["ok@example.com", value])
        assert err.value.failed.tolist() == [1]


ASCII_WHITESPACE = b" \t\n\v\f\r"  # what the normalisers are documented to trim


def _documented(name: str, raw: bytes) -> bytes | None:
    """The documented normalisers, written out on bytes (None: the value fails)."""
    trimmed = raw.strip(ASCII_WHITESPACE)
    lowered = bytes(b + 32 if 65 <= b <= 90 else b for b in trimmed)
    if name == "trim":
        return trimmed
    if name == "lower":
        return bytes(b + 32 if 65 <= b <= 90 else b for b in raw)
    if name == "text":
        return lowered
    if name == "email":
        local, at, domain = lowered.partition(b"@")
        ok = (lowered.count(b"@") == 1 and local and domain and len(lowered) <= 254
              and not any(b in ASCII_WHITESPACE for b in lowered))
        return lowered if ok else None
    digits = bytes(b for b in raw if 48 <= b <= 57)
    return digits or None


@pytest.mark.parametrize("name", ["trim", "lower", "text", "email", "digits"])
@pytest.mark.parametrize("threads", [1, 2])
def test_every_ascii_whitespace_and_no_other_byte_is_trimmed(name, threads):
    """Each byte 0-127, and a few non-ASCII spaces, before, after and inside a value: the six
    ASCII whitespace bytes (tab, LF, VT, FF, CR and space) are trimmed and nothing else is (not
    the separators 0x1c-0x1f that str.strip() also takes, not NBSP or NEL)"""
    p = provider()
    key = p.index_key("t", "c", 1)
    others = ["\u00a0".encode(), "\u0085".encode(), "\u2003".encode(), b"\x85", b"\xa0"]
    pads = [bytes([b]) for b in range(128)] + others
    values = []
    for pad in pads:
        for body in (b"Ab@Example.Com", b"12-3"):
            values += [pad + body, body + pad, pad + pad + body + pad, body[:2] + pad + body[2:]]
    values = values * 40  # enough rows for several threads to share them
    index = BlindIndex(p, "t", "c", normalizer=name, bits=32, threads=threads)
    expected = [_documented(name, v) for v in values]
    good = [v for v, e in zip(values, expected) if e is not None]
    assert index.compute(Batch.from_list(good)) == [
        reference(key, e, 32) for e in expected if e is not None]
    for v, e in zip(values[:len(values) // 40], expected):
        if e is None:
            with pytest.raises(NormalisationError):
                index.compute([v])


@settings(max_examples=100, deadline=None)
@given(value=st.text(max_size=20))
def test_digits_and_equivalent_spellings(value):
    p = provider()
    index = BlindIndex(p, "t", "phone", normalizer="digits")
    digits = "".join(c for c in value if "0" <= c <= "9")
    if digits:
        assert index.compute([value]) == index.compute([digits])
    else:
        with pytest.raises(NormalisationError):
            index.compute([value])


def test_normalisers_make_equal_what_should_be_equal():
    p = provider()
    email = BlindIndex(p, "users", "email", normalizer="email")
    a, b, c = email.compute(["  Alice@Example.com\n", "alice@example.com", "alice@example.org"])
    assert a == b != c
    ssn = BlindIndex(p, "users", "ssn", normalizer="digits")
    assert ssn.compute(["123-45-6789"]) == ssn.compute(["123 45 6789"])
    custom = BlindIndex(p, "users", "name", normalizer=lambda s: " ".join(s.split()).casefold())
    assert custom.compute(["Jean  Dupont"]) == custom.compute(["jean dupont"])


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 31))
def test_truncation_keeps_the_leading_bits(bits):
    p = provider()
    values = [f"user{i}@example.com" for i in range(50)]
    short = BlindIndex(p, "t", "c", bits=bits).compute(values)
    longer = BlindIndex(p, "t", "c", bits=bits + 1).compute(values)
    full = BlindIndex(p, "t", "c", bits=32).compute(values)
    for s, l, f in zip(short, longer, full):
        assert len(s) == (bits + 3) // 4
        head = int(f, 16) >> (32 - bits)
        assert int(s, 16) >> (4 * len(s) - bits) == head == int(l, 16) >> (4 * len(l) - bits - 1) >> 1
        assert int(s, 16) & ((1 << (4 * len(s) - bits)) - 1) == 0  # unused bits are zero


def test_truncation_makes_collisions_at_the_expected_rate():
    p = provider()
    values = [f"user{i}@example.com" for i in range(40_000)]
    out = BlindIndex(p, "t", "c", bits=bits_for_rows(40_000)).compute(values)
    per_value = len(values) / len(set(out))
    assert 1.5 < per_value < 6  # a few rows share each index value
    assert bits_for_rows(40_000) == 14 and bits_for_rows(1_000_000) == 18
    assert bits_for_rows(1) == 1 and bits_for_rows(10**15) == 32


# ---------------------------------------------------------------- compound indexes


def test_compound_index_hashes_length_prefixed_fields():
    p = provider()
    index = BlindIndex(p, "people", ["last_name", "birth_year"], normalizer="text", bits=32)
    key = p.index_key("people", "last_name+birth_year", 1)
    got = index.compute({"last_name": [" Smith", "Doe", None, "ab"],
                         "birth_year": [1980, 1975, 1990, None]})
    message = b"".join(len(x).to_bytes(4, "big") + x for x in (b"smith", b"1980"))
    assert got[0] == reference(key, message, 32)
    assert got[2] is None and got[3] is None
    split = index.compute([["ab", "a"], ["c", "bc"]])  # one sequence per column
    assert split[0] != split[1]  # "ab"+"c" and "a"+"bc" do not collide by construction
    assert index.lookup({"last_name": "SMITH", "birth_year": 1980}) == [got[0]]
    assert index.lookup(("smith", "1980")) == [got[0]]
    with pytest.raises(InvalidArgument, match="different lengths"):
        index.compute({"last_name": ["a"], "birth_year": [1, 2]})
    with pytest.raises(InvalidArgument, match="needs the columns"):
        index.compute({"last_name": ["a"]})


def test_arrow_and_list_inputs_agree():
    p = provider()
    index = BlindIndex(p, "t", "email", normalizer="email")
    values = ["a@x.io", None, "B@Y.IO", "c@z.io"]
    as_list = index.compute(values)
    assert as_list[1] is None
    column = index.compute(pa.array(values), arrow=True)
    assert column.type == pa.large_string() and column.to_pylist() == as_list
    assert index.compute(pa.chunked_array([values[:2], values[2:]])) == as_list
    assert index.compute([v.encode() if v else v for v in values]) == as_list


# ---------------------------------------------------------------- keys and versions


def test_index_keys_differ_per_table_column_and_version(tmp_path):
    p = provider(versions=(1, 2))
    keys = {p.index_key(t, c, v) for t in ("a", "b") for c in ("x", "y") for v in (1, 2)}
    assert len(keys) == 8 and all(len(k) == 32 for k in keys)
    with pytest.raises(UnknownKeyVersion):
        p.index_key("a", "x", 3)
    with pytest.raises(KeyProviderError, match="index_key"):
        StaticKeyProvider({1: os.urandom(32)}).index_key("a", "x", 1)
    env = EnvironmentKeyProvider(master_key=MASTER, state_path=tmp_path / "k.json")
    env.get_current_key()
    again = EnvironmentKeyProvider(master_key=MASTER, state_path=tmp_path / "k.json")
    assert env.index_key("users", "email", 1) == again.index_key("users", "email", 1)
    other = EnvironmentKeyProvider(master_key=MASTER + "x", state_path=tmp_path / "k2.json")
    other.get_current_key()  # its own versions (under env's, its key check values refuse it)
    assert other.index_key("users", "email", 1) != env.index_key("users", "email", 1)
    assert env.index_key("users", "email", 1) not in (env.audit_key(),)
    with pytest.raises(UnknownKeyVersion):
        env.index_key("users", "email", 2)
    with pytest.raises(InvalidArgument):
        env.index_key("", "email", 1)


def test_lookup_covers_versions_until_they_are_purged():
    """Rows keep their index values under their version until a job moves them: a lookup
    asks for every version the provider holds, deprecated ones too (they still decrypt)."""
    p = provider(versions=(1,))
    index = BlindIndex(p, "users", "email", normalizer="email")
    old = index.compute(["alice@example.com"])[0]
    p.create_version()
    new = index.compute(["alice@example.com"])[0]
    assert index.pending_versions() == [2, 1]
    assert index.lookup("Alice@Example.com") == [new, old]
    assert index.compute(["alice@example.com"], version=1) == [old]
    assert index.lookup("alice@example.com", versions=[2]) == [new]
    p.set_state(1, KeyState.DEPRECATED)
    assert index.lookup("alice@example.com") == [new, old]
    p.purge(1)
    assert index.lookup("alice@example.com") == [new]


def test_vault_keeps_a_random_index_secret_per_version(bao, names):
    import hvac

    from engine.vault import VaultKeyProvider

    with VaultKeyProvider(bao.address, token=bao.root_token, **names) as vault:
        vault.get_current_key()
        vault.create_version()
        key1 = vault.index_key("users", "email", 1)
        assert key1 != vault.index_key("users", "email", 2) != vault.index_key("users", "x", 2)
        with VaultKeyProvider(bao.address, token=bao.root_token, **names) as again:
            assert again.index_key("users", "email", 1) == key1
        admin = hvac.Client(bao.address, token=bao.root_token)
        stored = admin.secrets.kv.v2.read_secret_version(
            path=f"{names['kv_path']}/index-v1", mount_point="secret",
            raise_on_deleted_version=True)["data"]["data"]
        assert len(stored["key"]) == 44  # 32 random bytes, base64
        with pytest.raises(UnknownKeyVersion):
            vault.index_key("users", "email", 9)
        vault.set_state(1, KeyState.DEPRECATED)
        vault.purge(1)
        with pytest.raises(hvac.exceptions.InvalidPath):
            admin.secrets.kv.v2.read_secret_version(path=f"{names['kv_path']}/index-v1",
                                                    mount_point="secret",
                                                    raise_on_deleted_version=True)


@pytest.mark.parametrize("wrong", ["trailing newline", "another key"])
def test_index_keys_are_refused_under_a_master_key_that_fails_the_check(tmp_path, wrong):
    """A search service whose master key differs from the writer's (a trailing newline from a
    mounted secret) must fail loudly, as encryption does, not look up under another key."""
    from engine.keys import MasterKeyMismatch
    from engine.keys.environment import DerivationPolicy

    state = tmp_path / "keys.json"
    policy = DerivationPolicy(iterations=1000)
    writer = EnvironmentKeyProvider(master_key=MASTER, state_path=state, policy=policy)
    writer.get_current_key()
    writer.create_version()
    stored = BlindIndex(writer, "users", "email", normalizer="email").compute(["a@example.com"])
    other = MASTER + "\n" if wrong == "trailing newline" else "another-master-key-0123456789-abc"
    search = EnvironmentKeyProvider(master_key=other, state_path=state, policy=policy)
    for version in (1, 2):
        with pytest.raises(MasterKeyMismatch) as err:
            search.index_key("users", "email", version)
        assert MASTER not in str(err.value) and "another-master" not in str(err.value)
    with pytest.raises(MasterKeyMismatch):
        BlindIndex(search, "users", "email", normalizer="email").compute(["a@example.com"])
    with pytest.raises(MasterKeyMismatch):
        BlindIndex(search, "users", "email", normalizer="email").lookup("a@example.com")
    with pytest.raises(MasterKeyMismatch):
        search.audit_key()
    if wrong == "trailing newline":
        assert "whitespace at its ends" in str(err.value)
    right = EnvironmentKeyProvider(master_key=MASTER, state_path=state, policy=policy)
    assert BlindIndex(right, "users", "email", normalizer="email").compute(
        ["a@example.com"]) == stored


def test_vault_refuses_an_index_secret_replaced_or_deleted(bao, names):
    """Vault's blind-index secret is random and lives in KV: one recreated after a deletion, or
    overwritten, would silently make every lookup miss. Its check value in the version's entry
    refuses it, and a missing secret is not recreated."""
    import base64

    import hvac

    from engine.keys import MasterKeyMismatch
    from engine.vault import VaultKeyProvider

    admin = hvac.Client(bao.address, token=bao.root_token)
    path = f"{names['kv_path']}/index-v1"
    with VaultKeyProvider(bao.address, token=bao.root_token, **names) as vault:
        vault.get_current_key()
        key = vault.index_key("users", "email", 1)
        entry = admin.secrets.kv.v2.read_secret_version(
            path=f"{names['kv_path']}/v1", mount_point="secret",
            raise_on_deleted_version=True)["data"]["data"]
        assert len(base64.b64decode(entry["index_kcv"])) == 16
        assert vault.index_key("users", "email", 1) == key
        vault.record_usage(1, 5)  # other updates of the entry keep the check value
        assert vault.index_key("users", "email", 1) == key
        admin.secrets.kv.v2.create_or_update_secret(
            path=path, secret={"key": base64.b64encode(os.urandom(32)).decode()},
            mount_point="secret")
        with pytest.raises(MasterKeyMismatch, match="not the one"):
            vault.index_key("users", "email", 1)
        admin.secrets.kv.v2.delete_metadata_and_all_versions(path=path, mount_point="secret")
        with pytest.raises(MasterKeyMismatch, match="missing"):
            vault.index_key("users", "email", 1)
        with pytest.raises(hvac.exceptions.InvalidPath):  # not recreated
            admin.secrets.kv.v2.read_secret_version(path=path, mount_point="secret",
                                                    raise_on_deleted_version=True)
        # an entry written before index_kcv existed records it at the first use
        vault.create_version()
        v2 = admin.secrets.kv.v2.read_secret_version(
            path=f"{names['kv_path']}/v2", mount_point="secret",
            raise_on_deleted_version=True)["data"]["data"]
        v2.pop("index_kcv", None)
        admin.secrets.kv.v2.create_or_update_secret(path=f"{names['kv_path']}/v2", secret=v2,
                                                    mount_point="secret")
        key2 = vault.index_key("users", "email", 2)
        with VaultKeyProvider(bao.address, token=bao.root_token, **names) as again:
            assert again.index_key("users", "email", 2) == key2


def test_a_definition_rebuilds_the_same_index_anywhere():
    p = provider(versions=(1, 2))
    index = BlindIndex(p, "users", ["last_name", "birth_year"], bits=20, name="name_idx",
                       normalizers={"last_name": "text", "birth_year": "digits"})
    definition = index.definition
    assert pickle.loads(pickle.dumps(definition)) == definition
    assert IndexDefinition.parse("name_idx=last_name+birth_year:text+digits:20",
                                 "users") == definition
    rows = {"last_name": ["Ng", " LI ", None], "birth_year": [1990, "AD 1985", 2000]}
    assert definition.build(p).compute(rows, version=1) == index.compute(rows, version=1)
    assert IndexDefinition.parse("email", "users") == BlindIndex(p, "users", "email").definition
    assert IndexDefinition.parse("a+b:email", "t").normalizers == ("email", "email")
    assert IndexDefinition.parse("a+b::7", "t") == IndexDefinition("t", ("a", "b"),
                                                                    ("exact", "exact"), 7, "a_b_idx")
    for bad, message in [("", "cannot read"), ("x=a:b:c:d", "cannot read"),
                         ("a+b:text+digits+exact", "one per column"),
                         ("a:soundex", "unknown normaliser"), ("a::40", "bits must be"),
                         ("a::x", "BITS is a whole number"), ("a+a", "distinct"),
                         # no bare ValueError from int() past 4,300 digits; ASCII digits only
                         ("a::" + "9" * 5000, "BITS is a whole number"),
                         ("a::\u0661\u0662", "BITS is a whole number")]:
        with pytest.raises(InvalidArgument, match=message):
            IndexDefinition.parse(bad, "users")
    with pytest.raises(InvalidArgument, match="--index-table"):
        IndexDefinition.parse("email", None)
    with pytest.raises(InvalidArgumentType):
        IndexDefinition.parse(5, "users")
    with pytest.raises(InvalidArgument, match="one normaliser per column"):
        IndexDefinition("t", ("a", "b"), ("exact",), 8, "x")
    index.check_key(2)
    with pytest.raises(UnknownKeyVersion):
        index.check_key(3)
    with pytest.raises(KeyProviderError):
        BlindIndex(StaticKeyProvider({1: os.urandom(32)}), "t", "c").check_key()


# ---------------------------------------------------------------- writing and searching


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    """A real database: an SQLite file, or a database on the session's PostgreSQL server."""
    from reencrypt_support import new_database

    postgres = request.getfixturevalue("postgres") if request.param == "postgres" else None
    return new_database(request.param, tmp_path, postgres)


def test_search_by_index_over_encrypted_emails(db):
    p = StaticKeyProvider({1: os.urandom(32)}, index_key=os.urandom(32))
    fields = FieldEncryption(EncryptionService(p, metrics=False))
    index = BlindIndex(p, "users", "email", normalizer="email", bits=6)  # many false positives
    names = BlindIndex(p, "users", ["last_name", "birth_year"], normalizer="text", bits=12,
                       name="name_idx")
    users = [{"id": i, "email": f"User{i}@Example.com", "last_name": f"Name{i % 40}",
              "birth_year": 1950 + i % 50} for i in range(3000)]
    users[7]["email"] = None
    rows = fields.encrypt_column(fields.encrypt_column(users, "email", blind_indexes=BlindIndexes(
        index, names)), "last_name")
    assert rows[5]["email"].startswith("ef1:") and len(rows[5]["email_idx"]) == 2
    assert rows[7]["email"] is None and "email_idx" not in rows[7]  # as a missing field stays
    db.run(f"CREATE TABLE users (id {db.key_type} PRIMARY KEY, email TEXT, email_idx TEXT,"
           " last_name TEXT, birth_year INTEGER, name_idx TEXT)")
    db.run("CREATE INDEX users_email_idx ON users (email_idx)")
    db.run("CREATE INDEX users_name_idx ON users (name_idx)")
    db.run_many("INSERT INTO users VALUES (%s, %s, %s, %s, %s, %s)",
                [(r["id"], r["email"], r.get("email_idx"), r["last_name"], r["birth_year"],
                  r["name_idx"]) for r in rows])

    def find(email: str) -> list[int]:
        candidates = index.lookup(email)
        marks = ", ".join(["%s"] * len(candidates))
        found = [{"id": i, "email": e} for i, e in db.rows(
            f"SELECT id, email FROM users WHERE email_idx IN ({marks})", candidates)]
        assert len(found) > 1  # 6 bits over 3,000 rows: false positives to filter out
        plain = fields.decrypt_column(found, "email")
        return sorted(r["id"] for r in plain
                      if r["email"].strip().lower() == email.strip().lower())

    assert find("  user1234@EXAMPLE.com") == [1234]
    assert find("nobody@example.com") == []
    # a compound index: every row with that name and year, and only those once decrypted
    found = db.rows("SELECT id, last_name, birth_year FROM users WHERE name_idx = %s",
                    names.lookup({"last_name": " NAME7 ", "birth_year": 1957}))
    matching = [i for i, n, y in zip(*[[r[k] for r in found] for k in range(3)])
                if fields.service.decrypt_text(n) == "Name7" and y == 1957]
    assert sorted(matching) == [i for i in range(3000) if i % 40 == 7 and i % 50 == 7]


def test_tables_write_the_index_beside_the_encrypted_column():
    p = StaticKeyProvider({1: os.urandom(32)}, index_key=os.urandom(32))
    service = EncryptionService(p, metrics=False)
    indexes = BlindIndexes(BlindIndex(p, "users", "email", normalizer="email"),
                           BlindIndex(p, "users", ["last_name", "birth_year"], normalizer="text"))
    users = pa.table({"id": [1, 2, 3], "email": ["a@x.io", None, "c@x.io"],
                      "last_name": ["Ng", "Li", None], "birth_year": [1990, 1985, 1970]})
    sealed = tables.encrypt_columns(users, ["email"], service=service, blind_indexes=indexes)
    assert sealed.schema.names == users.schema.names + ["email_idx", "last_name_birth_year_idx"]
    assert sealed.column("email_idx").to_pylist() == indexes["email_idx"].compute(
        ["a@x.io", None, "c@x.io"])
    assert sealed.column("last_name_birth_year_idx")[2].as_py() is None
    again = tables.encrypt_columns(users.append_column("email_idx", pa.array(["x"] * 3)),
                                   "email", service=service, blind_indexes=indexes)
    assert again.column("email_idx").to_pylist() == sealed.column("email_idx").to_pylist()
    back = tables.decrypt_columns(sealed, ["email"], service=service)
    assert back.column("email").to_pylist() == users.column("email").to_pylist()
    frame = tables.encrypt_columns(users.to_pandas(), "email", service=service,
                                   blind_indexes=indexes["email_idx"])
    pandas_nulls_as_none = [v if isinstance(v, str) else None for v in frame["email_idx"]]
    assert pandas_nulls_as_none == sealed.column("email_idx").to_pylist()


def test_compute_all_is_the_reindexing_hook():
    p = provider(versions=(1, 2))
    indexes = BlindIndexes(BlindIndex(p, "users", "email", normalizer="email"),
                           BlindIndex(p, "users", "ssn", normalizer="digits"))
    columns = {"email": ["a@x.io", "b@x.io"], "ssn": ["123-45-6789", None], "other": [1, 2]}
    under_1 = indexes.compute_all(columns, version=1)
    assert under_1 == {"email_idx": indexes["email_idx"].compute(columns["email"], version=1),
                       "ssn_idx": indexes["ssn_idx"].compute(columns["ssn"], version=1)}
    assert indexes.compute_all(columns)["email_idx"] != under_1["email_idx"]  # current: 2


# ---------------------------------------------------------------- errors


def test_errors_are_clear_and_typed():
    p = provider()
    indexes = BlindIndexes(BlindIndex(p, "users", "email", normalizer="email"))
    with pytest.raises(UnknownBlindIndex, match="no blind index 'phone_idx'"):
        indexes.lookup("phone_idx", "x")
    with pytest.raises(NormalisationError, match="row 1 of column 'email'") as err:
        indexes["email_idx"].compute(["ok@x.io", "secret-value-without-at", "b@@x.io"])
    assert err.value.failed.tolist() == [1, 2]
    assert "secret-value" not in str(err.value) and err.value.__context__ is None
    with pytest.raises(NormalisationError):
        indexes.lookup("email_idx", "not an email")
    with pytest.raises(InvalidArgument, match="NULL"):
        indexes.lookup("email_idx", None)
    with pytest.raises(InvalidArgument, match="unknown normaliser"):
        BlindIndex(p, "users", "email", normalizer="soundex")
    with pytest.raises(InvalidArgument, match="bits"):
        BlindIndex(p, "users", "email", bits=33)
    with pytest.raises(InvalidArgument, match="normalizers names"):
        BlindIndex(p, "users", "email", normalizers={"phone": "digits"})
    with pytest.raises(InvalidArgument, match="several tables"):
        BlindIndexes(BlindIndex(p, "a", "x"), BlindIndex(p, "b", "x"))
    with pytest.raises(NormalisationError) as err:
        BlindIndex(p, "t", "c", normalizer=lambda s: 1 / 0).compute(["value"])
    assert err.value.__context__ is None
    with pytest.raises(TypeError):
        pickle.dumps(indexes["email_idx"])
    assert p.index_key("users", "email", 1).hex()[:8] not in repr(indexes["email_idx"])
    with pytest.raises(InvalidArgument, match="dict records or tables"):
        FieldEncryption(EncryptionService(p, metrics=False)).encrypt_column(
            ["a@x.io"], "email", blind_indexes=indexes)
    with pytest.raises(InvalidArgumentType, match="index str, bytes or int"):
        indexes["email_idx"].compute([1.5])


def test_the_plaintext_copies_an_index_makes_are_wiped_and_the_callers_are_kept(monkeypatch):
    """Normalising and joining fields copies the plaintexts (lower-cased emails, a compound
    message); once hashed, those copies are zeroed, as the service wipes what it opens. A
    batch the caller gave keeps its bytes. The native HMAC runs as usual: the wrapper only
    keeps a reference to the buffer it was handed."""
    import engine.blind_index as blind_index

    hashed = []
    native = blind_index._native.hmac_sha256_batch

    def hmac_batch(key, n, data, offsets, out, bits, threads):
        hashed.append(data)
        return native(key, n, data, offsets, out, bits, threads)

    monkeypatch.setattr(blind_index._native, "hmac_sha256_batch", hmac_batch)
    p = provider()
    emails = [f" User{i}@Example.COM" for i in range(300)]
    given = Batch.from_list(emails)
    cases = [
        (BlindIndex(p, "users", "email", normalizer="email"), emails),
        (BlindIndex(p, "users", "email", normalizer="email"), given),
        (BlindIndex(p, "users", "email", normalizer="lower"), given),   # same lengths: in place
        (BlindIndex(p, "users", "email", normalizer=str.strip), emails),
        (BlindIndex(p, "users", ["email", "year"], normalizer="text"),
         {"email": given, "year": [1990 + i % 30 if i % 7 else None for i in range(300)]}),
    ]
    for index, values in cases:
        expected = reference_index(index, emails, values)
        hashed.clear()
        assert index.compute(values) == expected
        assert len(hashed) == 1 and not hashed[0].any(), index.name
    assert given.to_list() == [e.encode() for e in emails]
    exact = BlindIndex(p, "users", "email")  # hashes the caller's batch as it is
    exact.compute(given)
    assert given.to_list() == [e.encode() for e in emails]


def reference_index(index, emails, values):
    """The index values, computed from a fresh copy of the inputs."""
    if isinstance(values, dict):
        return index.compute({"email": list(emails), "year": list(values["year"])})
    return index.compute(list(emails))
