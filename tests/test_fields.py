"""FieldEncryption: single fields on the class or an instance, columns, context binding."""

from __future__ import annotations

import copy

import pytest

from engine import BatchInvalidTag, InvalidArgument, InvalidArgumentType, InvalidTag
from engine.fields import FieldEncryption
from engine.formats.envelope import EncryptedData, is_text_token
from engine.formats.wire import MalformedEnvelope
from engine.keys import StaticKeyProvider
from engine.service import EncryptionService, reset_encryption_service

MASTER = "fields-test-master-key-0123456789abcdefgh"


@pytest.fixture
def svc() -> EncryptionService:
    return EncryptionService(StaticKeyProvider({1: b"\x22" * 32}))


@pytest.fixture
def process_service(monkeypatch, tmp_path):
    for var in ("VAULT_ENABLED", "ENGINE_KEY_STATE_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ENCRYPTION_MASTER_KEY", MASTER)
    monkeypatch.setenv("ENGINE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("ENCRYPTION_KDF_ITERATIONS", "1000")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    reset_encryption_service()
    yield
    reset_encryption_service()


USER = {"id": "123", "email": "user@example.com", "ssn": "123-45-6789"}


def test_usage_on_the_class(process_service):
    user = dict(USER)
    encrypted = FieldEncryption.encrypt_field(user, "ssn")
    assert user == USER  # input left alone
    assert encrypted is not user and is_text_token(encrypted["ssn"])
    assert encrypted["email"] == USER["email"]
    decrypted = FieldEncryption.decrypt_field(encrypted, "ssn")
    assert decrypted == USER


def test_instance_works_the_same(svc):
    fe = FieldEncryption(svc)
    enc = fe.encrypt_field(USER, "ssn")
    assert fe.decrypt_field(enc, "ssn") == USER
    assert svc.decrypt_text(enc["ssn"]) == USER["ssn"]


def test_several_fields(svc):
    fe = FieldEncryption(svc)
    enc = fe.encrypt_fields(USER, ["email", "ssn"])
    assert is_text_token(enc["email"]) and is_text_token(enc["ssn"]) and enc["id"] == "123"
    assert fe.decrypt_fields(enc, ["email", "ssn"]) == USER


def test_none_missing_and_double_encryption(svc):
    fe = FieldEncryption(svc)
    rec = {"id": 1, "ssn": None}
    assert fe.encrypt_field(rec, "ssn") == rec
    assert fe.encrypt_field({"id": 1}, "ssn") == {"id": 1}
    assert fe.decrypt_field({"id": 1}, "ssn") == {"id": 1}
    assert fe.decrypt_field(rec, "ssn") == rec
    once = fe.encrypt_field(USER, "ssn")
    assert fe.encrypt_field(once, "ssn", skip_encrypted=True) == once  # idempotent on request
    twice = fe.encrypt_field(once, "ssn")  # encrypting encrypts: the token text is the data
    assert fe.decrypt_field(twice, "ssn") == once
    lookalike = {"id": 1, "ssn": "ef1:not-really-a-token"}
    for skip in (False, True):  # not a valid token: data either way
        enc = fe.encrypt_field(lookalike, "ssn", skip_encrypted=skip)
        assert enc["ssn"] != lookalike["ssn"] and fe.decrypt_field(enc, "ssn") == lookalike


def test_a_token_submitted_as_plaintext_is_never_stored_as_is(svc):
    """Another row's token submitted as a value must not come back as this row's plaintext,
    and a forged token must not break the column."""
    fe = FieldEncryption(svc, bind_context=True)
    theirs = fe.encrypt_field({"id": 2, "ssn": "their SSN"}, "ssn")["ssn"]
    mine = fe.encrypt_field({"id": 1, "ssn": theirs}, "ssn")
    assert fe.decrypt_field(mine, "ssn")["ssn"] == theirs  # my value is the text I sent
    with pytest.raises(InvalidTag):
        fe.encrypt_field({"id": 1, "ssn": theirs}, "ssn", skip_encrypted=True)
    forged = "ef1:" + "A" * 60
    rows = [{"id": i, "ssn": f"s{i}"} for i in range(5)] + [{"id": 5, "ssn": forged}]
    out = fe.encrypt_column(rows, "ssn")
    assert fe.decrypt_column(out, "ssn") == rows
    with pytest.raises(BatchInvalidTag) as err:
        fe.encrypt_column(rows + [{"id": 6, "ssn": theirs}], "ssn", skip_encrypted=True)
    assert err.value.failed.tolist() == [6] and err.value.result is None
    done = fe.encrypt_column(rows[:5], "ssn")
    again = fe.encrypt_column(done + [{"id": 9, "ssn": "new"}], "ssn", skip_encrypted=True)
    assert again[:5] == done and fe.decrypt_column(again, "ssn")[5] == {"id": 9, "ssn": "new"}


def test_fields_hold_text_and_bytes_are_refused_up_front(svc):
    fe = FieldEncryption(svc)
    for value in (b"raw", bytearray(b"raw"), memoryview(b"raw"), 5, 1.5):
        with pytest.raises(InvalidArgumentType, match="encrypts text"):
            fe.encrypt_field({"f": value}, "f")
        with pytest.raises(InvalidArgumentType, match="encrypts text"):
            fe.encrypt_column([{"f": "ok"}, {"f": value}], "f")
        with pytest.raises(InvalidArgumentType, match="encrypts text"):
            fe.encrypt_column(["ok", None, value], "f")
    pa = pytest.importorskip("pyarrow")
    with pytest.raises(InvalidArgumentType, match="encrypts text"):
        fe.encrypt_column(pa.array([b"\xff"]), "f")


def test_bad_values(svc):
    fe = FieldEncryption(svc)
    with pytest.raises(InvalidArgumentType):
        fe.encrypt_field({"ssn": 123}, "ssn")
    with pytest.raises(MalformedEnvelope):
        fe.decrypt_field({"ssn": "plain text"}, "ssn")


def test_context_binding(svc):
    fe = FieldEncryption(svc, bind_context=True)
    a = fe.encrypt_field({"id": 1, "ssn": "111", "tax": "x"}, "ssn")
    b = fe.encrypt_field({"id": 2, "ssn": "222"}, "ssn")
    assert fe.decrypt_field(a, "ssn")["ssn"] == "111"
    with pytest.raises(InvalidTag):  # copied to another record
        fe.decrypt_field({"id": 2, "ssn": a["ssn"]}, "ssn")
    with pytest.raises(InvalidTag):  # copied to another field of the same record
        fe.decrypt_field({"id": 1, "tax": a["ssn"]}, "tax")
    with pytest.raises(InvalidTag):  # an unbound reader cannot open it either
        FieldEncryption(svc).decrypt_field(b, "ssn")
    with pytest.raises(InvalidArgument):
        fe.encrypt_field({"ssn": "no id"}, "ssn")
    custom = FieldEncryption(svc, bind_context=True, id_field="uuid")
    c = custom.encrypt_field({"uuid": "u-1", "ssn": "333"}, "ssn")
    assert custom.decrypt_field(c, "ssn")["ssn"] == "333"


def test_column_of_dicts(svc):
    records = [{"id": i, "ssn": f"{i:09d}", "name": f"n{i}"} for i in range(500)]
    records[3]["ssn"] = None
    del records[4]["ssn"]
    snapshot = copy.deepcopy(records)
    fe = FieldEncryption(svc)
    out = fe.encrypt_column(records, "ssn")
    assert records == snapshot
    assert out[3] == records[3] and "ssn" not in out[4]
    assert all(is_text_token(r["ssn"]) for i, r in enumerate(out) if i not in (3, 4))
    assert out[0] is not records[3]
    again = fe.encrypt_column(out, "ssn", skip_encrypted=True)  # nothing encrypted twice
    assert again == out
    assert fe.decrypt_column(out, "ssn") == records
    assert [fe.decrypt_field(r, "ssn") for r in out[:10]] == records[:10]


def test_column_partially_encrypted(svc):
    fe = FieldEncryption(svc)
    records = [{"id": i, "v": f"value {i}"} for i in range(20)]
    half = [fe.encrypt_field(r, "v") if i % 2 else r for i, r in enumerate(records)]
    out = fe.encrypt_column(half, "v", skip_encrypted=True)
    assert [out[i]["v"] for i in range(1, 20, 2)] == [half[i]["v"] for i in range(1, 20, 2)]
    assert fe.decrypt_column(out, "v") == records


def test_column_with_context_binding(svc):
    fe = FieldEncryption(svc, bind_context=True)
    records = [{"id": i, "ssn": f"s{i}"} for i in range(100)]
    out = fe.encrypt_column(records, "ssn")
    assert fe.decrypt_column(out, "ssn") == records
    assert fe.decrypt_field(out[7], "ssn") == records[7]
    swapped = [dict(r) for r in out]
    swapped[1]["ssn"], swapped[2]["ssn"] = out[2]["ssn"], out[1]["ssn"]
    with pytest.raises(BatchInvalidTag) as info:
        fe.decrypt_column(swapped, "ssn")
    assert info.value.failed.tolist() == [1, 2]
    with pytest.raises(InvalidArgument):
        fe.encrypt_column([{"ssn": "x"}, {"id": 1, "ssn": "y"}], "ssn")
    str_ids = [{"id": f"u{i}", "ssn": "s"} for i in range(3)]
    assert fe.decrypt_column(fe.encrypt_column(str_ids, "ssn"), "ssn") == str_ids


def test_column_of_values(svc):
    fe = FieldEncryption(svc)
    values = ["a", None, "é€", "", "d"]
    out = fe.encrypt_column(values, "f")
    assert out[1] is None and all(is_text_token(out[i]) for i in (0, 2, 3, 4))
    assert fe.decrypt_column(out, "f") == values
    with pytest.raises(InvalidArgumentType):
        fe.encrypt_column(["a", 5], "f")
    bound = FieldEncryption(svc, bind_context=True)
    out = bound.encrypt_column(["x", "y"], "f", ids=[10, 11])
    assert bound.decrypt_column(out, "f", ids=[10, 11]) == ["x", "y"]
    with pytest.raises(InvalidArgument):
        bound.encrypt_column(["x"], "f")


def test_pyarrow_column(svc):
    pa = pytest.importorskip("pyarrow")
    fe = FieldEncryption(svc)
    col = pa.array(["a", None, "ccc"])
    out = fe.encrypt_column(col, "f")
    assert isinstance(out, pa.Array) and out[1].as_py() is None
    assert is_text_token(out[0].as_py())
    back = fe.decrypt_column(out, "f")
    assert back.to_pylist() == ["a", None, "ccc"]
    chunked = pa.chunked_array([["x"], ["y", None]])
    assert fe.decrypt_column(fe.encrypt_column(chunked, "f"), "f").to_pylist() == ["x", "y", None]


def test_pandas_series(svc):
    pd = pytest.importorskip("pandas")
    fe = FieldEncryption(svc)
    s = pd.Series(["a", None, "b"], index=[10, 20, 30], name="ssn")
    out = fe.encrypt_column(s, "ssn")
    assert isinstance(out, pd.Series) and list(out.index) == [10, 20, 30]
    assert fe.decrypt_column(out, "ssn").tolist() == ["a", None, "b"]


def test_tokens_are_ordinary_service_tokens(svc):
    out = FieldEncryption(svc).encrypt_column([{"id": 1, "x": "hello"}], "x")
    assert EncryptedData.from_token(out[0]["x"]).key_version == 1
    assert svc.decrypt_text(out[0]["x"]) == "hello"


NO_PYARROW = """
import sys
sys.modules["pyarrow"] = None  # pyarrow is an optional extra: everything must work without it
import numpy as np
import engine
from engine import EncryptionService, FieldEncryption, StaticKeyProvider
from engine.formats.envelope import is_text_token

svc = EncryptionService(StaticKeyProvider({1: bytes(range(32))}))
fe = FieldEncryption(svc)
values = ["s%06d-é" % i if i % 7 else "plain %d" % i for i in range(60_000)]  # > 4 MB of tokens
tokens = svc.encrypt_many(values)
assert svc.decrypt_many_text(tokens) == values
b = engine.Batch.from_list([b"a", memoryview(b"bc"), np.frombuffer(b"d", np.uint8)])
assert b.to_list() == [b"a", b"bc", b"d"]
records = [{"id": 1, "ssn": "x"}, {"id": 2}, {"id": 3, "ssn": None}, {"id": 4, "ssn": "é"},
           {"id": 5, "ssn": tokens[0]}]
out = fe.encrypt_column(records, "ssn", skip_encrypted=True)
assert out[1] == {"id": 2} and out[2]["ssn"] is None and out[4]["ssn"] == tokens[0]
assert all(is_text_token(out[i]["ssn"]) for i in (0, 3))
back = fe.decrypt_column(out, "ssn")
assert [r.get("ssn") for r in back] == ["x", None, None, "é", values[0]]
bound = FieldEncryption(svc, bind_context=True)
enc = bound.encrypt_column([{"id": 7, "ssn": "y"}], "ssn")
assert bound.decrypt_column(enc, "ssn") == [{"id": 7, "ssn": "y"}]
print("ok")
"""


def test_everything_works_without_pyarrow():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", NO_PYARROW], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"
