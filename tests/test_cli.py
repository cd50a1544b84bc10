"""The command line: JSON output, exit codes, and key rotation through the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_info_json():
    r = run("info", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["backend"] in ("ipsec-mb", "openssl")
    r = run("--backend", "rot13", "info")
    assert r.returncode == 2 and "unknown backend" in r.stderr


def test_demo_round_trips_and_matches_cryptography():
    r = run("demo", "--records", "20000", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["round_trip_ok"] and out["identical_to_cryptography"] and out["records"] == 20000
    assert run("demo", "--records", "0").returncode == 2


@pytest.fixture
def key_env(tmp_path):
    return {"ENCRYPTION_MASTER_KEY": "cli-test-master-key-0123456789-abcdef",
            "ENGINE_KEY_STATE_FILE": str(tmp_path / "keys.json"),
            "ENCRYPTION_KDF_ITERATIONS": "1000", "ENGINE_AUDIT_LOG": str(tmp_path / "audit.jsonl"),
            "VAULT_ENABLED": "false"}


def test_rotate_and_verify_the_audit_log(key_env, tmp_path):
    r = run("rotate", "--if-needed", "--json", env=key_env)  # no key yet: version 1
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["reason"] == "no-version"
    r = run("rotate", "--if-needed", "--json", env=key_env)
    assert json.loads(r.stdout) == {"rotated": False, "reason": None}
    r = run("rotate", "--json", env=key_env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["new_version"] == 2
    r = run("rotation-scheduler", "--check-every", "0.01", "--max-checks", "2",
            env={**key_env, "KEY_ROTATION_INTERVAL_DAYS": "0.0000001"})
    assert r.returncode == 0 and r.stdout.strip() == "rotations: 2"
    r = run("audit-verify", key_env["ENGINE_AUDIT_LOG"], "--json", env=key_env)
    assert r.returncode == 0 and json.loads(r.stdout)["ok"]
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert sum('"KEY_ROTATION"' in ln for ln in lines) == 4
    (tmp_path / "audit.jsonl").write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    r = run("audit-verify", key_env["ENGINE_AUDIT_LOG"], "--json", env=key_env)
    assert r.returncode == 1 and json.loads(r.stdout)["problems"][0]["line"] == 2


def test_misconfiguration_is_exit_code_3(key_env):
    r = run("rotate", env={**key_env, "ENCRYPTION_MASTER_KEY": "hunter2hunter2"})
    assert r.returncode == 3 and "ENCRYPTION_MASTER_KEY" in r.stderr and "hunter2" not in r.stderr


def test_the_scheduler_refuses_an_interval_that_would_spin(key_env):
    for every in ("0", "-5", "nan", "inf", "soon"):
        r = run("rotation-scheduler", "--check-every", every, "--max-checks", "1", env=key_env)
        assert r.returncode == 2 and "positive number of seconds" in r.stderr

def test_audit_verify_prints_the_head_to_keep_and_checks_it_later(key_env, tmp_path):
    log = key_env["ENGINE_AUDIT_LOG"]
    assert run("rotate", env=key_env).returncode == 0
    old_log, old_head = (tmp_path / "audit.jsonl").read_bytes(), (tmp_path / "audit.jsonl.head").read_bytes()
    assert run("rotate", env=key_env).returncode == 0
    r = run("audit-verify", log, "--json", env=key_env)
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["ok"] and report["head"]["seq"] == report["entries"]
    anchor = f"{report['head']['seq']}:{report['head']['mac']}"
    r = run("audit-verify", log, env=key_env)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == f"head {anchor}"
    # an older log put back with its own head verifies alone, but not against the kept anchor
    (tmp_path / "audit.jsonl").write_bytes(old_log)
    (tmp_path / "audit.jsonl.head").write_bytes(old_head)
    assert run("audit-verify", log, env=key_env).returncode == 0
    r = run("audit-verify", log, "--expect-head", anchor, "--json", env=key_env)
    assert r.returncode == 1 and "truncated" in json.loads(r.stdout)["problems"][0]["reason"]
    r = run("audit-verify", log, "--expect-head", "12:nothex", env=key_env)
    assert r.returncode == 2 and "an audit head is" in r.stderr
