"""EncryptionService.reencrypt_many and the bulk helpers under it (stored values of any kind,
standard base64, concatenation and interleaving of records)."""

from __future__ import annotations

import base64
import binascii
import json
import os
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings, strategies as st

from engine import Batch, EncryptedData, FieldEncryption, StaticKeyProvider
from engine.audit import AuditLog, read_entries
from engine.codecs import b64_decode, b64_encode, concat_each, interleave
from engine.errors import InvalidArgument, InvalidArgumentType
from engine.fields import context_aad
from engine.formats.stored import (
    VALUE_BINARY_TOKEN,
    VALUE_JSON,
    VALUE_NULL,
    VALUE_TEXT_TOKEN,
    format_stored_values,
    parse_stored_values,
)
from engine.keys import KeyVersionNotUsable
from engine.service import EncryptionService, ValueStatus

K1, K2, K3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def service(*versions: int, current: int | None = None, **kw) -> EncryptionService:
    keys = {1: K1, 2: K2, 3: K3}
    return EncryptionService(StaticKeyProvider({v: keys[v] for v in versions}, current=current),
                             metrics=False, **kw)


def token_parts(token: str | bytes) -> tuple[bytes, bytes, bytes, bytes]:
    raw = token if isinstance(token, bytes) else base64.urlsafe_b64decode(
        token[4:] + "=" * (-len(token[4:]) % 4))
    return raw[:6], raw[6:22], raw[22:-16], raw[-16:]


def open_independently(key: bytes, token: str | bytes, aad: bytes) -> bytes:
    """cryptography's AESGCM on the token layout (header || IV || ciphertext || tag) or on
    the JSON envelope."""
    if token[:1] in (b"{", "{"):
        doc = json.loads(token)
        iv, ct, tag = (base64.b64decode(doc[k]) for k in ("iv", "ciphertext", "authTag"))
        return AESGCM(key).decrypt(iv, ct + tag, aad)
    header, iv, ct, tag = token_parts(token)
    bound = header[1] == 1
    return AESGCM(key).decrypt(iv, ct + tag, (header if bound else b"") + aad)


# ---------------------------------------------------------------- the batch helpers


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=30))
def test_b64_encode_is_standard_base64(values):
    assert b64_encode(Batch.from_list(values)).to_list() == [base64.b64encode(v) for v in values]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="ABCDQRwxyz0189+/=-_ ", max_size=10), max_size=30))
def test_b64_decode_accepts_exactly_what_strict_base64_accepts(texts):
    raw = [t.encode() for t in texts]
    decoded, status = b64_decode(Batch.from_list(raw))
    for value, code, out in zip(raw, status.tolist(), decoded.to_list()):
        try:
            expect = base64.b64decode(value, validate=True)
            canonical = base64.b64encode(expect) == value
        except (binascii.Error, ValueError):
            canonical = False
        assert (code == 0) == canonical, value
        assert out == (expect if canonical else bytes(len(out)))


def test_concat_each_and_interleave():
    a = Batch.from_list([b"a", b"", b"ccc"])
    assert concat_each([b"<", a, b"|", a, b">"]).to_list() == [b"<a|a>", b"<|>", b"<ccc|ccc>"]
    merged = interleave(5, [(np.array([4, 0]), Batch.from_list([b"x", b"yy"])),
                            (np.array([2]), Batch.from_list([b"z"]))])
    assert merged.to_list() == [b"yy", b"", b"z", b"", b"x"]
    with pytest.raises(InvalidArgument):
        interleave(2, [(np.array([2]), Batch.from_list([b"x"]))])
    with pytest.raises(InvalidArgument):
        concat_each([a, Batch.from_list([b"x"])])


# ---------------------------------------------------------------- parsing stored values


def _envelopes(count: int) -> list[EncryptedData]:
    now = datetime(2026, 1, 31, 12, 0, 0, 123000, tzinfo=timezone.utc)
    return [EncryptedData(os.urandom(16), os.urandom(i % 50), os.urandom(16), 1 + i % 7, now)
            for i in range(count)]


