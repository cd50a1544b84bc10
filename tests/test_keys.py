"""Key providers: static keys, environment-derived keys, the key-state file."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import engine
from engine import AesGcm, InvalidArgument
from engine.keys import (
    DerivationPolicy,
    EnvironmentKeyProvider,
    InvalidKeyMaterial,
    KeyProvider,
    KeyProviderError,
    KeyState,
    KeyStateCorrupted,
    KeyUsageExhausted,
    KeyVersionNotUsable,
    MasterKeyError,
    MasterKeyMismatch,
    StaticKeyProvider,
    UnknownKeyVersion,
    _state,
    environment as env_mod,
)

from forking import fork_while_busy

MASTER = "m" * 24 + "-secret-master-value-0123456789"
FAST = DerivationPolicy(iterations=1000)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for var in ("ENCRYPTION_MASTER_KEY", "ENGINE_KEY_STATE_FILE", "ENGINE_STATE_DIR",
                "ENCRYPTION_KDF_ITERATIONS", "VAULT_ENABLED"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    _state.clear_cache()


def provider(tmp_path, **kw) -> EnvironmentKeyProvider:
    kw.setdefault("master_key", MASTER)
    kw.setdefault("policy", FAST)
    kw.setdefault("state_path", tmp_path / "state" / "keys.json")
    return EnvironmentKeyProvider(**kw)


def roundtrip(enc_key, dec_key) -> bool:
    nonce = b"n" * 16
    return dec_key.cipher.decrypt(nonce, enc_key.cipher.encrypt(nonce, b"data")) == b"data"


# ---------------------------------------------------------------- StaticKeyProvider


def test_static_current_is_highest_and_protocol():
    p = StaticKeyProvider({1: b"a" * 32, 3: b"b" * 32})
    assert isinstance(p, KeyProvider)
    assert p.get_current_key().version == 3
    assert [(i.version, i.state) for i in p.list_versions()] == [
        (1, KeyState.DECRYPT_ONLY), (3, KeyState.ACTIVE)]
    assert roundtrip(p.get_current_key(), p.get_key(3))
    assert not roundtrip_safe(p.get_current_key(), p.get_key(1))


def roundtrip_safe(a, b) -> bool:
    try:
        return roundtrip(a, b)
    except Exception:
        return False


def test_static_explicit_current_and_states():
    p = StaticKeyProvider({1: b"a" * 32, 2: b"b" * 32}, current=1, states={2: "deprecated"})
    assert p.get_current_key().version == 1
    assert p.get_key(2).state is KeyState.DEPRECATED


@pytest.mark.parametrize("bad", [b"short-key", b"x" * 33, "a-string-key-of-32-characters!!!"])
def test_static_rejects_bad_keys_without_showing_them(bad):
    with pytest.raises(InvalidKeyMaterial) as info:
        StaticKeyProvider({1: bad})
    text = str(info.value)
    assert "32 bytes" in text
    shown = bad if isinstance(bad, str) else bad.decode()
    assert shown not in text
    assert isinstance(info.value, ValueError)


def test_static_errors():
    with pytest.raises(InvalidArgument):
        StaticKeyProvider({})
    with pytest.raises(InvalidArgument):
        StaticKeyProvider({0: b"a" * 32})
    with pytest.raises(InvalidArgument):
        StaticKeyProvider({1: b"a" * 32}, current=2)
    p = StaticKeyProvider({1: b"a" * 32})
    with pytest.raises(UnknownKeyVersion):
        p.get_key(9)
    with pytest.raises(InvalidArgument):
        p.set_state(1, "retired")


def test_static_create_version_and_state_changes():
    p = StaticKeyProvider({1: b"a" * 32})
    info = p.create_version()
    assert info.version == 2 and p.get_current_key().version == 2
    assert p.get_key(1).state is KeyState.DECRYPT_ONLY
    p.set_state(2, KeyState.DEPRECATED)
    with pytest.raises(KeyVersionNotUsable):
        p.get_current_key()
    assert p.get_key(2).version == 2  # still decrypts
    p.set_state(1, "deprecated")
    with pytest.raises(KeyVersionNotUsable):
        p.set_current(1)
    p.set_state(1, "decrypt-only")
    p.set_current(1)
    assert p.get_current_key().version == 1 and p.get_key(1).state is KeyState.ACTIVE


def test_static_hides_key_material():
    key = b"K" * 32
    p = StaticKeyProvider({1: key})
    for text in (repr(p), repr(p.get_current_key()), repr(p.list_versions()), str(vars_or_slots(p))):
        assert "KKKK" not in text
    for obj in (p, p.get_current_key(), p.get_current_key().cipher):
        with pytest.raises(TypeError):
            pickle.dumps(obj)


def vars_or_slots(obj) -> dict:
    return {s: repr(getattr(obj, s)) for s in type(obj).__slots__}


# ---------------------------------------------------------------- master key checks


def test_missing_master_key_says_what_to_set(tmp_path):
    with pytest.raises(MasterKeyError) as info:
        EnvironmentKeyProvider(state_path=tmp_path / "k.json")
    assert "ENCRYPTION_MASTER_KEY" in str(info.value)
    assert "32 bytes" in str(info.value)


def test_short_master_key_message_does_not_contain_value(tmp_path, monkeypatch):
    secret = "short-but-secret-Value"
    monkeypatch.setenv("ENCRYPTION_MASTER_KEY", secret)
    with pytest.raises(MasterKeyError) as info:
        EnvironmentKeyProvider(state_path=tmp_path / "k.json")
    message = str(info.value) + repr(info.value)
    assert "ENCRYPTION_MASTER_KEY" in message and "at least 32 bytes" in message
    assert secret not in message and "short-but" not in message


@pytest.mark.parametrize("weak", [bytes(32), "0" * 40, b"\xff" * 33, "a" * 64, "\u00e9" * 20,
                                  bytearray(48), memoryview(b"k" * 32)])
def test_a_master_key_of_one_repeated_value_is_refused(tmp_path, weak):
    with pytest.raises(MasterKeyError, match="repeated") as info:
        provider(tmp_path, master_key=weak)
    assert "000" not in str(info.value) and "aaa" not in str(info.value)
    # a byte differing anywhere is a key (its strength is the operator's)
    raw = bytearray(memoryview(weak.encode() if isinstance(weak, str) else weak).tobytes())
    raw[len(raw) // 2] ^= 1
    assert provider(tmp_path / "ok", master_key=bytes(raw)).get_current_key()


def test_whitespace_around_the_master_key_is_named_when_it_is_the_difference(tmp_path, caplog):
    """A secret mounted from a file brings a trailing newline: the key check value refuses it
    (a different key), and the message says that whitespace is the whole difference."""
    base = "ws-master-key-0123456789-abcdefghijklm"
    for created, given in ((base, base + "\n"), (base + "\n", base), (base, " " + base),
                           (base + "\r\n", base)):
        state = tmp_path / f"{len(created)}-{len(given)}-{given[0] == ' '}.json"
        provider(tmp_path, master_key=created, state_path=state).get_current_key()
        with pytest.raises(MasterKeyMismatch) as err:
            provider(tmp_path, master_key=given, state_path=state).get_current_key()
        message = str(err.value)
        assert ("whitespace at its ends" in message or "ended with" in message), message
        assert base not in message
    with pytest.raises(MasterKeyMismatch) as err:
        provider(tmp_path, master_key="another-key-entirely-0123456789-xyz",
                 state_path=state).get_current_key()
    assert "stray whitespace" in str(err.value)
    assert any("whitespace" in r.getMessage() and base not in r.getMessage()
               for r in caplog.records)


def test_master_key_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCRYPTION_MASTER_KEY", MASTER)
    monkeypatch.setenv("ENCRYPTION_KDF_ITERATIONS", "1000")
    p = EnvironmentKeyProvider(state_path=tmp_path / "k.json")
    assert p.policy.iterations == 1000
    assert p.get_current_key().version == 1


def test_policy_validation(monkeypatch):
    with pytest.raises(InvalidArgument):
        DerivationPolicy(iterations=0)
    with pytest.raises(InvalidArgument):
        DerivationPolicy(salt_bytes=8)
    with pytest.raises(InvalidArgument):
        DerivationPolicy.from_environment({"ENCRYPTION_KDF_ITERATIONS": "lots"})


# ---------------------------------------------------------------- derivation


def test_derivation_matches_pbkdf2_sha512_at_100k_iterations(tmp_path):
    p = provider(tmp_path, policy=DerivationPolicy())  # the default 100,000 iterations
    key = p.get_current_key()
    doc = json.loads(p.state_path.read_text())
    entry = doc["versions"][0]
    assert entry["iterations"] == 100_000 and entry["kdf"] == "pbkdf2-hmac-sha512"
    import base64

    salt = base64.b64decode(entry["salt"])
    assert len(salt) >= 16
    expected = hashlib.pbkdf2_hmac("sha512", MASTER.encode(), salt, 100_000, 32)
    nonce = b"\x01" * 16
    assert key.cipher.encrypt(nonce, b"x") == AesGcm(expected).encrypt(nonce, b"x")


def test_derivation_runs_once_per_version_per_process(tmp_path, monkeypatch):
    calls = []
    real = hashlib.pbkdf2_hmac

    def counting(*args):
        calls.append(args[3])
        return real(*args)

    monkeypatch.setattr(env_mod.hashlib, "pbkdf2_hmac", counting)
    p = provider(tmp_path)
    for _ in range(50):
        p.get_current_key()
        p.get_key(1)
    assert len(calls) == 1
    p.create_version()
    for _ in range(10):
        p.get_current_key()
        p.get_key(1)
    assert len(calls) == 2
    other = provider(tmp_path)  # a second instance in the same process shares the cache
    other.get_key(1)
    other.get_key(2)
    assert len(calls) == 2


def test_versions_have_distinct_salts_and_keys(tmp_path):
    p = provider(tmp_path)
    k1 = p.get_current_key()
    p.create_version()
    k2 = p.get_current_key()
    assert k2.version == 2
    assert not roundtrip_safe(k1, k2)
    salts = [v["salt"] for v in json.loads(p.state_path.read_text())["versions"]]
    assert len(set(salts)) == 2


def test_another_master_key_is_refused_for_encryption_and_decryption(tmp_path):
    """A changed master key (even the right one with a trailing newline) must not go on
    encrypting under keys the real master key cannot reproduce."""
    master = "m" * 20 + "-master-key-of-40-bytes"
    p = provider(tmp_path, master_key=master)
    p.get_current_key()
    p.create_version()
    for other in ("another-master-key-that-is-long-enough", master + "\n", master + " "):
        q = provider(tmp_path, master_key=other)
        with pytest.raises(MasterKeyMismatch) as err:
            q.get_current_key()
        assert master not in str(err.value) and other.strip() not in str(err.value)
        for version in (1, 2):
            with pytest.raises(MasterKeyMismatch):
                q.get_key(version)
    assert provider(tmp_path, master_key=master).get_current_key().version == 2


# ---------------------------------------------------------------- lifecycle


def test_list_versions_states_and_times(tmp_path):
    p = provider(tmp_path)
    assert p.list_versions() == []
    p.get_current_key()
    p.create_version()
    p.create_version()
    infos = p.list_versions()
    assert [i.version for i in infos] == [1, 2, 3]
    assert [i.state for i in infos] == [KeyState.DECRYPT_ONLY, KeyState.DECRYPT_ONLY,
                                        KeyState.ACTIVE]
    assert all(i.created_at.tzinfo is not None for i in infos)
    assert infos[0].created_at <= infos[2].created_at


def test_set_state_and_deprecated_current_refuses(tmp_path):
    p = provider(tmp_path)
    p.get_current_key()
    p.create_version()
    p.set_state(1, KeyState.DEPRECATED)
    assert p.get_key(1).state is KeyState.DEPRECATED
    p.set_state(2, "deprecated")
    with pytest.raises(KeyVersionNotUsable):
        p.get_current_key()
    with pytest.raises(UnknownKeyVersion):
        p.set_state(7, "active")
    p.create_version()
    assert p.get_current_key().version == 3
    with pytest.raises(KeyVersionNotUsable):
        p.set_current(2)
    p.set_state(2, "decrypt-only")
    p.set_current(2)
    assert p.get_current_key().version == 2
    assert p.get_key(3).state is KeyState.DECRYPT_ONLY


def test_unknown_version(tmp_path):
    p = provider(tmp_path)
    with pytest.raises(UnknownKeyVersion):
        p.get_key(1)
    p.get_current_key()
    with pytest.raises(UnknownKeyVersion) as info:
        p.get_key(5)
    assert info.value.version == 5 and isinstance(info.value, LookupError)


def test_environment_provider_hides_material(tmp_path):
    p = provider(tmp_path)
    key = p.get_current_key()
    assert MASTER not in repr(p) and "mmmm" not in repr(p)
    assert "mmmm" not in p.state_path.read_text()
    for obj in (p, key, key.cipher):
        with pytest.raises(TypeError):
            pickle.dumps(obj)
    try:
        p.get_key(99)
    except UnknownKeyVersion as exc:
        assert "mmmm" not in str(exc)


# ---------------------------------------------------------------- the state file


def test_default_state_path(monkeypatch, tmp_path):
    home = Path(os.environ["HOME"])
    assert _state.default_state_path({}) == home / ".local" / "state" / "engine" / "keys.json"
    assert _state.default_state_path({"ENGINE_STATE_DIR": "/s"}) == Path("/s/keys.json")
    assert _state.default_state_path({"ENGINE_KEY_STATE_FILE": "/f.json",
                                      "ENGINE_STATE_DIR": "/s"}) == Path("/f.json")
    assert _state.default_state_path({"XDG_STATE_HOME": "/x"}) == Path("/x/engine/keys.json")
    monkeypatch.setenv("ENGINE_STATE_DIR", str(tmp_path / "sd"))
    p = EnvironmentKeyProvider(master_key=MASTER, policy=FAST)
    p.get_current_key()
    assert (tmp_path / "sd" / "keys.json").exists()


@pytest.mark.parametrize("content, why", [
    (b'{"format": 1, "current": 1, "versions": [', "not valid JSON"),
    (b"\x00\x00\x00", "not valid JSON"),
    (b'{"format": 9, "current": null, "versions": []}', "format"),
    (b'{"format": 1, "current": 2, "versions": []}', "current"),
    (b'{"format": 1, "current": 1, "versions": [{"version": 1}]}', "lacks"),
    (b'{"format": 1, "current": 1, "versions": [{"version": 1, "state": "gone", '
     b'"created_at": "2020-01-01T00:00:00+00:00", "salt": "AAAAAAAAAAAAAAAAAAAAAA==", '
     b'"iterations": 10}]}', "invalid"),
    (b'{"format": 1, "current": 1, "versions": [{"version": 1, "state": "active", '
     b'"created_at": "2020-01-01T00:00:00+00:00", "salt": "AAAA", "iterations": 10}]}', "salt"),
])
def test_corrupted_state_file_gives_typed_error(tmp_path, content, why):
    p = provider(tmp_path)
    p.state_path.parent.mkdir(parents=True)
    p.state_path.write_bytes(content)
    with pytest.raises(KeyStateCorrupted) as info:
        p.get_current_key()
    assert why in str(info.value) and str(p.state_path) in str(info.value)


def test_state_file_is_written_atomically(tmp_path, monkeypatch):
    p = provider(tmp_path)
    p.get_current_key()
    before = p.state_path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(_state.os, "replace", crash)
    with pytest.raises(KeyProviderError, match="cannot write the key state file"):
        p.create_version()
    monkeypatch.undo()
    assert p.state_path.read_bytes() == before  # the old file, whole
    leftovers = [f for f in p.state_path.parent.iterdir() if f.name.endswith(".tmp")]
    assert leftovers == []
    assert provider(tmp_path).get_current_key().version == 1


def test_atomic_write_fsyncs_file_and_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(_state.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    provider(tmp_path).get_current_key()
    assert len(synced) == 2
    assert oct(p_mode(tmp_path)) == oct(0o600)


def p_mode(tmp_path) -> int:
    return os.stat(tmp_path / "state" / "keys.json").st_mode & 0o777


CHILD = textwrap.dedent("""
    import sys
    from engine.keys import EnvironmentKeyProvider, DerivationPolicy
    p = EnvironmentKeyProvider(master_key=sys.argv[2], state_path=sys.argv[1],
                               policy=DerivationPolicy(iterations=1000))
    info = p.create_version()
    key = p.get_current_key()
    nonce = b"c" * 16
    sys.stdout.write(f"{info.version} " + key.cipher.encrypt(nonce, b"from child").hex())
