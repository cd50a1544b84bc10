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


STORM = """
import os, signal, subprocess, sys, time
from engine import _interrupts
reports = []
sys.unraisablehook = lambda u: reports.append(repr(u.exc_value))
gate = _interrupts.CommandInterrupts()
gate.commit()
storm = subprocess.Popen([sys.executable, "-c", "import os, signal, time\\nwhile True:\\n"
                          "    os.kill(%d, signal.SIGINT)\\n    time.sleep(2e-5)" % os.getpid()])
swaps, end = 0, time.monotonic() + 3
while time.monotonic() < end:
    signal.signal(signal.SIGINT, gate._handler)  # back to the disarmed handler, swapped again
    sys.unraisablehook = gate._unraisable
    gate.ignore()
    swaps += 1
storm.kill()
print(swaps, reports)
"""


def test_a_sigint_during_the_swap_to_ignore_is_not_reported():
    """A SIGINT caught between Python running the pending handlers and installing "ignore"
    used to print "Signal 2 ignored due to race condition" after a complete command (seen
    under the ASan runtime, whose sigaction interceptor widens that instant): hundreds of
    thousands of swaps under a storm of SIGINTs report nothing."""
    out = subprocess.run([sys.executable, "-c", STORM], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    swaps, reports = out.stdout.split(" ", 1)
    assert int(swaps) > 10_000 and reports.strip() == "[]", out.stdout


def test_once_a_command_is_over_sigint_cannot_change_how_the_process_ends(tmp_path):
    """Python's exit puts back the default action for SIGINT, so a Ctrl-C in the last moments
    of a finished command killed it by the signal: here SIGINT comes at exit (an atexit
    callback) and the process still exits with the command's status and prints nothing more."""
    code = ("import atexit, os, signal, sys\n"
            "sys.argv = [os.path.join(sys.argv[1], 'crypto-engine'), 'info', '--json']\n"
            "from engine import cli\n"
            "atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))\n"
            "status = cli.main()\n"
            "print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN, file=sys.stderr)\n"
            "sys.exit(status)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "True\n", (r.returncode, r.stderr)
    assert "backend" in r.stdout
