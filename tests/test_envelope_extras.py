"""JSON envelopes re-sealed keep the members the application stored beside the engine's: in
order, exactly as written; in the service and through the re-encryption job on SQLite,
PostgreSQL (jsonb) and Parquet."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from engine import EncryptionService, StaticKeyProvider
from engine.formats.json_extras import ENGINE_MEMBERS, object_members
from engine.reencrypt import inventory, open_store, reencrypt
from engine.service import ValueStatus

from reencrypt_support import K1, K2, new_database

OLD = EncryptionService(StaticKeyProvider({1: K1}), metrics=False)
NEW = EncryptionService(StaticKeyProvider({1: K1, 2: K2}), metrics=False)
SPACE = st.text(alphabet=" \t\n\r", max_size=3)

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30),
    st.sampled_from(["1.0", "1e3", "-0", "2.50", "1E-7", "0.1000000000000000000001"]).map(
        lambda s: _Raw(s)),
    st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6)
extra_names = st.one_of(st.text(max_size=6), st.sampled_from(["IV", "keyversion", "n\u00e4me",
                                                              "\U0001f600", "id"]))


class _Raw(str):
    """A number spelled as given (json.dumps would respell it)."""


def spelled(value, rng_space: str = " ") -> str:
    """JSON text for ``value``, with raw number spellings and some inner whitespace."""
    if isinstance(value, _Raw):
        return str(value)
    if isinstance(value, list):
        return "[" + f",{rng_space}".join(spelled(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}{rng_space}:{spelled(v)}"
                              for k, v in value.items()) + "}"
    return json.dumps(value)


def name_text(name: str, escape: bool) -> str:
    """A member name, with every character as a \\u escape when ``escape``."""
    if not escape:
        return json.dumps(name)
    return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else json.dumps(c)[1:-1]
                         for c in name) + '"'


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(extras=st.lists(st.tuples(extra_names, json_values, st.booleans()), max_size=4),
       where=st.lists(st.integers(0, 6), min_size=4, max_size=4),
       spaces=st.lists(SPACE, min_size=12, max_size=12),
       escape_engine=st.booleans(), drop=st.sampled_from([(), ("timestamp",), ("algorithm",),
                                                          ("timestamp", "algorithm")]))
def test_extra_members_survive_in_order_and_as_written(extras, where, spaces, escape_engine,
                                                       drop):
    sealed = json.loads(OLD.encrypt("the secret").to_json())
    engine = [(k, json.dumps(v)) for k, v in sealed.items() if k not in drop]
    own = [(name, spelled(value), esc) for name, value, esc in extras
           if name not in ENGINE_MEMBERS]
    members = [(name_text(k, escape_engine), v, False) for k, v in engine]
    for (name, text, esc), at in zip(own, where):
        members.insert(min(at, len(members)), (name_text(name, esc), text, True))
    body = ",".join(f"{spaces[i % 12]}{k}{spaces[(i + 1) % 12]}:{spaces[(i + 2) % 12]}{v}"
                    for i, (k, v, _) in enumerate(members))
    stored = f"{spaces[3]}{{{body}{spaces[5]}}}{spaces[7]}"
    result = NEW.reencrypt_many([stored])
    assert result.status.tolist() == [ValueStatus.REENCRYPTED]
    written = result.values.to_list()[0].decode()
    assert NEW.decrypt_text(written) == "the secret"
    parsed = object_members(written)
    assert [raw for name, raw in parsed if name not in ENGINE_MEMBERS] == \
        [f"{k}:{v}" for k, v, extra in members if extra]
    names = [name for name, _ in parsed if name in ENGINE_MEMBERS]
    assert sorted(names) == sorted(ENGINE_MEMBERS)  # each once, the missing ones added
    assert json.loads(written)["keyVersion"] == 2
    old_doc, new_doc = json.loads(stored), json.loads(written)
    assert {k: v for k, v in new_doc.items() if k not in ENGINE_MEMBERS} == \
        {k: v for k, v in old_doc.items() if k not in ENGINE_MEMBERS}


def test_repeated_members_and_plain_values():
    env = OLD.encrypt("x").to_json()
    twice = env[:-1] + ',"tag":1,"tag":2,' + env[1:env.index(",")] + "}"  # "iv" twice too
    plain = OLD.encrypt("y").to_json()
    array = "[" + plain + "]"
    result = NEW.reencrypt_many([twice, plain, array])
    assert result.status.tolist() == [ValueStatus.REENCRYPTED, ValueStatus.REENCRYPTED,
                                      ValueStatus.MALFORMED]
    twice_new, plain_new, array_new = (v.decode() for v in result.values.to_list())
    assert [raw for name, raw in object_members(twice_new) if name == "tag"] == ['"tag":1', '"tag":2']
    assert [name for name, _ in object_members(twice_new)].count("iv") == 1
    assert NEW.decrypt_text(twice_new) == "x"
    assert [name for name, _ in object_members(plain_new)] == list(ENGINE_MEMBERS)
    assert array_new == array  # not an envelope: left as it was


def test_a_json_value_with_leading_whitespace_is_read_as_the_service_reads_it():
    value = "  \n" + OLD.encrypt("z").to_json()
    assert OLD.decrypt_text(value) == "z"  # the application reads it
    found = NEW.reencrypt_many([value], check_only=True)
    assert found.status.tolist() == [ValueStatus.OUTDATED] and found.key_versions.tolist() == [1]


@pytest.fixture(params=["sqlite", "postgres", "parquet"])
def store_with_extras(request, tmp_path):
    """(store, the stored values): ``doc`` holds JSON envelopes with the application's own
    members (nested, unicode, numbers), one per row."""
    values = []
    for i in range(40):
        env = OLD.encrypt(f"secret {i}").to_json()
        values.append('{"source":"crm","n\\u00e4me":"\\u00e9",' + env[1:-1]
                      + f',"meta":{{"row":{i},"tags":["a","b"],"score":1.50}}}}')
    if request.param == "parquet":
        os.makedirs(tmp_path / "docs")
        pq.write_table(pa.table({"id": list(range(40)), "doc": values}),
                       tmp_path / "docs" / "part-0.parquet")
        return open_store(f"parquet://{tmp_path / 'docs'}"), values, None
    postgres = request.getfixturevalue("postgres") if request.param == "postgres" else None
    db = new_database(request.param, tmp_path, postgres)
    db.run(f"CREATE TABLE docs (id {db.key_type} PRIMARY KEY, doc {db.json_type})")
    cast = "%s::jsonb" if db.kind == "postgres" else "%s"
    db.run_many(f"INSERT INTO docs VALUES (%s, {cast})", list(enumerate(values)))
    return open_store(db.url, "docs", "id"), values, db


def test_reencrypt_keeps_the_applications_members(store_with_extras):
    store, values, db = store_with_extras
    report = reencrypt(store, ["doc"], service=NEW, batch_size=16)
    assert report.reencrypted == 40 and report.failed == 0
    assert inventory(store, ["doc"], service=NEW).all_current()
    if db is None:
        stored = pq.read_table(os.path.join(store.path, "part-0.parquet"))["doc"].to_pylist()
    else:
        stored = [r[0] for r in db.rows("SELECT doc FROM docs ORDER BY id")]
    for i, (before, after) in enumerate(zip(values, stored)):
        doc = after if isinstance(after, dict) else json.loads(after)
        old = json.loads(before)
        assert {k: v for k, v in doc.items() if k not in ENGINE_MEMBERS} == \
            {k: v for k, v in old.items() if k not in ENGINE_MEMBERS}
        assert doc["keyVersion"] == 2
        text = after if isinstance(after, str) else json.dumps(after)
        assert NEW.decrypt_text(text) == f"secret {i}"
        if db is None or db.kind == "sqlite":  # text: exactly as written, in order
            assert [raw for n, raw in object_members(text) if n not in ENGINE_MEMBERS] == \
                ['"source":"crm"', '"n\\u00e4me":"\\u00e9"',
                 f'"meta":{{"row":{i},"tags":["a","b"],"score":1.50}}']
