"""Writing the audit trail: :class:`AuditLog` appends chained entries and keeps the head record."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from datetime import datetime, timezone
from typing import Any

from ..atomic_file import fsync_directory
from ..errors import InvalidArgument
from ..locks import fork_safe_lock
from .format import (
    AUDIT_HEAD_RECREATED,
    AUDIT_LOG_TRUNCATED,
    GENESIS,
    HEAD_SLOT_BYTES,
    KEY_ACCESS,
    MAX_LINE_BYTES,
    AuditError,
    HeadRecord,
    chain_link,
    check_key,
    entry_mac,
    head_path,
    head_slot,
    parse_line,
    read_head,
    read_lines,
    same_mac,
)

_log = logging.getLogger("engine.audit")


def _check_details(details: dict[str, Any]) -> None:
    for name, value in details.items():
        if isinstance(value, (bytes, bytearray, memoryview)):
            raise InvalidArgument(
                f"audit detail {name!r} is binary; audit entries never carry key material or data"
            )


class AuditLog:
    """Appends chained entries to ``path`` and keeps its head record in ``path + ".head"``
    (both created with mode 0600 when missing). See :mod:`engine.audit` for what a writer does
    with a truncated log, a missing head or a garbled line.

    Args:
        path: the JSON Lines file.
        key: HMAC key (32+ bytes), from the key provider; never written anywhere.
        fsync: fsync the log after each append (on by default: an audit entry is worth a disk
            flush). The head record is written after the log line and not flushed on its own: a
            head that lags behind a crash is caught up by the next writer (the line after it
            chains on), so one flush per entry keeps both.

    Raises:
        InvalidArgument: a key shorter than 32 bytes.
    """

    __slots__ = ("path", "_head_path", "_key", "_fsync", "_lock", "_identity", "__weakref__")

    def __init__(self, path: str | os.PathLike[str], key: bytes, *, fsync: bool = True) -> None:
        self.path = os.fspath(path)
        self._head_path = head_path(self.path)
        self._key = check_key(key)
        self._fsync = fsync
        self._lock = fork_safe_lock()
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
            InvalidArgument: a binary or unserialisable detail, or an entry over 1 MiB.
            AuditError: the log or its head cannot be written.
        """
        _check_details(details)
        with self._lock:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError as exc:
                raise AuditError(f"cannot open the audit log {self.path}: {exc.strerror}") from None
            head_fd = -1
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                head_fd = os.open(self._head_path, os.O_RDWR | os.O_CREAT, 0o600)
                return self._append(fd, head_fd, event, details)
            except OSError as exc:
                problem = f"cannot append to the audit log {self.path}: {exc.strerror or exc}"
            finally:
                if head_fd >= 0:
                    os.close(head_fd)
                # Unlock before closing: a child forked during the append holds a copy of this
                # descriptor, and the lock would otherwise last until both copies are closed.
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            raise AuditError(problem)

    def key_access(self, key_version: int, operation: str, records: int = 1) -> dict[str, Any]:
        """One entry per key use: per batch, not per record."""
        return self.record(KEY_ACCESS, key_version=key_version, operation=operation, records=records)

    def _append(self, fd: int, head_fd: int, event: str, details: dict[str, Any]) -> dict[str, Any]:
        size = os.fstat(fd).st_size
        seq, mac, notes, newline = self._position(fd, head_fd, size)
        data = bytearray(b"\n" if newline else b"")
        entry: dict[str, Any] = {}
        for name, facts in [*notes, (event, details)]:
            entry, line = self._entry(seq + 1, mac, name, facts)
            data += line
            seq, mac = entry["seq"], entry["mac"]
        if os.write(fd, data) != len(data):
            raise OSError(0, "short write (disk full?)")  # a torn line, written past next time
        if self._fsync:
            os.fsync(fd)
        self._write_head(head_fd, HeadRecord(seq, mac, size + len(data)))
        return entry

    def _entry(self, seq: int, prev: str, event: str, details: dict[str, Any]
               ) -> tuple[dict[str, Any], bytes]:
        """The entry and its line."""
        body = {
            "seq": seq,
            "ts": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "event": event,
            "pid": os.getpid(),
            **self._identity,
            "details": details,
            "prev": prev,
        }
        try:
            entry = {**body, "mac": entry_mac(self._key, prev, body)}
            line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        except (TypeError, ValueError, RecursionError) as exc:
            problem = f"audit details must be JSON-serialisable: {exc}"
        else:
            if len(line) <= MAX_LINE_BYTES:
                return entry, line
            problem = f"an audit entry must be at most {MAX_LINE_BYTES} bytes"
        raise InvalidArgument(problem)

    def _write_head(self, head_fd: int, head: HeadRecord, *, durable: bool = False) -> None:
        offset, slot = head_slot(self._key, head)
        os.pwrite(head_fd, slot, offset)
        if durable and self._fsync:
            os.fsync(head_fd)

    def _position(self, fd: int, head_fd: int, size: int
                  ) -> tuple[int, str, list[tuple[str, dict[str, Any]]], bool]:
        """Where the next entry goes: (seq, mac) to continue from, the entries that report what
        was found, to be written first, and whether the file needs a newline before them."""
        head_bytes = os.pread(head_fd, 2 * HEAD_SLOT_BYTES, 0)
        head = read_head(self._key, head_bytes)
        if head is not None and size == head.size:
            return head.seq, head.mac, [], False
        ends_in_newline = size == 0 or os.pread(fd, 1, size - 1) == b"\n"
        if head is not None and size > head.size:
            seq, mac = self._last_entry(fd, head.size, head.seq, head.mac, chained=True)
            return seq, mac, [], not ends_in_newline
        if head is not None:
            _log.warning("audit log %s is shorter than its head record (entry %d): truncated; "
                         "continuing the chain from the head", self.path, head.seq)
            found: dict[str, Any] = {"head_seq": head.seq, "head_bytes": head.size,
                                     "log_bytes": size}
            return head.seq, head.mac, [(AUDIT_LOG_TRUNCATED, found)], not ends_in_newline
        if size == 0:
            # A new log gets its head before its first line, so that no crash can leave lines
            # without one (which would look like a deleted head).
            self._write_head(head_fd, HeadRecord(0, GENESIS, 0), durable=True)
            self._sync_directory()
            return 0, GENESIS, [], False
        reason = "invalid" if head_bytes else "missing"
        _log.warning("audit log %s has a %s head record; continuing from its last authentic entry",
                     self.path, reason)
        seq, mac = self._last_entry(fd, 0, 0, GENESIS, chained=False)
        recreated: dict[str, Any] = {"head": reason, "log_bytes": size, "continued_from_seq": seq}
        return seq, mac, [(AUDIT_HEAD_RECREATED, recreated)], not ends_in_newline

    def _last_entry(self, fd: int, start: int, seq: int, mac: str, *, chained: bool
                    ) -> tuple[int, str]:
        """The last authentic entry from byte ``start`` on (that continues the chain from
        (seq, mac), when ``chained``), else (seq, mac)."""
        with os.fdopen(os.dup(fd), "rb") as f:
            f.seek(start)
            for raw in read_lines(f):
                entry = parse_line(raw)
                if entry is None:
                    continue
                link = chain_link(self._key, entry)
                if link is None or (chained and (link[0] != seq + 1
                                                 or not same_mac(mac, entry["prev"]))):
                    continue
                seq, mac = link
        return seq, mac

    def _sync_directory(self) -> None:
        if self._fsync:
            fsync_directory(os.path.dirname(os.path.abspath(self.path)))
