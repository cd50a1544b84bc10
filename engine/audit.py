"""Tamper-evident audit trail: an append-only JSON Lines file whose entries are chained by HMAC.

Each line holds a sequence number, the previous entry's MAC and its own MAC, an HMAC-SHA256 over
the previous MAC and the entry's canonical JSON. :func:`verify` recomputes the chain and names the
first line that was edited, deleted, inserted or moved. Entries describe key use and lifecycle
events; callers never pass key material or plaintext, and values that are bytes are refused.

Appends from several processes are serialised with ``flock`` on the file itself; each append reads
the file's last line only when another writer has grown the file since our last append.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

from .errors import EngineError, InvalidArgument

__all__ = [
    "AuditError",
    "AuditLog",
    "KEY_ACCESS",
    "KEY_DEPRECATED",
    "KEY_ROTATION",
    "KEY_ROTATION_FAILED",
    "REENCRYPTION_COMPLETED",
    "REENCRYPTION_STARTED",
    "VerificationResult",
    "verify",
]

KEY_ACCESS = "KEY_ACCESS"
KEY_ROTATION = "KEY_ROTATION"
KEY_ROTATION_FAILED = "KEY_ROTATION_FAILED"
REENCRYPTION_STARTED = "REENCRYPTION_STARTED"
REENCRYPTION_COMPLETED = "REENCRYPTION_COMPLETED"
KEY_DEPRECATED = "KEY_DEPRECATED"

GENESIS = "0" * 64
MIN_KEY_BYTES = 32


class AuditError(EngineError):
    """The audit log cannot be written or read."""


def _mac(key: bytes, prev: str, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key, prev.encode() + b"\n" + canonical.encode(), hashlib.sha256).hexdigest()


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_BYTES:
        raise InvalidArgument(f"the audit HMAC key must be at least {MIN_KEY_BYTES} bytes")
    return bytes(key)


def _check_details(details: dict[str, Any]) -> None:
    for name, value in details.items():
        if isinstance(value, (bytes, bytearray, memoryview)):
            raise InvalidArgument(
                f"audit detail {name!r} is binary; audit entries never carry key material or data"
            )


class AuditLog:
    """Appends chained entries to ``path`` (created with mode 0600 when missing).

    Args:
        path: the JSON Lines file.
        key: HMAC key (32+ bytes), from the key provider; never written anywhere.
        fsync: fsync after each append (on by default: an audit entry is worth a disk flush).

    Raises:
        InvalidArgument: a key shorter than 32 bytes.
    """

    __slots__ = ("path", "_key", "_fsync", "_lock", "_last_mac", "_last_seq", "_size", "_identity")

    def __init__(self, path: str | os.PathLike[str], key: bytes, *, fsync: bool = True) -> None:
        self.path = os.fspath(path)
        self._key = _check_key(key)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._last_mac = GENESIS
        self._last_seq = 0
        self._size = -1
        self._identity = {"host": socket.gethostname()}

    def __repr__(self) -> str:
        return f"<AuditLog path={self.path!r}>"

    def __reduce__(self):
        raise TypeError("AuditLog holds an HMAC key and cannot be pickled")

    def record(self, event: str, **details: Any) -> dict[str, Any]:
        """Appends one entry and returns it.

        Args:
            event: ``KEY_ACCESS``, ``KEY_ROTATION`` and the other event names.
            details: JSON-serialisable facts (key_version, operation, records, ...).

        Raises:
            InvalidArgument: a binary detail value.
            AuditError: the file cannot be written.
        """
        _check_details(details)
        with self._lock:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError as exc:
                raise AuditError(f"cannot open the audit log {self.path}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                if size != self._size:
                    self._last_seq, self._last_mac = _tail(self.path)
                body = {
                    "seq": self._last_seq + 1,
                    "ts": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                    "event": event,
                    "pid": os.getpid(),
                    **self._identity,
                    "details": details,
                    "prev": self._last_mac,
                }
                mac = _mac(self._key, self._last_mac, body)
                line = (json.dumps({**body, "mac": mac}, sort_keys=True) + "\n").encode()
                os.write(fd, line)
                if self._fsync:
                    os.fsync(fd)
                self._last_seq, self._last_mac, self._size = body["seq"], mac, size + len(line)
                return {**body, "mac": mac}
            except (OSError, TypeError, ValueError) as exc:
                raise AuditError(f"cannot append to the audit log {self.path}: {exc}") from None
            finally:
                os.close(fd)

    def key_access(self, key_version: int, operation: str, records: int = 1) -> dict[str, Any]:
        """One entry per key use: per batch, not per record."""
        return self.record(KEY_ACCESS, key_version=key_version, operation=operation, records=records)


def _tail(path: str) -> tuple[int, str]:
    """(seq, mac) of the last complete line, or (0, GENESIS) for an empty file."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        block = 4096
        pos = end
        data = b""
        while pos > 0:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
            lines = data.rstrip(b"\n").split(b"\n")
            if len(lines) > 1 or pos == 0:
                last = lines[-1]
                if not last:
                    return 0, GENESIS
                try:
                    entry = json.loads(last)
                    return int(entry["seq"]), str(entry["mac"])
                except (ValueError, KeyError, TypeError):
                    raise AuditError(
                        f"the last line of {path} is not an audit entry; run verify"
                    ) from None
    return 0, GENESIS


@dataclass(frozen=True)
class VerificationResult:
    """What :func:`verify` found. ``problems`` lists (line number, reason), first problem first."""

    entries: int
    problems: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_line(self) -> int | None:
        return self.problems[0][0] if self.problems else None


def verify(path: str | os.PathLike[str], key: bytes) -> VerificationResult:
    """Recomputes the HMAC chain of an audit log.

    Returns:
        A :class:`VerificationResult`; an edited line fails its MAC, a deleted, inserted or moved
        line breaks the sequence or the chain at the line where it happened.
    """
    key = _check_key(key)
    problems: list[tuple[int, str]] = []
    prev, expected_seq, count = GENESIS, 1, 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            count += 1
            try:
                entry = json.loads(raw)
                mac = entry.pop("mac")
                seq = entry["seq"]
            except (ValueError, KeyError, TypeError, AttributeError):
                problems.append((number, "not a valid audit entry"))
                break
            if not hmac.compare_digest(_mac(key, entry.get("prev", ""), entry), str(mac)):
                problems.append((number, "MAC mismatch: the entry was edited"))
                break
            if seq != expected_seq or not hmac.compare_digest(str(entry["prev"]), prev):
                problems.append(
                    (number, f"chain broken: expected entry {expected_seq}, found {seq} "
                             "(an entry was deleted, inserted or moved)")
                )
                break
            prev, expected_seq = str(mac), seq + 1
    return VerificationResult(entries=count, problems=problems)


def read_entries(path: str | os.PathLike[str]) -> Iterable[dict[str, Any]]:
    """The entries of an audit log, unverified (use :func:`verify` first when it matters)."""
    with open(path, "rb") as f:
        for raw in f:
            yield json.loads(raw)