""")


def run_child(state_path: Path) -> tuple[int, bytes]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(state_path), MASTER], check=True,
                         capture_output=True, text=True, cwd=REPO, timeout=60).stdout
    version, ct = out.split()
    return int(version), bytes.fromhex(ct)


def test_second_process_create_version_is_seen(tmp_path):
    p = provider(tmp_path)
    assert p.get_current_key().version == 1
    version, ct = run_child(p.state_path)
    assert version == 2
    deadline = time.monotonic() + 5  # the file is looked at again every 0.25 s
    while p.get_current_key().version != 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    key = p.get_current_key()
    assert key.version == 2
    assert key.cipher.decrypt(b"c" * 16, ct) == b"from child"
    assert [i.version for i in p.list_versions()] == [1, 2]


def test_concurrent_create_version_in_processes_never_collides(tmp_path):
    p = provider(tmp_path)
    p.get_current_key()
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(p.state_path), MASTER],
                              stdout=subprocess.PIPE, text=True, cwd=REPO) for _ in range(4)]
    versions = sorted(int(proc.communicate(timeout=60)[0].split()[0]) for proc in procs)
    assert versions == [2, 3, 4, 5]
    assert [i.version for i in p.list_versions()] == [1, 2, 3, 4, 5]
    assert p.get_current_key().version == 5


# ---------------------------------------------------------------- usage and purge (for rotation)


@pytest.mark.parametrize("kind", ["static", "environment"])
def test_usage_and_purge(kind, tmp_path):
    p = StaticKeyProvider({1: b"a" * 32}) if kind == "static" else provider(tmp_path)
    p.get_current_key()
    assert p.usage(1) == 0
    assert p.record_usage(1, 499) == 499 and p.record_usage(1, 1) == 500
    assert p.usage(1) == 500
    with pytest.raises(UnknownKeyVersion):
        p.record_usage(9, 1)
    assert p.record_usage(1, -100) == 400  # reserved and not used: given back
    assert p.record_usage(1, -1000) == 0  # never below zero
    assert p.record_usage(1, 500) == 500
    for bad in (1.5, True, "3", None):
        with pytest.raises(InvalidArgument):
            p.record_usage(1, bad)
    with pytest.raises(KeyUsageExhausted):
        p.record_usage(1, 501, limit=1000)
    assert p.usage(1) == 500 and p.record_usage(1, 500, limit=1000) == 1000
    p.record_usage(1, -500)
    p.create_version()
    assert p.usage(2) == 0 and p.usage(1) == 500
    with pytest.raises(KeyVersionNotUsable):
        p.purge(2)
    p.purge(1)
    assert [i.version for i in p.list_versions()] == [2]
    with pytest.raises(UnknownKeyVersion):
        p.get_key(1)
    with pytest.raises(UnknownKeyVersion):
        p.purge(1)


def test_usage_is_shared_through_the_state_file(tmp_path):
    a, b = provider(tmp_path), provider(tmp_path)
    a.get_current_key()
    a.record_usage(1, 10)
    b.record_usage(1, 5)
    assert a.usage(1) == 15 == b.usage(1)
    assert json.loads(a.state_path.read_text())["versions"][0]["usage"] == 15


def test_a_provider_is_rebuilt_in_another_process_from_its_config(tmp_path):
    """Workers build their own provider from a picklable configuration with no secret in it;
    the worker's own master key must be the right one (its key check values say so)."""
    import multiprocessing

    p = provider(tmp_path)
    token = engine.EncryptionService(p, metrics=False).encrypt_token("ssn 123")
    config = p.config()
    blob = pickle.dumps(config)
    assert MASTER.encode() not in blob and b"secret" not in blob
    ctx = multiprocessing.get_context("spawn")
    for master, expected in ((MASTER, "ssn 123"), ("w" * 20 + "-another-master-key!", "MasterKeyMismatch")):
        with ctx.Pool(1, initializer=_set_master, initargs=(master,)) as pool:
            assert pool.apply(_decrypt_with_config, (blob, token)) == expected


