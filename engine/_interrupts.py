"""Ctrl-C on the command line: an interrupted command leaves no output and exits 130 with one
line, a command whose output is committed exits 0, and neither prints a traceback.

Python's own SIGINT handling cannot promise that. Its handler raises KeyboardInterrupt wherever
the main thread is: during the imports before a command runs (a traceback), again inside the
cleanup after a first Ctrl-C, or just after an output file was renamed into place (exit 130
although the file is complete); and at interpreter exit it puts back the default action, which
kills a process that has finished its work (seen as a lost Ctrl-C or as death by SIGINT after
a complete file). So:

* while the command line starts (``import engine`` and the parsing of its arguments), a SIGINT
  ends the process at once: nothing has been written yet;
* while a command that writes an output works, the first SIGINT raises KeyboardInterrupt once
  (later ones are swallowed while it cleans up);
* from the moment its output is complete and about to be committed, SIGINT is ignored until the
  process ends.

A SIGINT that the process inherited as ignored (a background job) stays ignored throughout.
Nothing here happens when the engine is imported as a library.
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["COMMAND_LINE", "CommandInterrupts", "before_exit", "command_over", "command_started",
           "take_sigint_while_starting"]

COMMAND = "crypto-engine"
_MODULES = ("engine", "engine.cli")


def _starting_command_line() -> bool:
    """Whether this process is the command line starting: ``crypto-engine`` (a console script)
    or ``python -m engine``, and not a program that imports the engine."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == COMMAND:
        return True
    if argv0 != "-m":  # Python sets "-m" while it imports the packages of the -m module only
        return False
    orig = list(getattr(sys, "orig_argv", ()))
    return "-m" in orig[:-1] and orig[orig.index("-m") + 1] in _MODULES


def _end_at_once(signum: int, frame: Any) -> None:
    if sys.stderr is not None:  # None: started without one, and descriptor 2 may be a file now
        try:
            os.write(sys.stderr.fileno(), f"{COMMAND}: interrupted before the command started; "
                     "nothing was written\n".encode())
        except (OSError, ValueError):
            pass
    os._exit(130)


# The first thing the command line does, before importing anything more (even threading): from
# here on a Ctrl-C while it starts is one line and exit 130, never a traceback.
COMMAND_LINE = _starting_command_line()  # evaluated while `import engine` runs
if COMMAND_LINE and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    try:
        signal.signal(signal.SIGINT, _end_at_once)
    except ValueError:  # not the main thread: take_sigint_while_starting() says no as well
        pass

import threading  # noqa: E402
from typing import Any, NoReturn  # noqa: E402

_BEFORE_EXIT: list[Any] = []


def before_exit(action: Any) -> None:
    """Runs ``action()`` before an interrupted command ends the process with ``os._exit``
    (which runs no ``finally`` and no atexit): what must outlive the command, such as pushing
    its metrics. An action's exception is ignored."""
    _BEFORE_EXIT.append(action)


def _sigint_is_python_default() -> bool:
    return signal.getsignal(signal.SIGINT) is signal.default_int_handler


def take_sigint_while_starting() -> None:
    """Makes a SIGINT during the command line's start end it at once with exit 130 (it has
    written nothing yet). Run when this module is imported, which ``engine/__init__.py`` does
    before anything else. A no-op for library users."""
    if (COMMAND_LINE and threading.current_thread() is threading.main_thread()
            and _sigint_is_python_default()):
        signal.signal(signal.SIGINT, _end_at_once)


def command_started() -> None:
    """Gives SIGINT back to Python's handler once the command line has parsed its arguments
    (the commands that do not write an output handle KeyboardInterrupt themselves)."""
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is _end_at_once):
        signal.signal(signal.SIGINT, signal.default_int_handler)


