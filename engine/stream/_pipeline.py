"""Windows of a stream in flight: the calling thread reads and writes them while helper threads
seal or open the ones before, in native code with the GIL released.

The calling thread reads the next run of the stream into a free window and hands it to a helper
(window k to helper k mod helpers), then writes out the oldest window once its helper is done
with it: reading, sealing or opening, and writing overlap, and every core can seal. All I/O
stays on the calling thread, so a read from a pipe or a terminal that never returns, or a
Ctrl-C, concerns that thread alone: a helper only ever waits for its next window, and ends as
soon as it is told to.
"""

from __future__ import annotations

import threading
from collections import deque
from queue import SimpleQueue
from typing import Any, Callable

from ._io import Window

#: read(window) -> (job, last): fills the window on the calling thread; ``last`` ends the stream.
Read = Callable[[Window], "tuple[Any, bool]"]
#: work(window, job) -> result: seals or opens the window (on a helper thread when there are any).
Work = Callable[[Window, Any], Any]
#: emit(window, job, result): writes the window out on the calling thread, in stream order.
Emit = Callable[[Window, Any, Any], None]


def run_windows(chunks: int, read: Read, work: Work, emit: Emit, *, helpers: int) -> None:
    """Runs a stream through windows of ``chunks`` chunks: read, work, emit, in stream order.

    With ``helpers`` > 0, and once the stream turns out to be longer than one window, ``work``
    runs on that many helper threads while the calling thread reads and emits. Windows are
    wiped before this returns or raises.
    """
    windows = [Window(chunks)]
    pool: list[_Helper] = []
    try:
        job, last = read(windows[0])
        if last or not helpers:  # one window, or no helper: read, work, emit in turn
            while True:
                emit(windows[0], job, work(windows[0], job))
                if last:
                    return
                job, last = read(windows[0])
        windows += [Window(chunks) for _ in range(helpers)]
        for _ in range(helpers):
            pool.append(_Helper(work))
        free = deque(windows[1:])
        pending = deque([(windows[0], job, pool[0])])
        pool[0].submit(windows[0], job)
        sent = 1
        while pending:
            while free and not last:
                win = free.popleft()
                job, last = read(win)
                helper = pool[sent % helpers]
                sent += 1
                helper.submit(win, job)
                pending.append((win, job, helper))
            win, job, helper = pending.popleft()
            emit(win, job, helper.result())
            free.append(win)
    finally:
        _close_then_wipe(pool, windows)


def _close_then_wipe(pool: "list[_Helper]", windows: list[Window]) -> None:
    """Stops the helpers, waits until none can write into a window again (a second Ctrl-C
    arriving meanwhile is raised once they have), then wipes every window."""
    interrupted: BaseException | None = None
    for helper in pool:
        helper.stop()
    for helper in pool:
        while True:
            try:
                helper.join()
                break
            except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt: raised below
                interrupted = exc
    for win in windows:
        win.wipe()
    if interrupted is not None:
        raise interrupted


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Helper:
    """A thread that runs ``work`` on the windows submitted to it, one at a time, in order."""

    __slots__ = ("_work", "_jobs", "_results", "_thread")

    def __init__(self, work: Work) -> None:
        self._work = work
        self._jobs: SimpleQueue = SimpleQueue()
        self._results: SimpleQueue = SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="engine-stream", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        work, jobs, results = self._work, self._jobs, self._results
        while (item := jobs.get()) is not None:
            try:
                results.put(work(*item))
            except BaseException as exc:  # handed to the calling thread, raised there
                results.put(_Failed(exc))

    def submit(self, win: Window, job: Any) -> None:
        self._jobs.put((win, job))

    def result(self) -> Any:
        """The result of this helper's oldest window not yet collected (its exception is raised
        here)."""
        result = self._results.get()
        if isinstance(result, _Failed):
            raise result.error
        return result

    def stop(self) -> None:
        """Tells the thread to end once it has finished the windows it holds."""
        self._jobs.put(None)

    def join(self) -> None:
        """Waits for the thread to end (work never blocks on I/O, so this returns promptly)."""
        self._thread.join()