def _set_master(master: str) -> None:
    os.environ["ENCRYPTION_MASTER_KEY"] = master


def _decrypt_with_config(blob: bytes, token: str) -> str:
    config = pickle.loads(blob)
    try:
        return engine.EncryptionService(config.build(), metrics=False).decrypt_text(token)
    except MasterKeyMismatch as exc:
        return type(exc).__name__


def test_static_keys_cannot_travel():
    with pytest.raises(KeyProviderError, match="only in this process"):
        StaticKeyProvider({1: b"a" * 32}).config()


def test_every_provider_implements_the_whole_contract():
    import engine.vault

    for cls in (EnvironmentKeyProvider, StaticKeyProvider, engine.vault.VaultKeyProvider):
        assert issubclass(cls, KeyProvider) and not cls.__abstractmethods__


def test_only_text_and_bytes_are_master_keys(tmp_path):
    for bad in (40, 4.0e40, ["k" * 40], object()):
        with pytest.raises(engine.InvalidArgumentType, match="str or bytes-like"):
            provider(tmp_path, master_key=bad)
    for good in ("k" * 39 + "!", b"k" * 39 + b"!", bytearray(b"k" * 39 + b"!"),
                 memoryview(b"k" * 39 + b"!")):
        assert provider(tmp_path / type(good).__name__, master_key=good).get_current_key()


