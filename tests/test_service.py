"""EncryptionService: single values, batches, key versions, the process-wide instance."""

from __future__ import annotations

import base64
import os
import threading

import numpy as np
import pytest

from engine import Batch, BatchInvalidTag, InvalidArgument, InvalidArgumentType, InvalidTag
from engine.formats.envelope import EncryptedData
from engine.formats.wire import (
    InvalidBase64,
    InvalidLength,
    MalformedEnvelope,
    UnknownFormat,
    token_header,
)
from engine.keys import (
    DerivationPolicy,
    EnvironmentKeyProvider,
    KeyState,
    KeyVersionNotUsable,
    MasterKeyError,
    StaticKeyProvider,
    UnknownKeyVersion,
    _state,
)
from engine.service import (
    EncryptionService,
    ServiceConfigurationError,
    _provider_from_environment,
    get_encryption_service,
    reset_encryption_service,
)

MASTER = "service-test-master-key-0123456789abcdef"


@pytest.fixture
def svc() -> EncryptionService:
    return EncryptionService(StaticKeyProvider({1: b"\x11" * 32}))


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    for var in ("ENCRYPTION_MASTER_KEY", "ENGINE_KEY_STATE_FILE", "ENGINE_STATE_DIR",
                "ENCRYPTION_KDF_ITERATIONS", "VAULT_ENABLED"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    reset_encryption_service()
    yield
    reset_encryption_service()


# ---------------------------------------------------------------- single values


def test_encrypt_decrypt_roundtrip(svc):
    e = svc.encrypt("sensitive data")
    assert len(e.iv) == 16 and len(e.auth_tag) == 16 and e.key_version == 1
    assert e.timestamp is not None and e.timestamp.tzinfo is not None
    assert svc.decrypt(e) == b"sensitive data"
    assert svc.decrypt_text(e) == "sensitive data"
    assert svc.decrypt_text(e.to_dict()) == "sensitive data"
    assert svc.decrypt_text(e.to_json()) == "sensitive data"
    assert svc.decrypt_text(e.to_token()) == "sensitive data"  # format 2 token
    assert svc.decrypt(svc.encrypt(b"\x00\xff")) == b"\x00\xff"
    assert svc.encrypt("x").iv != svc.encrypt("x").iv


def test_aad_required_to_match(svc):
    e = svc.encrypt("v", aad="user:1")
    assert svc.decrypt_text(e, aad="user:1") == "v"
    assert svc.decrypt_text(e, aad=b"user:1") == "v"
    for wrong in (None, "user:2"):
        with pytest.raises(InvalidTag):
            svc.decrypt(e, aad=wrong)


def test_encrypt_token_binds_header(svc):
    tok = svc.encrypt_token("abc", aad="ctx")
    assert tok.startswith("ef1:")
    assert svc.decrypt_text(tok, aad="ctx") == "abc"
    with pytest.raises(InvalidTag):
        svc.decrypt(tok)


def test_rejects_non_bytes(svc):
    with pytest.raises(InvalidArgumentType):
        svc.encrypt(123)
    for call in (lambda: svc.encrypt("card 4111\ud800"),
                 lambda: svc.encrypt_many(["ok", "card 4111\ud800"])):
        with pytest.raises(InvalidArgument, match="lone surrogate") as e:
            call()
        assert "4111" not in repr(e.value) and "4111" not in repr(e.value.args)


def flip(raw: bytes, i: int, bit: int = 1) -> bytes:
    b = bytearray(raw)
    b[i] ^= bit
    return bytes(b)


def as_text(raw: bytes) -> str:
    return "ef1:" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize("where", ["format", "version", "iv", "ct", "tag"])
def test_tampering_with_any_token_part_is_detected(where):
    keys = {1: b"\x01" * 32, 2: b"\x02" * 32, 3: b"\x01" * 32}  # v3 reuses v1's key on purpose
    svc = EncryptionService(StaticKeyProvider(keys, current=1))
    raw = EncryptedData.from_token(svc.encrypt_token("payload")).to_binary_token()
    if where == "format":
        bad = flip(raw, 1, 3)  # 1 -> 2: the JSON envelope's AAD rule
    elif where == "version":
        bad = raw[:2] + (3).to_bytes(4, "big") + raw[6:]  # same key, other header
    else:
        bad = flip(raw, {"iv": 8, "ct": 23, "tag": len(raw) - 1}[where])
    for form in (bad, as_text(bad)):
        with pytest.raises(InvalidTag):
            svc.decrypt(form)
        with pytest.raises(BatchInvalidTag):
            svc.decrypt_many([form] if isinstance(form, str) else Batch.from_list([form]))


def test_unknown_key_version_in_token(svc):
    raw = EncryptedData.from_token(svc.encrypt_token("x")).to_binary_token()
    with pytest.raises(UnknownKeyVersion):
        svc.decrypt(raw[:2] + (9).to_bytes(4, "big") + raw[6:])
    with pytest.raises(UnknownKeyVersion):
        svc.decrypt_many([as_text(raw[:2] + (9).to_bytes(4, "big") + raw[6:])])


def test_parse_errors_surface(svc):
    with pytest.raises(MalformedEnvelope):
        svc.decrypt("not a token")
    with pytest.raises(UnknownFormat):
        svc.decrypt("ef7:AAAA")
    with pytest.raises(InvalidBase64):
        svc.decrypt("ef1:@@@@")


# ---------------------------------------------------------------- key versions


def test_old_versions_still_decrypt_after_rotation():
    p = StaticKeyProvider({1: b"a" * 32})
    svc = EncryptionService(p)
    old_json = svc.encrypt("one").to_json()
    old_tokens = svc.encrypt_many(["x", "y"])
    p.create_version()
    new_tokens = svc.encrypt_many(["z"])
    assert EncryptedData.from_token(new_tokens[0]).key_version == 2
    assert svc.decrypt_text(old_json) == "one"
    mixed = [old_tokens[0], new_tokens[0], old_tokens[1]]
    assert svc.decrypt_many_text(mixed) == ["x", "z", "y"]
    p.set_state(1, KeyState.DEPRECATED)
    assert svc.decrypt_many_text(mixed) == ["x", "z", "y"]  # deprecated still decrypts
    p.set_state(2, KeyState.DEPRECATED)
    with pytest.raises(KeyVersionNotUsable):
        svc.encrypt("no")
    with pytest.raises(KeyVersionNotUsable):
        svc.encrypt_many(["no"])
    with pytest.raises(KeyVersionNotUsable):
        svc.encrypt_token("no")


def test_one_key_lookup_per_batch():
    class Counting(StaticKeyProvider):
        __slots__ = ("calls",)

        def get_current_key(self):
            self.calls.append("current")
            return super().get_current_key()

        def get_key(self, version):
            self.calls.append(version)
            return super().get_key(version)

    p = Counting({1: b"a" * 32, 2: b"b" * 32}, current=1)
    p.calls = []
    svc = EncryptionService(p)
    tokens = svc.encrypt_many([f"v{i}" for i in range(1000)])
    p.set_current(2)
    tokens += svc.encrypt_many([f"w{i}" for i in range(1000)])
    assert p.calls == ["current", "current"]
    p.calls.clear()
    shuffled = [tokens[i] for i in np.random.default_rng(0).permutation(2000)]
    out = svc.decrypt_many_text(shuffled)
    assert sorted(p.calls) == [1, 2]
    assert sorted(out) == sorted([f"v{i}" for i in range(1000)] + [f"w{i}" for i in range(1000)])


# ---------------------------------------------------------------- batches


def test_encrypt_many_forms(svc):
    values = ["alpha", "", "ünïcode ✓", "x" * 1000]
    tokens = svc.encrypt_many(values)
    assert isinstance(tokens, list) and all(t.startswith("ef1:") for t in tokens)
    assert svc.decrypt_many_text(tokens) == values
    assert [svc.decrypt_text(t) for t in tokens] == values
    binary = svc.encrypt_many(values, binary=True)
    assert isinstance(binary, Batch) and binary[0].tobytes()[:2] == b"\xef\x01"
    assert svc.decrypt_many(binary).to_list() == [v.encode() for v in values]
    assert svc.decrypt_many_text(Batch.from_list(tokens)) == values
    as_bytes = svc.encrypt_many(Batch.from_list([b"\x00\x01", b"\xff"]))
    assert svc.decrypt_many(as_bytes).to_list() == [b"\x00\x01", b"\xff"]
    assert svc.encrypt_many([]) == [] and len(svc.decrypt_many([])) == 0


def test_encrypt_many_with_pyarrow(svc):
    pa = pytest.importorskip("pyarrow")
    tokens = svc.encrypt_many(pa.array(["a", "bb"]))
    assert svc.decrypt_many_text(pa.array(tokens)) == ["a", "bb"]


def test_many_aad_forms(svc):
    values = ["a", "b", "c"]
    shared = svc.encrypt_many(values, aad="tenant-7")
    assert svc.decrypt_many_text(shared, aad=b"tenant-7") == values
    per = svc.encrypt_many(values, aad=["r1", "r2", "r3"])
    assert svc.decrypt_many_text(per, aad=["r1", "r2", "r3"]) == values
    assert svc.decrypt_text(per[1], aad="r2") == "b"
    with pytest.raises(BatchInvalidTag) as info:
        svc.decrypt_many(per, aad=["r1", "XX", "r3"])
    assert info.value.failed.tolist() == [1] and info.value.result is None
    with pytest.raises(BatchInvalidTag):
        svc.decrypt_many(shared)
    with pytest.raises(ValueError):
        svc.encrypt_many(values, aad=["only-one"])


def test_batch_failure_returns_nothing(svc):
    tokens = svc.encrypt_many(["a", "b", "c"])
    raw = EncryptedData.from_token(tokens[2]).to_binary_token()
    tokens[2] = as_text(flip(raw, len(raw) - 1))
    with pytest.raises(BatchInvalidTag) as info:
        svc.decrypt_many_text(tokens)
    assert info.value.failed.tolist() == [2] and info.value.result is None


def test_multi_version_groups_with_per_record_aad():
    p = StaticKeyProvider({1: b"a" * 32, 2: b"b" * 32, 3: b"c" * 32}, current=1)
    svc = EncryptionService(p)
    tokens, aads, values = [], [], []
    for v in (1, 2, 3):
        p.set_current(v)
        vals = [f"{v}-{i}" * (i % 5) for i in range(50)]
        ad = [f"aad{v}{i}" for i in range(50)]
        tokens += svc.encrypt_many(vals, aad=ad)
        aads += ad
        values += vals
    order = np.random.default_rng(1).permutation(len(tokens))
    got = svc.decrypt_many_text([tokens[i] for i in order], aad=[aads[i] for i in order])
    assert got == [values[i] for i in order]


# ---------------------------------------------------------------- the process-wide instance


def test_get_encryption_service_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ENCRYPTION_MASTER_KEY", MASTER)
    monkeypatch.setenv("ENGINE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("ENCRYPTION_KDF_ITERATIONS", "1000")
    monkeypatch.setenv("VAULT_ENABLED", "false")
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(get_encryption_service()))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(s) for s in seen}) == 1
    svc = seen[0]
    assert isinstance(svc.provider, EnvironmentKeyProvider)
    assert svc.decrypt_text(svc.encrypt("hello")) == "hello"
    reset_encryption_service()
    assert get_encryption_service() is not svc