def test_stored_values_of_every_kind_parse_and_format_back():
    env = _envelopes(30)
    values = ([e.to_json().encode() for e in env] + [e.to_token().encode() for e in env]
              + [e.to_binary_token() for e in env] + [b""])
    present = np.ones(len(values), dtype=bool)
    present[-1] = False
    parsed = parse_stored_values(Batch.from_list(values), present)
    assert parsed.kinds.tolist() == ([VALUE_JSON] * 30 + [VALUE_TEXT_TOKEN] * 30
                                     + [VALUE_BINARY_TOKEN] * 30 + [VALUE_NULL])
    assert parsed.valid.tolist() == [True] * 90 + [False]
    for i, e in enumerate(env):
        for j in (i, i + 30, i + 60):
            assert bytes(parsed.tokens[j]) == e.to_binary_token()
            assert parsed.key_versions[j] == e.key_version
    back = format_stored_values(parsed.tokens.take(np.arange(90)), parsed.kinds[:90],
                                timestamp=env[0].timestamp)
    assert back.to_list() == values[:90]  # the JSON shape byte for byte as to_json writes it


def _mutations(text: str) -> list[str]:
    return [text.replace('"keyVersion":', '"keyVersion":"').replace(',"timestamp"', '","timestamp"'),
            text.replace('"keyVersion":', '"keyVersion": 0.0 , "x":'),
            text.replace('"iv":"', '"iv":"A'), text.replace("==", "=", 1),
            text.replace('"algorithm":"aes-256-gcm"', '"algorithm":"AES-256-GCM"'),
            text.replace('"algorithm":"aes-256-gcm"', '"algorithm":"aes-128-gcm"'),
            text.replace("T12:", " 12:"), text.replace("2026-01-31", "2026-02-30"),
            text.replace(".123Z", ".123+02:00"), text.replace(".123Z", ".1234567Z"),
            text.replace('"authTag"', '"auth"'), text[:-1], text + text, text.replace(",", ",\n"),
            text.replace('"timestamp":"2026-01-31T12:00:00.123Z"', '"timestamp":null'),
            json.dumps(json.loads(text), separators=(", ", ": "))]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.integers(0, 17)), min_size=1, max_size=40))
def test_json_values_are_judged_like_encrypted_data(choices):
    """The one-pass reader (and its fall-back for what it cannot read) accepts exactly the JSON
    values EncryptedData.from_json accepts, and reads the same token from them."""
    env = _envelopes(16)
    values = []
    for which, mutation in choices:
        text = env[which].to_json()
        muts = _mutations(text)
        values.append((muts[mutation] if mutation < len(muts) else text).encode())
    parsed = parse_stored_values(Batch.from_list(values))
    for i, value in enumerate(values):
        try:
            expect = EncryptedData.from_json(value).to_binary_token()
        except ValueError:
            expect = None
        assert bool(parsed.valid[i]) == (expect is not None), value
        if expect is not None:
            assert bytes(parsed.tokens[i]) == expect


# ---------------------------------------------------------------- reencrypt_many


def test_every_kind_moves_to_the_current_version_with_its_aad():
    old = service(1)
    plain = [f"value {i}".encode() for i in range(12)]
    aad = [f"users:{i}:ssn".encode() for i in range(12)]
    text = old.encrypt_many(plain[:4], aad=aad[:4])
    binary = old.encrypt_many(plain[4:8], aad=aad[4:8], binary=True).to_list()
    js = [old.encrypt(p, aad=a).to_json() for p, a in zip(plain[8:], aad[8:])]
    new = service(1, 2)
    result = new.reencrypt_many(text + binary + js, aad)
    assert result.status.tolist() == [ValueStatus.REENCRYPTED] * 12
    assert result.key_versions.tolist() == [1] * 12 and result.target_version == 2
    out = result.values.to_list()
    for i in range(12):
        assert open_independently(K2, out[i] if 4 <= i < 8 else out[i].decode(), aad[i]) == plain[i]
    assert all(o.startswith(b"ef1:") for o in out[:4])
    assert all(o[:2] == b"\xef\x01" for o in out[4:8])
    for o, before in zip(out[8:], js):
        doc, was = json.loads(o), json.loads(before)
        assert set(doc) == set(was) and doc["keyVersion"] == 2 and doc["iv"] != was["iv"]
        assert new.decrypt_text(o.decode(), aad=aad[out.index(o)]) == plain[out.index(o)].decode()
    assert new.decrypt_many_text([o.decode() for o in out[:4]], aad[:4]) == \
        [p.decode() for p in plain[:4]]


def test_format_2_tokens_stay_format_2():
    old = service(1)
    seed_tokens = [old.encrypt(b"x", aad=b"ctx").to_token() for _ in range(3)]
    out = service(1, 2).reencrypt_many(seed_tokens, b"ctx").values.to_list()
    for o in out:
        header, *_ = token_parts(o.decode())
        assert header[:2] == b"\xef\x02" and header[2:] == (2).to_bytes(4, "big")
        assert open_independently(K2, o.decode(), b"ctx") == b"x"


