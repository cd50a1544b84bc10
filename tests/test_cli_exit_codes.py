"""The README's exit-code table, walked: every code it lists is produced by the real command
line (a subprocess) in at least one way, and no code is tested that the table does not list."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MASTER = "exit-codes-test-master-key-0123456789-abcdef"


def readme_exit_codes() -> dict[int, str]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| code | meaning |"):].split("\n\n", 1)[0]
    rows = [re.match(r"\| (\d+) \| (.+) \|$", line) for line in table.splitlines()[2:]]
    assert all(rows), table
    return {int(m.group(1)): m.group(2) for m in rows}


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "ENCRYPTION_MASTER_KEY": MASTER, "ENCRYPTION_KDF_ITERATIONS": "1000",
            "ENGINE_KEY_STATE_FILE": str(tmp_path / "keys.json"),
            "ENGINE_STATE_DIR": str(tmp_path / "state"),
            "ENGINE_AUDIT_LOG": str(tmp_path / "audit.jsonl"), "VAULT_ENABLED": "false"}


def cli(*args, env, **kw):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                          text=True, timeout=300, env=env, **kw)


def ok(env, tmp):
    yield cli("env", env=env)
    yield cli("rotate", "--if-needed", env=env)


def check_failed(env, tmp):
    assert cli("rotate", env=env).returncode == 0
    (tmp / "plain").write_bytes(os.urandom(5000))
    assert cli("encrypt", str(tmp / "plain"), str(tmp / "sealed"), env=env).returncode == 0
    sealed = bytearray((tmp / "sealed").read_bytes())
    sealed[-20] ^= 1
    (tmp / "sealed").write_bytes(sealed)
    yield cli("decrypt", str(tmp / "sealed"), str(tmp / "out"), env=env)  # does not authenticate
    log = Path(env["ENGINE_AUDIT_LOG"])
    log.write_text(log.read_text().replace('"manual"', '"edited"'))
    yield cli("audit-verify", str(log), env=env)  # tampered audit log


def bad_usage(env, tmp):
    yield cli("rotate", "--no-such-option", env=env)
    yield cli("demo", "--records", "0", env=env)
    yield cli("keys", "purge", "version-one", env=env)
    yield cli("inventory", "--store", "nosuch://x", "--column", "c", env=env)


def unavailable(env, tmp):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield cli("rotate", env={**env, "VAULT_ENABLED": "true", "VAULT_TOKEN": "t",
                             "VAULT_ADDR": f"http://127.0.0.1:{port}", "VAULT_RETRIES": "0",
                             "VAULT_TIMEOUT": "2"})
    yield cli("rotate", env={**env, "VAULT_ENABLED": "true", "VAULT_ADDR": ""})  # configuration


def busy(env, tmp):
    assert cli("rotate", env=env).returncode == 0
    lock = os.open(Path(env["ENGINE_KEY_STATE_FILE"]).parent / "rotation.lock",
                   os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as another rotation holds it
        yield cli("rotate", env=env)
        yield cli("rotate", "--if-needed", env={**env, "KEY_ROTATION_INTERVAL_DAYS": "1e-9"})
    finally:
        os.close(lock)
    versions = cli("keys", "list", "--json", env=env)
    assert '"current_version": 1' in versions.stdout  # the refused runs changed nothing


def unreadable(env, tmp):
    yield cli("encrypt", str(tmp / "no-such-file"), str(tmp / "out"), env=env)
    yield cli("audit-verify", str(tmp / "no-such-log"), env=env)


def interrupted(env, tmp):
    """Ctrl-C once the engine has loaded its command line (``-X importtime`` tells when)."""
    for args in (["encrypt", "-", str(tmp / "out")], ["keys", "list"]):
        proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "engine", *args],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        for line in proc.stderr:
            if line.rsplit("|", 1)[-1].strip() == "engine.cli":
                proc.send_signal(signal.SIGINT)
                break
        out, err = proc.communicate(timeout=120)
        yield subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


TRIGGERS = {0: ok, 1: check_failed, 2: bad_usage, 3: unavailable, 4: busy, 5: unreadable,
            130: interrupted}


def test_the_table_lists_the_codes_the_command_line_knows():
    from engine import cli as module

    codes = readme_exit_codes()
    assert set(codes) == set(TRIGGERS)
    declared = {v for k, v in vars(module).items() if k.startswith("EXIT_")}
    assert declared == set(codes)


@pytest.mark.parametrize("code", sorted(TRIGGERS))
def test_each_code_of_the_readme_is_what_the_command_line_exits_with(code, env, tmp_path):
    assert code in readme_exit_codes()
    runs = list(TRIGGERS[code](env, tmp_path))
    assert runs
    for r in runs:
        assert r.returncode == code, (r.args, r.returncode, r.stderr[-2000:])
        assert "Traceback" not in r.stderr, r.stderr
        if code:  # a failure says why: one line of stderr (a check's report: on stdout)
            said = [ln for ln in r.stderr.splitlines() if not ln.startswith("import time:")]
            assert (said or r.stdout.strip()) and (code == 2 or len(said) <= 1), (r.args, said)