def test_vault_enabled_without_an_address_is_a_clear_error(monkeypatch):
    from engine.vault import VaultConfigurationError

    monkeypatch.setenv("ENCRYPTION_MASTER_KEY", MASTER)
    monkeypatch.setenv("VAULT_ENABLED", "true")
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    with pytest.raises(VaultConfigurationError, match="VAULT_ADDR"):
        get_encryption_service()
    monkeypatch.setenv("VAULT_ENABLED", "maybe")
    with pytest.raises(ServiceConfigurationError, match="true or false"):
        _provider_from_environment()


def test_missing_master_key_for_default_service():
    with pytest.raises(MasterKeyError):
        get_encryption_service()


def test_service_hides_keys(svc):
    import pickle

    assert "\\x11" not in repr(svc)
    with pytest.raises(TypeError):
        pickle.dumps(svc)


def test_environment_provider_end_to_end(tmp_path):
    _state.clear_cache()
    p = EnvironmentKeyProvider(master_key=MASTER, state_path=tmp_path / "k.json",
                               policy=DerivationPolicy(iterations=1000))
    svc = EncryptionService(p)
    tokens = svc.encrypt_many(["a", "b"])
    p.create_version()
    more = svc.encrypt_many(["c"])
    again = EncryptionService(EnvironmentKeyProvider(master_key=MASTER,
                                                     state_path=tmp_path / "k.json"))
    assert again.decrypt_many_text(tokens + more) == ["a", "b", "c"]
    assert token_header(2) == EncryptedData.from_token(more[0]).to_binary_token()[:6]