def test_values_that_cannot_be_opened_are_reported_and_kept():
    old = service(1)
    good = old.encrypt_many(["a", "b"], aad="right")
    tampered = bytearray(token_parts(good[1])[0] + b"".join(token_parts(good[1])[1:]))
    tampered[-1] ^= 1
    lost = service(3).encrypt_many(["from v3"])[0]  # a version the new provider lacks
    values = [good[0], bytes(tampered), None, "123-45-6789", lost, "ef9:AAAA", "", good[0]]
    aad = ["right", "right", "right", "right", "right", "right", "right", "wrong"]
    result = service(1, 2).reencrypt_many(values, aad)
    assert [ValueStatus(s) for s in result.status] == [
        ValueStatus.REENCRYPTED, ValueStatus.INVALID_TAG, ValueStatus.NULL,
        ValueStatus.MALFORMED, ValueStatus.UNKNOWN_KEY_VERSION, ValueStatus.MALFORMED,
        ValueStatus.MALFORMED, ValueStatus.INVALID_TAG]
    out = result.values.to_list()
    for i in range(1, 8):
        expect = values[i] if values[i] is not None else b""
        assert out[i] == (expect.encode() if isinstance(expect, str) else expect)
    assert result.counts() == {"current": 0, "reencrypted": 1, "outdated": 0, "null": 1,
                               "unknown_key_version": 1, "malformed": 3, "invalid_tag": 2}


def test_current_values_are_untouched_and_a_second_pass_changes_nothing():
    svc = service(1, 2)
    tokens = service(1).encrypt_many(["a", "b"]) + svc.encrypt_many(["c"])
    first = svc.reencrypt_many(tokens)
    assert first.status.tolist() == [ValueStatus.REENCRYPTED] * 2 + [ValueStatus.CURRENT]
    assert bytes(first.values[2]) == tokens[2].encode()
    second = svc.reencrypt_many(first.values)
    assert (second.status == ValueStatus.CURRENT).all()
    assert second.values == first.values


def test_check_only_opens_everything_and_seals_nothing():
    svc = service(1, 2)
    tokens = service(1).encrypt_many(["a"]) + svc.encrypt_many(["b", "c"])
    broken = tokens[2][:-2] + ("A" if tokens[2][-2] != "A" else "B") + tokens[2][-1]
    result = svc.reencrypt_many(tokens[:2] + [broken, None], check_only=True)
    assert [ValueStatus(s) for s in result.status] == [
        ValueStatus.OUTDATED, ValueStatus.CURRENT, ValueStatus.INVALID_TAG, ValueStatus.NULL]
    assert result.versions() == {1: 1, 2: 1}
    assert result.values.to_list()[:3] == [t.encode() for t in tokens[:2] + [broken]]


@pytest.mark.parametrize("check_only", [False, True])
def test_the_plaintexts_opened_go_to_a_callback_and_are_wiped_after(check_only):
    svc = service(1, 2)
    tokens = service(1).encrypt_many(["a", "bb", "ccc"]) + svc.encrypt_many(["dddd"])
    lost = service(3).encrypt_many(["from v3"])[0]
    values = [tokens[0], None, tokens[1], lost, tokens[3], tokens[2], "not a token"]
    seen = []
    result = svc.reencrypt_many(values, check_only=check_only,
                                plaintext=lambda rows, plain: seen.append(
                                    (rows.tolist(), plain.to_list(), plain)))
    (rows, plain, batch), = seen  # one call, with only the values opened
    opened = {0: b"a", 2: b"bb", 4: b"dddd", 5: b"ccc"}
    if not check_only:  # the current value is not opened
        del opened[4]
    assert (rows, plain) == (list(opened), list(opened.values()))
    assert not batch.data.any()
    moved = np.flatnonzero(np.isin(result.status, (ValueStatus.REENCRYPTED,
                                                   ValueStatus.OUTDATED, ValueStatus.CURRENT)))
    assert set(rows) <= set(moved.tolist())
    svc.reencrypt_many([None, "x"], plaintext=seen.append)
    assert len(seen) == 1  # nothing opened: no call


