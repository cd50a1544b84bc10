"""Forking while other threads run: what the engine's fork safety is tested with."""

from __future__ import annotations

import os
import threading
import time
from typing import Callable


def fork_while_busy(busy: Callable[[], None], in_child: Callable[[], None], forks: int,
                    what: str, timeout: float = 20.0) -> None:
    """Calls ``busy`` without pause on another thread while forking ``forks`` children that
    each call ``in_child`` once and exit; fails naming ``what`` if a child does not finish
    within ``timeout`` seconds (it would be waiting on a lock held at fork time)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            busy()

    t = threading.Thread(target=loop)
    t.start()
    try:
        for _ in range(forks):
            pid = os.fork()
            if pid == 0:
                try:
                    in_child()
                finally:
                    os._exit(0)
            deadline = time.monotonic() + timeout
            while not os.waitpid(pid, os.WNOHANG)[0]:
                assert time.monotonic() < deadline, f"a forked child hung on {what}"
                time.sleep(0.001)
    finally:
        stop.set()
        t.join()
