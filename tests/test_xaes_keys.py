"""XAES-256-GCM key versions: each provider records a version's algorithm, the service writes
token formats 3 and 4 under such versions (and keeps opening every older token), usage never
refuses or rotates them, and an edited algorithm is refused."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

import hvac
import numpy as np
import pytest

from engine import (
    AesGcm,
    BatchInvalidTag,
    EncryptedData,
    EncryptionService,
    EnvironmentKeyProvider,
    InvalidTag,
    KeyRotationService,
    RotationPolicy,
    StaticKeyProvider,
    XAesGcm,
)
from engine.errors import InvalidArgument
from engine.formats.tokens import decode_text_tokens
from engine.formats.wire import FORMAT_BOUND, FORMAT_XAES, FORMAT_XAES_UNBOUND
from engine.keys import DerivationPolicy, KeyUsageExhausted, MasterKeyMismatch
from engine.keys.base import GCM_RANDOM_IV_LIMIT, usage_limit

import xaes_reference as ref

MASTER = "dev-only-master-key-of-at-least-32-bytes!"
XAES = "xaes-256-gcm"


def mixed_provider() -> StaticKeyProvider:
    """Version 1 AES-256-GCM (decrypt-only), version 2 XAES-256-GCM (current)."""
    return StaticKeyProvider({1: os.urandom(32), 2: os.urandom(32)}, algorithms={2: XAES})


def service(provider) -> EncryptionService:
    return EncryptionService(provider, metrics=False)


def test_tokens_under_an_xaes_version_are_format_3_with_24_byte_nonces():
    provider = mixed_provider()
    svc = service(provider)
    assert type(provider.get_key(2).cipher) is XAesGcm and provider.get_key(2).algorithm == XAES
    values = [b"", b"alice@example.com", os.urandom(300)]
    tokens = svc.encrypt_many(values, aad="users")
    binary = decode_text_tokens(tokens)
    for value, token in zip(values, binary):
        token = bytes(token)
        assert token[:6] == bytes([0xEF, FORMAT_XAES, 0, 0, 0, 2])
        assert len(token) == 6 + 24 + len(value) + 16
    assert svc.decrypt_many(tokens, aad="users").to_list() == values
    one = svc.encrypt_token("bob@example.com", "users")
    assert decode_text_tokens([one])[0][1] == FORMAT_XAES
    assert svc.decrypt_text(one, "users") == "bob@example.com"


def test_xaes_tokens_match_the_reference_implementation():
    key = os.urandom(32)
    svc = service(StaticKeyProvider({7: key}, algorithm=XAES))
    token = bytes(decode_text_tokens(svc.encrypt_many([b"secret"], aad="ctx"))[0])
    assert ref.open(key, token[6:30], token[30:], token[:6] + b"ctx") == b"secret"


def test_old_and_new_tokens_decrypt_side_by_side():
    keys = {1: os.urandom(32)}
    old = service(StaticKeyProvider(keys)).encrypt_many([f"row {i}" for i in range(50)])
    old_json = service(StaticKeyProvider(keys)).encrypt("legacy").to_json()
    provider = StaticKeyProvider({**keys, 2: os.urandom(32)}, algorithms={2: XAES})
    svc = service(provider)
    new = svc.encrypt_many([f"row {i}" for i in range(50, 100)])
    mixed = [t for pair in zip(old, new) for t in pair]
    expected = [f"row {i}".encode() for pair in zip(range(50), range(50, 100)) for i in pair]
    assert svc.decrypt_many(mixed).to_list() == expected
    assert svc.decrypt_text(old[3]) == "row 3" and svc.decrypt_text(new[3]) == "row 53"
    assert svc.decrypt_text(old_json) == "legacy"


def test_the_json_shape_under_an_xaes_version():
    svc = service(mixed_provider())
    value = svc.encrypt("sensitive", aad="user:1")
    assert len(value.iv) == 24 and value.algorithm == XAES and value.format == FORMAT_XAES_UNBOUND
    doc = json.loads(value.to_json())
    assert doc["algorithm"] == XAES
    assert svc.decrypt_text(value.to_json(), aad="user:1") == "sensitive"
    assert svc.decrypt_text(value.to_token(), aad="user:1") == "sensitive"
    parsed = EncryptedData.from_token(value.to_token())
    assert (parsed.iv, parsed.algorithm, parsed.header_bound) == (value.iv, XAES, False)
    with pytest.raises(InvalidTag):
        svc.decrypt(value.to_json(), aad="user:2")


def test_a_format_that_names_another_algorithm_fails_authentication():
    svc = service(mixed_provider())
    aes_token = bytearray(decode_text_tokens(
        service(StaticKeyProvider({1: os.urandom(32)})).encrypt_many([b"x" * 40]))[0])
    xaes_token = bytearray(decode_text_tokens(svc.encrypt_many([b"y" * 40]))[0])
    aes_token[1] = FORMAT_XAES  # version 1 is AES-256-GCM: claims XAES
    xaes_token[1] = FORMAT_BOUND  # version 2 is XAES-256-GCM: claims AES-256-GCM
    for token in (bytes(aes_token), bytes(xaes_token)):
        with pytest.raises(InvalidTag):
            svc.decrypt(EncryptedData.from_token(token).to_token())
    good = svc.encrypt_many([b"ok"], binary=True)
    batch = [bytes(good[0]), bytes(aes_token), bytes(xaes_token)]
    with pytest.raises(BatchInvalidTag) as err:
        svc.decrypt_many(batch)
    assert err.value.failed.tolist() == [1, 2]
    # the same values as JSON: the algorithm field selects the nonce size, the key refuses
    with pytest.raises(InvalidTag):
        svc.decrypt(EncryptedData(os.urandom(16), b"abc", bytes(16), 2).to_json())


def test_xaes_versions_are_not_limited_or_rotated_for_usage(tmp_path):
    assert usage_limit("aes-256-gcm") == GCM_RANDOM_IV_LIMIT and usage_limit(XAES) is None
    aes = StaticKeyProvider({1: os.urandom(32)})
    aes.record_usage(1, GCM_RANDOM_IV_LIMIT)
    with pytest.raises(KeyUsageExhausted):
        service(aes).encrypt_many([b"x"])
    xaes = StaticKeyProvider({1: os.urandom(32)}, algorithm=XAES)
    xaes.record_usage(1, GCM_RANDOM_IV_LIMIT)
    svc = service(xaes)
    assert svc.decrypt_many(svc.encrypt_many([b"x"] * 5)).to_list() == [b"x"] * 5
    assert xaes.usage(1) > GCM_RANDOM_IV_LIMIT  # still counted

    def rotation(provider, days=0.0):
        now = datetime.now(timezone.utc) + timedelta(days=days)
        return KeyRotationService(provider, RotationPolicy(), state_dir=tmp_path,
                                  clock=now.timestamp)

    assert rotation(aes).rotation_reason() == "usage"
    assert rotation(xaes).rotation_reason() is None
    assert rotation(xaes, days=31).rotation_reason() == "interval"


def test_static_provider_creates_versions_of_its_algorithm(tmp_path):
    provider = StaticKeyProvider({1: os.urandom(32)}, algorithm=XAES)
    result = KeyRotationService(provider, RotationPolicy(), state_dir=tmp_path).rotate_keys()
    infos = provider.list_versions()
    assert [(i.version, i.algorithm) for i in infos] == [(1, XAES), (2, XAES)]
    assert result.new_version == 2 and type(provider.get_current_key().cipher) is XAesGcm
    with pytest.raises(InvalidArgument, match="algorithm"):
        StaticKeyProvider({1: os.urandom(32)}, algorithm="aes-128-gcm")
    with pytest.raises(InvalidArgument, match="algorithms"):
        StaticKeyProvider({1: os.urandom(32)}, algorithms={3: XAES})


def test_environment_provider_records_the_algorithm_in_its_state_file(tmp_path, monkeypatch):
    path = tmp_path / "keys.json"
    aes = EnvironmentKeyProvider(master_key=MASTER, state_path=path)
    old = service(aes).encrypt_many(["before"])
    xaes = EnvironmentKeyProvider(master_key=MASTER, state_path=path,
                                  policy=DerivationPolicy(iterations=1000, algorithm=XAES))
    KeyRotationService(xaes, RotationPolicy(), state_dir=tmp_path).rotate_keys()
    doc = json.loads(path.read_text())
    assert [v["algorithm"] for v in doc["versions"]] == ["aes-256-gcm", XAES]
    # another process reads the versions back with their algorithms
    again = EnvironmentKeyProvider(master_key=MASTER, state_path=path)
    assert [i.algorithm for i in again.list_versions()] == ["aes-256-gcm", XAES]
    assert type(again.get_current_key().cipher) is XAesGcm
    new = service(again).encrypt_many(["after"])
    assert decode_text_tokens(new)[0][1] == FORMAT_XAES
    assert service(again).decrypt_many_text(old + new) == ["before", "after"]
    monkeypatch.setenv("ENCRYPTION_MASTER_KEY", MASTER)  # a worker reads its own
    assert xaes.config().algorithm == XAES and xaes.config().build().policy.algorithm == XAES


def test_an_edited_algorithm_in_the_state_file_is_refused(tmp_path):
    path = tmp_path / "keys.json"
    provider = EnvironmentKeyProvider(master_key=MASTER, state_path=path,
                                      policy=DerivationPolicy(iterations=1000, algorithm=XAES))
    provider.get_current_key()
    doc = json.loads(path.read_text())
    doc["versions"][0]["algorithm"] = "aes-256-gcm"
    path.write_text(json.dumps(doc))
    with pytest.raises(MasterKeyMismatch):
        EnvironmentKeyProvider(master_key=MASTER, state_path=path).get_current_key()


def test_state_files_without_algorithms_are_aes_gcm(tmp_path):
    path = tmp_path / "keys.json"
    provider = EnvironmentKeyProvider(master_key=MASTER, state_path=path)
    token = service(provider).encrypt_many(["x"])
    doc = json.loads(path.read_text())
    for v in doc["versions"]:
        del v["algorithm"]
    path.write_text(json.dumps(doc))
    again = EnvironmentKeyProvider(master_key=MASTER, state_path=path)
    assert type(again.get_current_key().cipher) is AesGcm
    assert service(again).decrypt_many_text(token) == ["x"]


def test_the_algorithm_comes_from_the_environment(tmp_path):
    env = {"ENCRYPTION_MASTER_KEY": MASTER, "ENGINE_KEY_STATE_FILE": str(tmp_path / "k.json"),
           "ENCRYPTION_ALGORITHM": "XAES-256-GCM"}
    assert EnvironmentKeyProvider(env=env).get_current_key().algorithm == XAES
    with pytest.raises(InvalidArgument, match="ENCRYPTION_ALGORITHM"):
        EnvironmentKeyProvider(env={**env, "ENCRYPTION_ALGORITHM": "des"})


# ---- Vault: the KV entry records the algorithm ----

@pytest.fixture
def vault_provider(bao, names):
    from engine.vault import VaultKeyProvider

    made = []

    def make(**kw):
        p = VaultKeyProvider(bao.address, token=bao.root_token, timeout=2.0, retries=1,
                             **names, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def test_vault_entries_record_the_algorithm(vault_provider, bao, names):
    from engine.vault import WrappedKeyInvalid

    aes = vault_provider()
    old = service(aes).encrypt_many(["before"])
    xaes = vault_provider(algorithm=XAES)
    xaes.create_version()
    admin = hvac.Client(bao.address, token=bao.root_token, timeout=5)
    read = lambda v: admin.secrets.kv.v2.read_secret_version(  # noqa: E731
        path=f"{names['kv_path']}/v{v}", mount_point="secret",
        raise_on_deleted_version=True)["data"]["data"]
    assert read(1)["algorithm"] == "aes-256-gcm" and read(2)["algorithm"] == XAES
    fresh = vault_provider()  # reads the algorithms back, whatever its own setting
    assert [i.algorithm for i in fresh.list_versions()] == ["aes-256-gcm", XAES]
    new = service(fresh).encrypt_many(["after"])
    assert decode_text_tokens(new)[0][1] == FORMAT_XAES
    assert service(fresh).decrypt_many_text(old + new) == ["before", "after"]
    assert dict(xaes.config().settings)["algorithm"] == XAES
    entry = read(2)
    entry["algorithm"] = "aes-256-gcm"
    admin.secrets.kv.v2.create_or_update_secret(path=f"{names['kv_path']}/v2", secret=entry,
                                                mount_point="secret")
    with pytest.raises(WrappedKeyInvalid, match="algorithm"):
        vault_provider().get_key(2)


def test_many_versions_many_formats_in_one_call():
    rng = np.random.default_rng(3)
    keys = {v: os.urandom(32) for v in range(1, 7)}
    algorithms = {v: XAES for v in keys if v % 2 == 0}
    tokens, expected = [], []
    for v in keys:
        p = StaticKeyProvider({u: keys[u] for u in keys if u <= v}, algorithms={
            u: a for u, a in algorithms.items() if u <= v})
        values = [os.urandom(int(rng.integers(0, 200))) for _ in range(30)]
        tokens += service(p).encrypt_many(values, aad="t")
        expected += values
    order = rng.permutation(len(tokens))
    svc = service(StaticKeyProvider(keys, algorithms=algorithms))
    assert svc.decrypt_many([tokens[i] for i in order], aad="t").to_list() == [
        expected[i] for i in order]


def test_xaes_token_layouts_in_the_envelope_helpers():
    import base64

    from engine import Batch, InvalidLength, UnknownFormat
    from engine.formats.tokens import pack_tokens, parse_tokens

    key = os.urandom(32)
    svc = service(StaticKeyProvider({3: key}, algorithm=XAES))
    good = svc.encrypt_many([b"value"])[0]
    short = bytes([0xEF, FORMAT_XAES, 0, 0, 0, 3]) + bytes(24 + 16 - 1)  # one byte short
    assert len(short) >= 38  # long enough for an AES-256-GCM token, not for XAES
    with pytest.raises(InvalidLength, match="46"):
        EncryptedData.from_token(short)
    text = "ef1:" + base64.urlsafe_b64encode(short).rstrip(b"=").decode()
    with pytest.raises(InvalidLength, match="token 1"):
        decode_text_tokens([good, text])
    sealed = XAesGcm(key).seal_batch([b"a", b"bc"], nonce_size=24)
    tokens = pack_tokens(sealed, 3, FORMAT_XAES_UNBOUND)  # sealed without the header in the AAD
    parsed = parse_tokens(tokens)
    assert parsed.nonces.shape == (2, 24) and parsed.ciphertexts == sealed.ciphertexts
    assert svc.decrypt_many(tokens).to_list() == [b"a", b"bc"]
    with pytest.raises(InvalidLength, match="24-byte"):
        pack_tokens(AesGcm(key).seal_batch([b"a"]), 3, FORMAT_XAES)
    with pytest.raises(UnknownFormat):
        pack_tokens(sealed, 3, 9)
    aes_token = service(StaticKeyProvider({1: key})).encrypt_many([b"a"], binary=True)
    with pytest.raises(InvalidLength, match="parse each kind"):
        parse_tokens(Batch.from_list([bytes(tokens[0]), bytes(aes_token[0])]))
