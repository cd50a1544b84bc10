"""Purging a key version against inventories of real stores: refused while any value names the
version, readable or not, with counts per store and column."""

from __future__ import annotations

import dataclasses
import os
import random
import sqlite3

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine import EncryptionService, KeyRotationService, RotationPolicy, StaticKeyProvider
from engine.formats.envelope import EncryptedData
from engine.keys import UnknownKeyVersion
from engine.reencrypt import AadRule, inventory, open_store, reencrypt
from engine.rotation import VersionStillInUse

from reencrypt_support import K1, K2

K9 = b"\x99" * 32
RULE = AadRule.template("t:{id}")
KINDS = ("v2", "v1", "wrong_aad", "tampered", "other_key", "malformed", "null")


def provider() -> StaticKeyProvider:
    """v2 current, v1 deprecated: what rotation leaves before a purge."""
    return StaticKeyProvider({1: K1, 2: K2}, states={1: "deprecated"})


def rotation(p: StaticKeyProvider, tmp_path) -> KeyRotationService:
    return KeyRotationService(p, RotationPolicy(retention_versions=1), state_dir=tmp_path / "rot")


def tampered(token: str) -> str:
    value = EncryptedData.from_token(token)
    flipped = bytes([value.ciphertext[0] ^ 1]) + value.ciphertext[1:]
    return dataclasses.replace(value, ciphertext=flipped).to_token()


def values_of(kinds: list[str]) -> list:
    """One stored value per kind, row ids 1..n, AAD ``t:{id}`` (as RULE reads it)."""
    v1 = EncryptionService(StaticKeyProvider({1: K1}), metrics=False)
    v2 = EncryptionService(StaticKeyProvider({2: K2}), metrics=False)
    stranger = EncryptionService(StaticKeyProvider({1: K9}), metrics=False)
    out: list = []
    for i, kind in enumerate(kinds, start=1):
        plain, aad = [f"p{i}"], [f"t:{i}"]
        if kind in ("null", "malformed"):
            out.append(None if kind == "null" else f"not a token {i}")
        elif kind == "wrong_aad":
            out.append(v1.encrypt_many(plain, aad=[f"legacy:{i}"])[0])
        else:
            sealer = {"v2": v2, "other_key": stranger}.get(kind, v1)
            token = sealer.encrypt_many(plain, aad=aad)[0]
            out.append(tampered(token) if kind == "tampered" else token)
    return out


def sqlite_store(path: str, values: list):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, ssn TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", list(enumerate(values, start=1)))
    conn.commit()
    conn.close()
    return open_store(f"sqlite:///{path}", "t", "id")


def parquet_store(path: str, values: list):
    os.makedirs(path, exist_ok=True)
    pq.write_table(pa.table({"id": list(range(1, len(values) + 1)),
                             "ssn": pa.array(values, pa.string())}),
                   os.path.join(path, "part-0.parquet"))
    return open_store(f"parquet://{path}")


@pytest.mark.parametrize("seed", range(10))
def test_purge_is_refused_while_any_value_names_the_version(tmp_path, seed):
    rng = random.Random(seed)
    counts = {k: rng.choice((0, 0, 1, 3)) for k in KINDS}
    counts["v2"] += 1  # the job's sample reads at least one value it can open
    kinds = [k for k, n in counts.items() for _ in range(n)]
    rng.shuffle(kinds)
    values = values_of(kinds)
    readable = counts["v1"]
    failing = counts["wrong_aad"] + counts["tampered"] + counts["other_key"]
    p = provider()
    svc = EncryptionService(p, metrics=False)
    stores = [sqlite_store(str(tmp_path / "t.db"), values),
              parquet_store(str(tmp_path / "t"), values)]
    for store in stores:
        inv = inventory(store, ["ssn"], aad=RULE, service=svc)
        want = {k: n for k, n in (("readable", readable), ("invalid_tag", failing)) if n}
        assert list(inv.still_named(1).values()) == ([want] if want else [])
        if not want:
            continue
        with pytest.raises(VersionStillInUse) as refused:
            rotation(p, tmp_path).purge(1, inventory=inv)
        assert refused.value.still_named == {(store.display, inv.values_under(1).popitem()[0]):
                                             want}
        message = str(refused.value)
        assert f"still named by {readable + failing} value(s), {failing} of them" in message
        assert store.display in message
        if failing:
            assert f"{failing} failing authentication" in message
        assert p.get_key(1) is not None  # nothing deleted


