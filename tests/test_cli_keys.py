"""`crypto-engine keys list|purge|rewrap` and the first rotation's output, through the real
command line: the environment provider with a SQLite store, and Vault-held keys on a real
OpenBao server."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

MASTER = "cli-keys-test-master-key-0123456789-abcdef"


def run(*args, env):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})


@pytest.fixture
def env(tmp_path):
    return {"ENCRYPTION_MASTER_KEY": MASTER, "ENGINE_KEY_STATE_FILE": str(tmp_path / "keys.json"),
            "ENCRYPTION_KDF_ITERATIONS": "1000", "ENGINE_AUDIT_LOG": str(tmp_path / "audit.jsonl"),
            "ENGINE_STATE_DIR": str(tmp_path / "state"), "VAULT_ENABLED": "false",
            "KEY_RETENTION_VERSIONS": "1"}


def audit_events(env, event):
    with open(env["ENGINE_AUDIT_LOG"]) as f:
        return [e["details"] for e in map(json.loads, f) if e["event"] == event]


def seal_rows(env, path, count):
    """A SQLite table of ``count`` values sealed under the current version, by a child process
    configured like the command line."""
    code = ("import sqlite3, sys\nfrom engine import get_encryption_service\n"
            "s = get_encryption_service()\ndb = sqlite3.connect(sys.argv[1])\n"
            "db.execute('CREATE TABLE users (id INTEGER PRIMARY KEY, ssn TEXT)')\n"
            f"tokens = s.encrypt_many([f'ssn {{i}}' for i in range({count})])\n"
            "db.executemany('INSERT INTO users VALUES (?, ?)', enumerate(tokens))\ndb.commit()\n")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                       timeout=120, env={**os.environ, **env})
    assert r.returncode == 0, r.stderr


def test_first_rotation_says_it_created_the_first_version(env):
    r = run("keys", "list", env=env)
    assert r.returncode == 0 and "no key version yet" in r.stdout
    assert run("keys", "list", "--json", env=env).stdout.strip() == \
        '{"current_version": null, "versions": []}'
    r = run("rotate", "--if-needed", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "created the first key version, v1 (there was none)"
    assert "None" not in r.stdout
    r = run("rotate", env=env)
    assert r.stdout.strip() == "rotated v1 -> v2 (manual); v1 deprecated"


def test_list_then_purge_refused_while_the_store_holds_values_forced_recorded(env, tmp_path):
    assert run("rotate", env=env).returncode == 0
    db = tmp_path / "crm.db"
    seal_rows(env, db, 25)
    for _ in range(2):
        assert run("rotate", env=env).returncode == 0
    r = run("keys", "list", "--json", env=env)
    assert r.returncode == 0, r.stderr
    listing = json.loads(r.stdout)
    assert listing["current_version"] == 3
    assert [(v["version"], v["state"], v["current"]) for v in listing["versions"]] == [
        (1, "deprecated", False), (2, "deprecated", False), (3, "active", True)]
    assert {v["algorithm"] for v in listing["versions"]} == {"aes-256-gcm"}
    assert listing["versions"][0]["usage"] == 25 and listing["versions"][1]["usage"] == 0
    assert all(v["usage_limit"] == 2**32 and v["created_at"] for v in listing["versions"])
    text = run("keys", "list", env=env).stdout
    assert "v3 *" in text and "deprecated" in text and "25 of 4,294,967,296" in text

    store = ["--store", f"sqlite:///{db}", "--table", "users", "--key", "id", "--column", "ssn"]
    r = run("keys", "purge", "1", *store, env=env)  # 25 values still under v1
    assert r.returncode == 1
    assert "refused" in r.stderr and "still named by 25 value(s)" in r.stderr
    r = run("keys", "purge", "v1", env=env)  # no store looked at: refused, unless --force
    assert r.returncode == 2 and "--force" in r.stderr
    r = run("keys", "purge", "3", "--force", env=env)  # the current version never goes
    assert r.returncode == 2 and "only deprecated versions" in r.stderr
    assert [v["version"] for v in json.loads(run("keys", "list", "--json", env=env).stdout)[
        "versions"]] == [1, 2, 3]
    assert audit_events(env, "KEY_PURGED") == []

    r = run("keys", "purge", "2", *store, "--json", env=env)  # nothing under v2
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"purged": 2, "forced": False,
                                    "checked": [f"sqlite:///{db}"], "still_named": {}}
    r = run("keys", "purge", "1", *store, "--force", env=env)
    assert r.returncode == 0, r.stderr
    assert "forced: 25 value(s) under it are unreadable now" in r.stdout
    assert [v["version"] for v in json.loads(run("keys", "list", "--json", env=env).stdout)[
        "versions"]] == [3]
    purged = audit_events(env, "KEY_PURGED")
    assert [(p["version"], p["forced"]) for p in purged] == [(2, False), (1, True)]
    assert purged[1]["still_named"] == {f"sqlite:///{db} users.ssn": {"readable": 25}}
    assert purged[0]["checked"] == purged[1]["checked"] == [f"sqlite:///{db}"]
    assert run("audit-verify", env["ENGINE_AUDIT_LOG"], env=env).returncode == 0
    with sqlite3.connect(db) as conn:  # the rows themselves are untouched
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (25,)


def test_rewrap_is_for_vault_held_keys(env):
    r = run("keys", "rewrap", env=env)
    assert r.returncode == 2 and "VAULT_ENABLED" in r.stderr


def test_rewrap_rewraps_the_vault_held_keys_inside_openbao(bao, names, tmp_path):
    import hvac

    env = {"VAULT_ENABLED": "true", "VAULT_ADDR": bao.address, "VAULT_TOKEN": bao.root_token,
           "VAULT_TRANSIT_KEY": names["key_name"], "VAULT_KV_PATH": names["kv_path"],
           "ENGINE_STATE_DIR": str(tmp_path / "state"), "KEY_RETENTION_VERSIONS": "5"}
    r = run("rotate", "--if-needed", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "created the first key version, v1 (there was none)"
    assert run("rotate", env=env).returncode == 0
    code = ("from engine import get_encryption_service as g\n"
            "import sys\ns = g()\nprint(s.encrypt_many(['payload'])[0] if sys.argv[1] == 'seal' "
            "else s.decrypt(sys.argv[2]))")

    def child(*args):
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                           timeout=120, env={**os.environ, **env})
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    token = child("seal")
    client = hvac.Client(bao.address, token=bao.root_token)

    def wrapped():
        kv = client.secrets.kv.v2
        return {v: kv.read_secret_version(path=f"{names['kv_path']}/v{v}", mount_point="secret",
                                          raise_on_deleted_version=True)["data"]["data"][
                                              "wrapped_key"] for v in (1, 2)}

    before = wrapped()
    assert all(w.startswith("vault:v1:") for w in before.values())
    r = run("keys", "rewrap", "--json", "--set-min-decryption-version", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"transit_version": 2, "rewrapped": [1, 2],
                                    "min_decryption_version": 2}
    after = wrapped()
    assert all(w.startswith("vault:v2:") for w in after.values()) and after != before
    assert child("open", token) == "b'payload'"  # the data keys are the same keys
    r = run("keys", "rewrap", env=env)
    assert r.returncode == 0 and "Transit v3" in r.stdout and "v1, v2" in r.stdout
    listing = json.loads(run("keys", "list", "--json", env=env).stdout)
    assert [(v["version"], v["state"]) for v in listing["versions"]] == [
        (1, "decrypt-only"), (2, "active")]
