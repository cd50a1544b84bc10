"""Ctrl-C on the command line, from the moment the engine gets control: one line on stderr, exit
130, never a traceback; a job given --json prints what it did so far; a job's progress bar
shows its total before the first batch is through."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

MASTER = "ctrl-c-test-master-key-0123456789-abcdefgh"
ROWS = 20_000


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An environment with a key, and a SQLite table of ROWS values sealed under it."""
    tmp = tmp_path_factory.mktemp("ctrl-c")
    env = {**os.environ, "ENCRYPTION_MASTER_KEY": MASTER, "ENCRYPTION_KDF_ITERATIONS": "1000",
           "ENGINE_KEY_STATE_FILE": str(tmp / "keys.json"), "ENGINE_STATE_DIR": str(tmp),
           "VAULT_ENABLED": "false"}
    db = tmp / "crm.db"
    code = ("import sqlite3, sys\nfrom engine import get_encryption_service\n"
            "tokens = get_encryption_service().encrypt_many([f'v{i}' for i in range(%d)])\n"
            "db = sqlite3.connect(sys.argv[1])\n"
            "db.execute('CREATE TABLE users (id INTEGER PRIMARY KEY, ssn TEXT)')\n"
            "db.executemany('INSERT INTO users VALUES (?, ?)', enumerate(tokens))\n"
            "db.commit()\n" % ROWS)
    r = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    store = ["--store", f"sqlite:///{db}", "--table", "users", "--key", "id", "--column", "ssn"]
    return env, store, db


def _script() -> str:
    """The console script pip installed: the real entry point."""
    return os.path.join(os.path.dirname(sys.executable), "crypto-engine")


def _imports_after_the_engine(args, env) -> list[str]:
    """The modules a whole run imports once the engine has control, in order."""
    r = subprocess.run([_script(), *args], capture_output=True, text=True, timeout=300,
                       env={**env, "PYTHONPROFILEIMPORTTIME": "1"})
    names = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()
             if line.startswith("import time:")][1:]  # the first line is the header
    return names[names.index("engine._interrupts"):]


def _interrupt_after(module, args, env):
    """Runs the command and sends SIGINT as soon as ``module`` has been imported."""
    proc = subprocess.Popen([_script(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**env, "PYTHONPROFILEIMPORTTIME": "1"})
    said = []
    for line in proc.stderr:
        said.append(line)
        if line.startswith("import time:") and line.rsplit("|", 1)[-1].strip() == module:
            proc.send_signal(signal.SIGINT)
            break
    out, rest = proc.communicate(timeout=300)
    lines = [ln for ln in "".join(said).splitlines() + rest.splitlines()
             if not ln.startswith("import time:")]
    return proc.returncode, out, lines


@pytest.mark.parametrize("args", [["info"], ["keys", "list"], ["rotate", "--json"],
                                  ["reencrypt", "--json"], ["inventory", "--json"]])
def test_ctrl_c_while_the_command_starts_is_one_line_and_130(setup, args):
    """SIGINT right after each of eight modules spread over the start-up (from the engine's
    first module to the last one the command imports)."""
    env, store, _ = setup
    args = args + store if args[0] in ("reencrypt", "inventory") else args
    modules = _imports_after_the_engine(args, env)
    assert len(modules) > 20, modules
    picks = sorted({modules[i * (len(modules) - 1) // 7] for i in range(8)},
                   key=modules.index)
    codes = []
    for module in picks:
        code, out, lines = _interrupt_after(module, args, env)
        codes.append(code)
        text = "\n".join(lines)
        assert "Traceback" not in text and "Exception ignored" not in text, (module, text)
        if code == 0:  # it had finished when the signal came
            continue
        assert code == 130, (module, code, text)
        assert len(lines) == 1 and "interrupted" in lines[0], (module, text)
        if "--json" in args and args[0] != "rotate" and "before the command started" \
                not in lines[0]:  # a job that had parsed its arguments: what it did, in JSON
            report = json.loads(out)
            assert report["interrupted"] is True and report["complete"] is False, out
    assert codes.count(130) >= len(picks) - 2, (picks, codes)


def test_ctrl_c_in_an_inventory_prints_the_counts_so_far_and_the_bar_moves_from_the_start(setup):
    env, store, _ = setup
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen([_script(), "inventory", *store, "--batch-size", "20", "--json"],
                            stdout=subprocess.PIPE, stderr=terminal, env=env)
    os.close(terminal)
    drawn, first_frame = b"", None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        chunk = os.read(main, 65536)
        drawn += chunk
        if first_frame is None and f"/{ROWS}".encode() in drawn:
            first_frame = drawn
        frames = drawn.replace(b"\r", b" ").split()
        done = [int(f.split(b"/")[0]) for f in frames
                if f.endswith(f"/{ROWS}".encode()) and f.split(b"/")[0].isdigit()]
        if done and 0 < done[-1] < ROWS // 2:
            break
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    try:
        while chunk := os.read(main, 65536):
            drawn += chunk
    except OSError:
        pass
    os.close(main)
    # the bar showed the total before a single row was counted
    assert first_frame is not None and f" 0/{ROWS}".encode() in first_frame, first_frame
    assert proc.returncode == 130, drawn[-2000:]
    text = drawn.decode(errors="replace")
    assert "Traceback" not in text and "an inventory changes nothing" in text
    report = json.loads(out)
    assert report["interrupted"] is True and 0 < report["rows"] < ROWS
    column = report["columns"]["ssn"]
    assert sum(column["versions"].values()) == column["values"] == report["rows"]


def test_an_interrupt_wrapped_by_python_is_recognised():
    """Python wraps a KeyboardInterrupt raised in ``__set_name__`` (a class being made during an
    import) in a RuntimeError; the command line still reads it as Ctrl-C."""
    from engine.cli import _caused_by_interrupt

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as inner:
            raise RuntimeError("Error calling __set_name__") from inner
    except RuntimeError as wrapped:
        assert _caused_by_interrupt(wrapped)
    assert not _caused_by_interrupt(RuntimeError("something else"))
