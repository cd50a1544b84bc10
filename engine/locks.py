"""Locks that a forked child finds unlocked.

``fork()`` copies only the calling thread: a lock that another thread held at that moment stays
held in the child, by a thread that does not exist there, and the child's first use of it waits
forever (a re-encryption worker forked while another thread re-read the key state file, say).
Every lock of the engine is made here, and each one is put back to unlocked in every child
(``os.register_at_fork``), as CPython does for the locks of ``threading`` and ``logging``. What a
lock guarded may be half-updated in the child; the engine's locked sections only fill caches or
replace whole values, which a child re-reads or rebuilds.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Callable

__all__ = ["fork_safe_lock"]

_LOCKS: "weakref.WeakSet[Any]" = weakref.WeakSet()


def fork_safe_lock(kind: Callable[[], Any] = threading.Lock) -> Any:
    """A new lock (``threading.Lock`` by default, or ``threading.RLock``) that is unlocked again
    in every child this process forks."""
    lock = kind()
    _LOCKS.add(lock)
    return lock


def _unlock_in_child() -> None:
    for lock in list(_LOCKS):
        lock._at_fork_reinit()


os.register_at_fork(after_in_child=_unlock_in_child)