def test_one_open_per_key_version_and_one_seal_per_batch(tmp_path):
    """The audit trail has one KEY_ACCESS entry per native call: counted here."""
    tokens = []
    for v in (1, 2, 1, 3, 2):
        tokens += service(v).encrypt_many([f"v{v}-{i}" for i in range(100)])
    log = AuditLog(tmp_path / "audit.jsonl", b"k" * 32)
    svc = service(1, 2, 3, current=3, audit=log)
    result = svc.reencrypt_many(tokens)
    assert result.counts()["reencrypted"] == 400 and result.counts()["current"] == 100
    entries = [(e["details"]["operation"], e["details"]["key_version"], e["details"]["records"])
               for e in read_entries(tmp_path / "audit.jsonl")]
    assert sorted(entries) == [("decrypt", 1, 200), ("decrypt", 2, 200), ("encrypt", 3, 400)]


def test_field_encryption_bind_context_values_still_open():
    old, new = service(1), service(1, 2)
    rows = [{"id": i, "ssn": f"000-00-{i:04d}"} for i in range(50)]
    sealed = FieldEncryption(old, bind_context=True).encrypt_column(rows, "ssn")
    aad = context_aad("ssn", [r["id"] for r in rows])
    result = new.reencrypt_many([r["ssn"] for r in sealed], aad)
    assert (result.status == ValueStatus.REENCRYPTED).all()
    moved = [{**r, "ssn": v} for r, v in zip(sealed, result.values.to_list())]
    moved = [{**r, "ssn": r["ssn"].decode()} for r in moved]
    assert FieldEncryption(new, bind_context=True).decrypt_column(moved, "ssn") == \
        [{**r, "ssn": r["ssn"]} for r in rows]


def test_inputs_of_every_container():
    svc = service(1, 2)
    tokens = service(1).encrypt_many(["a", "b", "c"])
    column = pa.array([tokens[0], None, tokens[2]])
    as_arrow = svc.reencrypt_many(column)
    assert as_arrow.status.tolist() == [ValueStatus.REENCRYPTED, ValueStatus.NULL,
                                        ValueStatus.REENCRYPTED]
    as_binary = svc.reencrypt_many(pa.array([t.encode() for t in tokens], pa.binary()))
    assert (as_binary.status == ValueStatus.REENCRYPTED).all()
    as_batch = svc.reencrypt_many(Batch.from_list(tokens))
    assert svc.decrypt_many(as_batch.values).to_list() == [b"a", b"b", b"c"]
    with pytest.raises(InvalidArgumentType):
        svc.reencrypt_many([{"iv": "..."}])
    with pytest.raises(InvalidArgumentType):
        svc.reencrypt_many("ef1:one value")
    with pytest.raises(InvalidArgument):
        svc.reencrypt_many(tokens, aad=["one", "two"])


def test_a_current_version_that_may_not_encrypt_is_refused():
    from engine.keys import KeyState

    provider = StaticKeyProvider({1: K1, 2: K2}, states={2: KeyState.DECRYPT_ONLY})
    with pytest.raises(KeyVersionNotUsable):
        EncryptionService(provider, metrics=False).reencrypt_many(["x"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1, 2, 3]), st.sampled_from(["text", "binary", "json"]),
                          st.binary(max_size=40), st.sampled_from([b"", b"ctx", b"other"])),
                max_size=30))
def test_matches_value_by_value_decryption(records):
    """Every record's status and result agree with decrypting that value alone."""
    versions = {0: None, 1: service(1), 2: service(1, 2), 3: service(3)}
    values, aads = [], []
    for version, kind, plain, aad in records:
        if version == 0:
            values.append(None)
        elif kind == "text":
            values.append(versions[version].encrypt_token(plain, aad))
        elif kind == "binary":
            values.append(versions[version].encrypt_many([plain], aad, binary=True).to_list()[0])
        else:
            values.append(versions[version].encrypt(plain, aad).to_json())
        aads.append(aad if len(aads) % 5 else b"other")
    svc = service(1, 2)
    if not values:
        return
    result = svc.reencrypt_many(values, aads)
    checked = svc.reencrypt_many(values, aads, check_only=True)
    for i, value in enumerate(values):
        s, c = ValueStatus(result.status[i]), ValueStatus(checked.status[i])
        if value is None:
            assert s is c is ValueStatus.NULL
            continue
        current = records[i][0] == 2
        try:
            expect = svc.decrypt(value, aads[i])
        except Exception as exc:  # noqa: BLE001 - the kind of failure is what is compared
            failure = {"UnknownKeyVersion": ValueStatus.UNKNOWN_KEY_VERSION,
                       "InvalidTag": ValueStatus.INVALID_TAG}[type(exc).__name__]
            assert c is failure
            # a value already under the current version is not opened by the job
            assert s is (ValueStatus.CURRENT if current else failure)
            continue
        assert c is (ValueStatus.CURRENT if current else ValueStatus.OUTDATED)
        assert s is (ValueStatus.CURRENT if current else ValueStatus.REENCRYPTED)
        new = bytes(result.values[i])
        assert svc.decrypt(new.decode() if not new.startswith(b"\xef") else new, aads[i]) == expect