@pytest.mark.parametrize("loss", ["deleted", "emptied", "replaced by an empty version list"])
def test_a_lost_state_file_loses_no_key(tmp_path, loss):
    """Every version's key derives from the master key and the version: a lost, emptied or reset
    state file gives version 1 back as the same key, and restore_versions lists the others."""
    p = provider(tmp_path)
    svc = engine.EncryptionService(p, metrics=False)
    old = [svc.encrypt_token(f"v{version}") for version in (1,)]
    for _ in range(3):
        p.create_version()
        old.append(svc.encrypt_token(f"v{p.current_version}"))
    if loss == "deleted":
        p.state_path.unlink()
    elif loss == "emptied":
        p.state_path.write_bytes(b"")
    else:
        p.state_path.write_text('{"format": 1, "current": null, "versions": []}')
    fresh = provider(tmp_path)
    if loss == "emptied":
        with pytest.raises(KeyStateCorrupted):
            fresh.get_current_key()  # an unreadable file is an error, never a silent new key
        p.state_path.unlink()
        fresh = provider(tmp_path)
    assert fresh.get_current_key().version == 1
    svc = engine.EncryptionService(fresh, metrics=False)
    assert svc.decrypt_text(old[0]) == "v1"
    with pytest.raises(UnknownKeyVersion, match="restore_versions"):
        svc.decrypt_text(old[3])
    assert fresh.restore_versions(through=4) == [2, 3, 4]
    assert [svc.decrypt_text(t) for t in old] == ["v1", "v2", "v3", "v4"]
    assert fresh.current_version == 4 and fresh.get_current_key().version == 4


def test_a_read_only_state_directory_is_a_typed_error(tmp_path):
    if os.geteuid() == 0:  # root writes anyway: make the directory a file's child instead
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("")
        p = EnvironmentKeyProvider(master_key=MASTER, state_path=blocker / "keys.json",
                                   policy=FAST)
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        p = EnvironmentKeyProvider(master_key=MASTER, state_path=ro / "keys.json", policy=FAST)
    with pytest.raises(KeyProviderError, match="key state file") as err:
        engine.EncryptionService(p, metrics=False).encrypt_token("x")
    assert not isinstance(err.value, OSError)


@pytest.mark.forks_with_threads
def test_a_child_forked_while_another_thread_writes_the_state_file_can_write_it(tmp_path):
    p = provider(tmp_path)
    p.get_current_key()
    fork_while_busy(lambda: p.record_usage(1, 1), lambda: p.record_usage(1, 1), forks=20,
                    what="the state-file lock")