def test_values_failing_authentication_only_stop_the_purge_and_open_with_their_own_aad(tmp_path):
    kinds = ["v1"] * 6 + ["wrong_aad"] * 2
    values = values_of(kinds)
    p = provider()
    svc = EncryptionService(p, metrics=False)
    store = sqlite_store(str(tmp_path / "t.db"), values)
    report = reencrypt(store, ["ssn"], aad=RULE, service=svc)
    assert report.reencrypted == 6 and report.failed == 2
    inv = inventory(store, ["ssn"], aad=RULE, service=svc)
    assert inv.values_under(1) == {"t.ssn": 0}  # what the purge looked at before: nothing
    assert inv.columns["ssn"].unreadable_versions == {1: {"invalid_tag": 2}}
    with pytest.raises(VersionStillInUse, match="2 failing authentication"):
        rotation(p, tmp_path).purge(1, inventory=inv)
    # the refusal is right: those two open with the AAD they were sealed with
    legacy = [v for v, k in zip(values, kinds) if k == "wrong_aad"]
    ids = [i for i, k in enumerate(kinds, start=1) if k == "wrong_aad"]
    assert svc.decrypt_many_text(legacy, aad=[f"legacy:{i}" for i in ids]) == \
        [f"p{i}" for i in ids]
    conn = sqlite3.connect(str(tmp_path / "t.db"))
    conn.executemany("UPDATE t SET ssn = ? WHERE id = ?",
                     [(svc.encrypt_many([f"p{i}"], aad=[f"t:{i}"])[0], i) for i in ids])
    conn.commit()
    conn.close()
    rotation(p, tmp_path).purge(1, inventory=inventory(store, ["ssn"], aad=RULE, service=svc))
    with pytest.raises(UnknownKeyVersion):
        p.get_key(1)


def test_values_under_a_version_the_inventory_did_not_have_stop_the_purge(tmp_path):
    values = values_of(["v2", "v1", "v1"])
    p = provider()
    store = sqlite_store(str(tmp_path / "t.db"), values)
    without_v1 = EncryptionService(StaticKeyProvider({2: K2}), metrics=False)
    inv = inventory(store, ["ssn"], aad=RULE, service=without_v1)
    assert inv.still_named(1) == {"t.ssn": {"unknown_key_version": 2}}
    with pytest.raises(VersionStillInUse, match="2 under a version this provider does not"):
        rotation(p, tmp_path).purge(1, inventory=inv)


def test_counts_are_per_store_and_column_never_merged_by_name(tmp_path):
    p = provider()
    svc = EncryptionService(p, metrics=False)
    a = parquet_store(str(tmp_path / "a"), values_of(["v2", "v1", "v1", "v1"]))
    b = parquet_store(str(tmp_path / "b"), values_of(["v2", "v1", "wrong_aad"]))
    c = sqlite_store(str(tmp_path / "c.db"), values_of(["v2", "v1"]))
    inventories = [inventory(s, ["ssn"], aad=RULE, service=svc) for s in (a, b, c)]
    with pytest.raises(VersionStillInUse) as refused:
        rotation(p, tmp_path).purge(1, inventory=inventories)
    assert refused.value.still_named == {
        (a.display, "ssn"): {"readable": 3},
        (b.display, "ssn"): {"readable": 1, "invalid_tag": 1},
        (c.display, "t.ssn"): {"readable": 1}}
    message = str(refused.value)
    assert "still named by 6 value(s), 1 of them unreadable" in message
    assert f"{a.display} ssn: 3 readable" in message
    assert f"{b.display} ssn: 1 failing authentication" in message
    # the same store twice (a second inventory of it) is not counted twice
    with pytest.raises(VersionStillInUse, match="still named by 3 value"):
        rotation(p, tmp_path).purge(1, inventory=[inventories[0], inventories[0]])


def test_rows_of_the_sealed_layout_the_job_cannot_read_still_stop_the_purge(tmp_path):
    from engine import Batch
    from engine.reencrypt import Column, SealedLayout

    p = provider()
    svc = EncryptionService(p, metrics=False)
    key = p.get_key(1)
    readable = key.cipher.seal_batch(Batch.from_list([b"a", b"b"])).to_arrow()
    twelve = key.cipher.seal_batch(Batch.from_list([b"c"]), nonce_size=12).to_arrow()
    path = tmp_path / "sealed"
    os.makedirs(path)
    pq.write_table(pa.table({
        "nonce": pa.array(readable["nonce"].to_pylist() + twelve["nonce"].to_pylist(),
                          pa.binary()),
        "tag": pa.array(readable["tag"].to_pylist() + twelve["tag"].to_pylist(), pa.binary(16)),
        "ciphertext": pa.array(readable["ciphertext"].to_pylist()
                               + twelve["ciphertext"].to_pylist(), pa.large_binary()),
        "key_version": pa.array([1, 1, 1], pa.int32())}), path / "p.parquet")
    store = open_store(f"parquet://{path}")
    column = Column("email", sealed=SealedLayout())
    reencrypt(store, [column], service=svc)
    inv = inventory(store, [column], service=svc)
    assert inv.columns["email"].malformed == 1
    assert inv.still_named(1) == {"email": {"malformed": 1}}
    with pytest.raises(VersionStillInUse, match="1 in a layout the job cannot read"):
        rotation(p, tmp_path).purge(1, inventory=inv)