class CommandInterrupts:
    """SIGINT for a command that writes an output (see the module docstring).

    Pass :meth:`commit` as the ``before_commit`` of the call that writes the output, call
    :meth:`interrupted` when KeyboardInterrupt reaches the command, and :meth:`ignore` when the
    command ends, however it ends.

    A KeyboardInterrupt can be lost on its way: raised inside a weakref callback or a
    ``__del__`` (importlib's module locks have one), Python prints "Exception ignored" and goes
    on. So the handler also records the interrupt: :meth:`commit` raises it again, and such
    reports of it are silenced. And one that passed through ``exec`` of a string (a dataclass
    or namedtuple being made by a lazy import) makes the interpreter kill itself with SIGINT at
    exit whatever the exit code: the command line's process therefore ends an interrupted
    command with ``os._exit``.
    """

    def __init__(self) -> None:
        self._armed = threading.current_thread() is threading.main_thread() and (
            _sigint_is_python_default() or signal.getsignal(signal.SIGINT) is _end_at_once)
        self._pending = False
        self._hook = sys.unraisablehook
        if self._armed:
            signal.signal(signal.SIGINT, self._handler)
            sys.unraisablehook = self._unraisable

    def _handler(self, signum: int, frame: Any) -> None:
        if self._armed:
            self._pending = True
            raise KeyboardInterrupt

    def _unraisable(self, unraisable: Any) -> None:
        if not (self._pending and unraisable.exc_type is KeyboardInterrupt):
            self._hook(unraisable)

    def commit(self) -> None:
        """Called just before the output is committed. A SIGINT that arrived before this call
        is handled as the call starts (Python runs pending handlers on entry to a function) and
        raises here, as does one whose KeyboardInterrupt was lost on its way: either cancels
        the commit. One that arrives later is ignored."""
        self._armed = False
        if self._pending:
            raise KeyboardInterrupt

    def interrupted(self, code: int) -> int:
        """The end of an interrupted command: ``code``, returned, or in the command line's own
        process the process's exit status at once (its work is undone already)."""
        self._armed = False
        if not COMMAND_LINE:
            return code
        for action in _BEFORE_EXIT:
            try:
                action()
            except Exception:  # noqa: BLE001 - the exit code and the one line matter more
                pass
        _end_process(code)

    def ignore(self) -> None:
        """Ignores SIGINT from now until the process ends (the command is over)."""
        self._armed = False
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) == self._handler):
            _ignore_sigint()
        if sys.unraisablehook == self._unraisable:
            sys.unraisablehook = self._after_ignore

    def _after_ignore(self, unraisable: Any) -> None:
        if not _is_sigint_race_report(unraisable):
            self._hook(unraisable)


_RACE_REPORT = f"Signal {int(signal.SIGINT)} ignored due to race condition"


def _end_process(code: int) -> NoReturn:
    """Ends the process at once with ``code`` (no ``finally``, no atexit), its output flushed."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _is_sigint_race_report(unraisable: Any) -> bool:
    return unraisable.exc_type is OSError and str(unraisable.exc_value) == _RACE_REPORT


def _ignore_sigint() -> None:
    """Installs "ignore" for SIGINT without a report of a signal caught meanwhile.

    Python runs the pending handlers and then installs the new action; a SIGINT caught between
    the two finds the action "ignore" and Python prints "Signal 2 ignored due to race
    condition" (seen under the ASan runtime, whose sigaction interceptor widens that instant).
    The main thread blocks SIGINT while it swaps: one that arrives then stays pending in the
    kernel, which drops it once the action is "ignore". (One caught by another thread in that
    instant is still reported: CommandInterrupts silences that report.)"""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def command_over(code: int | None) -> int | None:
    """The command line's command has ended with exit status ``code`` (None: argparse ends it).

    From here SIGINT is ignored: the process only exits, and Python's exit would otherwise put
    back the default action for SIGINT, so a Ctrl-C in its last moments killed a process whose
    command had finished (death by SIGINT instead of its exit status). A command that ends
    interrupted (130) ends the process at once: a KeyboardInterrupt that passed through ``exec``
    on its way makes the interpreter kill itself with SIGINT at exit. Returns ``code``; a no-op
    for library users."""
    if not COMMAND_LINE or threading.current_thread() is not threading.main_thread():
        return code
    while signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        try:
            _ignore_sigint()
        except KeyboardInterrupt:  # pending, raised before the swap: the command is over anyway
            continue
    if code == 130:
        _end_process(code)
    return code


take_sigint_while_starting()
