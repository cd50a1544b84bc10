"""Delivering event notifications to a webhook: a JSON POST per event, on a daemon thread, with a
bounded number of attempts, so that a slow or dead endpoint never blocks or fails the caller."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from datetime import datetime, timezone
from typing import Any

from .locks import fork_safe_lock

__all__ = ["Webhook"]


class Webhook:
    """POSTs ``{**payload, "at": <ISO time>}`` as JSON to ``url``.

    Args:
        url: the endpoint.
        timeout: seconds per attempt.
        attempts: tries per event, with exponential backoff from 0.2 s between them.
    """

    __slots__ = ("url", "timeout", "attempts", "_pending", "_lock")

    def __init__(self, url: str, *, timeout: float = 5.0, attempts: int = 3) -> None:
        self.url, self.timeout, self.attempts = url, timeout, attempts
        self._pending: list[threading.Thread] = []
        self._lock = fork_safe_lock()

    def __repr__(self) -> str:
        return f"<Webhook attempts={self.attempts} timeout={self.timeout}>"

    def send(self, payload: dict[str, Any]) -> None:
        """Delivers one event in the background (returns at once)."""
        body = json.dumps({**payload, "at": datetime.now(timezone.utc).isoformat()}).encode()
        thread = threading.Thread(target=self._post, args=(body,), daemon=True,
                                  name="engine-webhook")
        with self._lock:
            self._pending = [t for t in self._pending if t.is_alive()]
            self._pending.append(thread)
        thread.start()

    def _post(self, body: bytes) -> None:
        delay = 0.2
        for attempt in range(self.attempts):
            try:
                req = urllib.request.Request(self.url, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    if 200 <= resp.status < 300:
                        return
            except Exception:  # noqa: BLE001 - a notification must never fail its caller
                pass
            if attempt + 1 < self.attempts:
                time.sleep(delay)
                delay *= 2

    def wait(self, timeout: float | None = None) -> None:
        """Waits for the deliveries under way (tests, and a clean shutdown)."""
        with self._lock:
            pending = list(self._pending)
        for thread in pending:
            thread.join(timeout)
        with self._lock:
            self._pending = [t for t in self._pending if t.is_alive()]