def test_what_crosses_to_a_worker_holds_no_key_and_no_plaintext(monkeypatch, tmp_path):
    """The job description a worker receives pickles without key material, and the batches
    going to it and coming back (Arrow IPC) hold ciphertexts only."""
    import pickle

    import pyarrow as pa

    from engine.reencrypt import AadRule, Column, open_store
    from engine.reencrypt.executors import _reseal_ipc
    from engine.reencrypt.partition import JobSpec
    from engine.reencrypt.transform import KeyCheck, Resealed, to_ipc, worker_service

    old = EncryptionService(StaticKeyProvider({1: _RANDOM_KEYS[1]}), metrics=False)
    new = _two_version_service()
    plain = [f"secret-{i:04d}".encode() for i in range(200)]
    tokens = old.encrypt_many(plain, aad=[f"users:{i}:ssn" for i in range(200)])
    factory = _two_version_service
    spec = JobSpec(open_store("sqlite:///x.db", "users", "id"),
                   (Column("ssn", AadRule.template("users:{id}:ssn")),), "job", 100, False,
                   factory, KeyCheck.of(new))
    wire = pickle.dumps(spec)
    assert not any(k in wire for k in _RANDOM_KEYS.values())
    batch = pa.record_batch({"id": pa.array(range(200)), "ssn": pa.array(tokens)})
    going = to_ipc(batch)
    coming = _reseal_ipc(going, spec)
    for payload in (going, coming):
        assert not any(p in payload for p in plain)
        assert not any(k in payload for k in _RANDOM_KEYS.values())
    moved = Resealed.from_ipc(coming).columns[0].values["ssn"].to_pylist()
    assert new.decrypt_many(moved, aad=[f"users:{i}:ssn" for i in range(200)]).to_list() == plain
    assert worker_service(factory, spec.key_check) is worker_service(factory, spec.key_check)


_RANDOM_KEYS = {1: os.urandom(32), 2: os.urandom(32)}


def _two_version_service():
    return EncryptionService(StaticKeyProvider(_RANDOM_KEYS), metrics=False)


def test_values_move_from_aes_gcm_to_an_xaes_version_and_keep_their_shape():
    """A rotation to an XAES-256-GCM version: text and binary tokens become formats 3, the JSON
    envelope says xaes-256-gcm with a 24-byte IV, the AAD is the same, and values already under
    XAES move again to a later AES-GCM version."""
    from engine import XAesGcm

    old = service(1)
    text = old.encrypt_many(["alice", "bob"], aad=[b"r1", b"r2"])
    binary = old.encrypt_many(["carol"], aad=b"r3", binary=True).to_list()
    doc = old.encrypt("dave", aad=b"r4").to_json()
    values = text + binary + [doc]
    aad = [b"r1", b"r2", b"r3", b"r4"]
    new = EncryptionService(StaticKeyProvider({1: K1, 2: K2}, algorithms={2: XAesGcm.ALGORITHM}),
                            metrics=False)
    moved = new.reencrypt_many(values, aad)
    assert moved.status.tolist() == [ValueStatus.REENCRYPTED] * 4
    out = moved.values.to_list()
    assert out[0].startswith(b"ef1:") and out[2][:2] == b"\xef\x03"
    assert json.loads(out[3])["algorithm"] == "xaes-256-gcm"
    assert len(base64.b64decode(json.loads(out[3])["iv"])) == 24
    assert [new.decrypt(v.decode() if v[:1] != b"\xef" else v, a)
            for v, a in zip(out, aad)] == [b"alice", b"bob", b"carol", b"dave"]
    back = EncryptionService(StaticKeyProvider({1: K1, 2: K2, 3: K3},
                                               algorithms={2: XAesGcm.ALGORITHM}), metrics=False)
    again = back.reencrypt_many([v.decode() if v[:1] != b"\xef" else v for v in out], aad)
    assert again.status.tolist() == [ValueStatus.REENCRYPTED] * 4
    assert [back.decrypt(v.decode() if v[:1] != b"\xef" else v, a)
            for v, a in zip(again.values.to_list(), aad)] == [b"alice", b"bob", b"carol", b"dave"]