def test_ascii_fast_path_and_fallbacks(svc):
    from engine.service import _values_batch

    assert _values_batch(["ab", "", "c"]).to_list() == [b"ab", b"", b"c"]
    assert _values_batch(["é", "a"]).to_list() == ["é".encode(), b"a"]  # not ASCII: from_list
    assert _values_batch(["a", b"b"]).to_list() == [b"a", b"b"]  # mixed: from_list
    assert svc.decrypt_many_text(svc.encrypt_many(["a", "é", ""])) == ["a", "é", ""]
    with pytest.raises(InvalidArgumentType):
        svc.encrypt_many(["a", None])


def test_encrypt_many_as_an_arrow_column():
    import pyarrow as pa

    svc = EncryptionService(StaticKeyProvider({4: b"c" * 32}))
    column = svc.encrypt_many(["a", "bb", "ccc"], "ctx", arrow=True)
    assert isinstance(column, pa.Array) and column.type == pa.large_string()
    assert svc.decrypt_many(column, "ctx").to_list() == [b"a", b"bb", b"ccc"]
    assert [svc.decrypt_text(t, "ctx") for t in column.to_pylist()] == ["a", "bb", "ccc"]


# ---------------------------------------------------------------- single values: fast path


def _context_chain(exc: BaseException) -> list[BaseException]:
    chain = []
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


