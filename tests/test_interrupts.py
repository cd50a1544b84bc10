"""The command line's Ctrl-C gate (engine._interrupts), in this process: an interrupt is never
lost, not even one whose KeyboardInterrupt Python swallows, and nothing is changed for library
users. (The whole command line under SIGINT at every moment: tests/test_cli_stream.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from engine import _interrupts


@pytest.fixture
def sigint():
    before, hook = signal.getsignal(signal.SIGINT), sys.unraisablehook
    yield
    signal.signal(signal.SIGINT, before)
    sys.unraisablehook = hook


class RaisesInDel:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs at one of these bytecodes, in __del__
            pass


def test_an_interrupt_swallowed_in_a_del_still_cancels_the_commit(sigint, capsys):
    gate = _interrupts.CommandInterrupts()
    RaisesInDel()  # collected at once: KeyboardInterrupt raised in __del__, printed and dropped
    assert "Exception ignored" not in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):
        gate.commit()
    gate.ignore()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert sys.unraisablehook is not gate._unraisable


def test_after_the_commit_sigint_changes_nothing(sigint):
    gate = _interrupts.CommandInterrupts()
    gate.commit()
    os.kill(os.getpid(), signal.SIGINT)  # handled here, at the next bytecode: no raise
    for _ in range(1000):
        pass
    gate.ignore()
    os.kill(os.getpid(), signal.SIGINT)  # ignored by the kernel now
    assert gate.interrupted(130) == 130  # not the command line's process: returned


def test_before_the_commit_sigint_raises_and_commit_cancels(sigint):
    gate = _interrupts.CommandInterrupts()
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass
    with pytest.raises(KeyboardInterrupt):
        gate.commit()


def test_an_inherited_ignored_sigint_stays_ignored(sigint):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gate = _interrupts.CommandInterrupts()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    gate.commit()
    gate.ignore()


def test_importing_the_engine_changes_no_signal_handler():
    code = ("import signal, sys; import engine; from engine import _interrupts; "
            "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler; "
            "assert not _interrupts.COMMAND_LINE; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "ok", r.stderr


@pytest.mark.parametrize("argv0, orig, expected", [
    ("-m", ["python", "-m", "engine", "encrypt", "a", "b"], True),
    ("-m", ["python", "-X", "dev", "-m", "engine.cli"], True),
    ("-m", ["python", "-m", "engine.testing.postgres"], False),
    ("-m", ["python", "-m", "pytest"], False),
    ("/venv/bin/crypto-engine", ["python", "/venv/bin/crypto-engine"], True),
    ("/srv/app.py", ["python", "/srv/app.py"], False),
    ("", ["python"], False),
])
def test_only_the_command_line_is_the_command_line(monkeypatch, argv0, orig, expected):
    monkeypatch.setattr(sys, "argv", [argv0])
    monkeypatch.setattr(sys, "orig_argv", orig)
    assert _interrupts._starting_command_line() is expected