@pytest.mark.parametrize("value", ["alice@example.com", "", "é€😀" * 50, b"\x00\xff" * 300,
                                   bytearray(b"raw"), "x" * 5000])
@pytest.mark.parametrize("aad", [None, "users:1", b"\x00ctx", ""])
def test_single_tokens_and_batch_tokens_are_one_format(svc, value, aad):
    """The one-call single-value path and the batch path read each other's tokens, and both
    match an independent reading of the layout with cryptography."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    raw_value = value.encode() if isinstance(value, str) else bytes(value)
    single = svc.encrypt_token(value, aad)
    batch_aad = None if aad is None else [aad]
    assert svc.decrypt_many([single], batch_aad).to_list() == [raw_value]
    many = svc.encrypt_many([value], batch_aad)[0]
    assert svc.decrypt(many, aad) == raw_value == svc.decrypt(single, aad)
    if isinstance(value, str):
        assert svc.decrypt_text(single, aad) == value
    body = base64.urlsafe_b64decode(single[4:] + "=" * (-len(single[4:]) % 4))
    aad_bytes = b"" if aad is None else (aad.encode() if isinstance(aad, str) else aad)
    assert AESGCM(b"\x11" * 32).decrypt(body[6:22], body[22:], body[:6] + aad_bytes) == raw_value
    assert len({svc.encrypt_token(value, aad) for _ in range(50)}) == 50  # fresh nonces


def test_single_value_errors_are_typed_and_carry_no_plaintext(svc):
    import numpy as np

    for bad in (np.float64(1.5), np.uint8(7), 12, 1.5, None, np.arange(3, dtype=np.float64),
                ["a"], {"a": 1}):
        for call in (svc.encrypt, svc.encrypt_token):
            with pytest.raises(InvalidArgumentType):
                call(bad)
    with pytest.raises(InvalidArgumentType):
        svc.encrypt_token("x", aad=np.float32(2))
    assert svc.decrypt(svc.encrypt_token(np.frombuffer(b"u8", np.uint8))) == b"u8"
    secret = b"card 4111 \xff\xfe not utf-8"
    for token in (svc.encrypt_token(secret), svc.encrypt(secret).to_json()):
        with pytest.raises(InvalidArgument, match="UTF-8") as err:
            svc.decrypt_text(token)
        for exc in _context_chain(err.value):
            assert b"4111" not in repr(exc).encode() and "4111" not in str(exc)
            assert not hasattr(exc, "object")  # a UnicodeDecodeError holds the whole plaintext
    with pytest.raises(InvalidArgument) as err:
        svc.decrypt_many_text([svc.encrypt_token(secret)])
    assert all(not hasattr(e, "object") for e in _context_chain(err.value))


def test_malformed_text_tokens_fall_back_to_precise_errors(svc):
    good = svc.encrypt_token("v")
    with pytest.raises(InvalidBase64):
        svc.decrypt(good[:-1] + "*")
    with pytest.raises(InvalidLength):
        svc.decrypt("ef1:")
    with pytest.raises(UnknownFormat):
        svc.decrypt("ef2:" + good[4:])
    with pytest.raises(MalformedEnvelope):
        svc.decrypt("hello")
    with pytest.raises(InvalidTag):
        svc.decrypt(good, aad="other")
    zero_version = base64.urlsafe_b64decode(good[4:] + "=" * (-len(good[4:]) % 4))
    with pytest.raises(MalformedEnvelope):
        svc.decrypt(as_text(zero_version[:2] + bytes(4) + zero_version[6:]))


def test_the_json_shape_is_read_from_bytes_too(svc):
    doc = svc.encrypt("stored in redis").to_json()
    for form in (doc.encode(), bytearray(doc.encode()), memoryview(doc.encode()),
                 b"  " + doc.encode()):
        assert svc.decrypt_text(form) == "stored in redis"


def test_hostile_envelopes_are_typed_errors(svc):
    deep = "[" * 100_000 + "]" * 100_000
    for text in (deep, '{"a":' * 50_000 + "1" + "}" * 50_000):
        with pytest.raises(MalformedEnvelope):
            svc.decrypt(text)
        with pytest.raises(MalformedEnvelope):
            EncryptedData.from_json(text)
    doc = svc.encrypt("x").to_dict()
    for version in ("9" * 5000, "1" * 11):
        with pytest.raises(MalformedEnvelope):
            EncryptedData.from_dict({**doc, "keyVersion": version})
    for ts in ("0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"):
        with pytest.raises(MalformedEnvelope, match="range"):
            EncryptedData.from_dict({**doc, "timestamp": ts})


# ---------------------------------------------------------------- usage accounting


USAGE_CHILD = """
import os, sys
import engine
svc = engine.get_encryption_service()
for i in range(8):
    svc.encrypt_token(f"value {i}")
"""


def test_short_lived_processes_count_what_they_encrypt(tmp_path, monkeypatch):
    """128 encryptions by 16 processes are 128 uses, not 16 leases of millions."""
    import subprocess
    import sys

    state = tmp_path / "keys.json"
    env = {**os.environ, "ENCRYPTION_MASTER_KEY": MASTER, "ENGINE_KEY_STATE_FILE": str(state),
           "ENCRYPTION_KDF_ITERATIONS": "1000"}
    procs = [subprocess.Popen([sys.executable, "-c", USAGE_CHILD], env=env) for _ in range(16)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 16
    provider = EnvironmentKeyProvider(master_key=MASTER, state_path=state)
    assert provider.usage(1) == 128


def test_a_forked_child_does_not_spend_its_parents_reservation(tmp_path):
    provider = EnvironmentKeyProvider(master_key=MASTER, state_path=tmp_path / "k.json",
                                      policy=DerivationPolicy(iterations=1000))
    svc = EncryptionService(provider, metrics=False)
    svc.encrypt_many(["a"] * 10)  # reserves a lease of 1,024 in the parent
    pid = os.fork()
    if pid == 0:
        try:
            svc.encrypt_many(["b"] * 5)  # must reserve its own
            del svc
            import gc

            gc.collect()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    del svc
    import gc

    gc.collect()
    assert provider.usage(1) == 15


def test_the_gcm_limit_itself_refuses_to_encrypt(tmp_path):
    from engine.keys import KeyUsageExhausted
    from engine.keys.base import GCM_RANDOM_IV_LIMIT

    provider = StaticKeyProvider({1: os.urandom(32)})
    provider.record_usage(1, GCM_RANDOM_IV_LIMIT - 10)
    svc = EncryptionService(provider, metrics=False)
    tokens = svc.encrypt_many(["x"] * 10)  # exactly what is left
    assert provider.usage(1) == GCM_RANDOM_IV_LIMIT
    for call in (lambda: svc.encrypt_token("y"), lambda: svc.encrypt_many(["y"]),
                 lambda: svc.encrypt("y")):
        with pytest.raises(KeyUsageExhausted, match="rotate"):
            call()
    assert svc.decrypt_many_text(tokens) == ["x"] * 10  # decryption is not limited
