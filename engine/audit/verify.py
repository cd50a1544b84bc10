"""Checking the audit trail: :func:`verify` walks the chain and checks it against its anchors."""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator, Mapping

from .format import (
    AUDIT_HEAD_RECREATED,
    AUDIT_LOG_TRUNCATED,
    GENESIS,
    HEAD_SLOT_BYTES,
    AuditError,
    AuditHead,
    AuditLogUnreadable,
    HeadRecord,
    chain_link,
    check_key,
    head_path,
    parse_line,
    read_head,
    read_lines,
    same_mac,
)

MAX_PROBLEMS = 100


@dataclass(frozen=True)
class VerificationResult:
    """What :func:`verify` found.

    Attributes:
        entries: lines read.
        problems: (line number, reason), in file order; a problem with the end of the log (the
            newest entries removed, a missing head) is reported at the line after the last.
        head: the newest entry that authenticated (store it elsewhere as an anchor), or None.
        wrong_key: not one entry (nor the head record) authenticates under the key given: the
            key is not the one the log was written with (or every entry was replaced); the
            problems say so once instead of naming every line as edited.
    """

    entries: int
    problems: list[tuple[int, str]] = field(default_factory=list)
    head: AuditHead | None = None
    wrong_key: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_line(self) -> int | None:
        return self.problems[0][0] if self.problems else None


_RECORDED_DAMAGE = {
    AUDIT_LOG_TRUNCATED: "a writer found the log shorter than its head record here (truncated)",
    AUDIT_HEAD_RECREATED: "a writer found no valid head record beside the log here: older "
                          "entries could have been removed",
}


def verify(path: str | os.PathLike[str], key: bytes, *,
           expect_head: AuditHead | Mapping[str, Any] | str | None = None) -> VerificationResult:
    """Recomputes the HMAC chain of an audit log and checks it against its head record.

    Every problem is reported, not only the first: after a line that is not an entry the chain
    continues from the last good one, after any other problem from the line's own entry. A log
    that writers are appending to is checked as it was when the call began.

    Args:
        path: the log; its head record is read from ``path + ".head"``.
        key: the HMAC key.
        expect_head: an anchor kept elsewhere (a former ``result.head``, as an
            :class:`AuditHead`, its ``{"seq", "mac"}`` dict or its ``"SEQ:MAC"`` string): the
            log must hold that entry, unchanged.

    Returns:
        A :class:`VerificationResult`. An edited line fails its MAC; a deleted, inserted or moved
        line breaks the sequence or the chain; a line that is not an entry (garbled, torn,
        blank, nested too deeply) is named as such; newest entries removed (or an emptied log)
        fall short of the head record or ``expect_head``; a missing or invalid head record
        beside a non-empty log is a problem.

    Raises:
        InvalidArgument: a short key or a malformed ``expect_head``.
        AuditLogUnreadable: neither the log nor its head exists, or the log cannot be read.
    """
    key = check_key(key)
    anchors: dict[str, AuditHead] = {}
    if expect_head is not None:
        anchors["the expected head"] = AuditHead.parse(expect_head)
    failure = None
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        f = None
    except OSError as exc:
        failure = exc.strerror or type(exc).__name__
    if failure is not None:
        raise AuditLogUnreadable(f"cannot read the audit log {os.fspath(path)}: {failure}")
    try:
        head, head_exists, size = _snapshot(key, path, f)
        if f is None and not head_exists and expect_head is None:
            raise AuditLogUnreadable(f"no audit log at {os.fspath(path)}")
        if head is not None:
            anchors["the head record"] = AuditHead(head.seq, head.mac)
        walk = _ChainWalk(key, anchors)
        if f is not None:
            walk.run(read_lines(f, size))
    finally:
        if f is not None:
            f.close()
    return walk.result(head_exists and head is None, not head_exists)


def _snapshot(key: bytes, path: str | os.PathLike[str], f: BinaryIO | None
              ) -> tuple[HeadRecord | None, bool, int]:
    """(head record, whether a head file exists, the log's size), read together under a shared
    lock: writers append a line and then its head while holding the lock exclusively."""
    if f is not None:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)
    try:
        size = os.fstat(f.fileno()).st_size if f is not None else 0
        try:
            with open(head_path(path), "rb") as h:
                return read_head(key, h.read(2 * HEAD_SLOT_BYTES)), True, size
        except FileNotFoundError:
            return None, False, size
    finally:
        if f is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class _ChainWalk:
    """One pass over a log's lines for :func:`verify`."""

    def __init__(self, key: bytes, anchors: dict[str, AuditHead]) -> None:
        self.key = key
        self.anchors = anchors
        self.found: dict[str, tuple[int, bool]] = {}  # anchor -> (line, whether the MAC matches)
        self.problems: list[tuple[int, str]] = []
        self.prev, self.expected_seq, self.lines = GENESIS, 1, 0
        self.newest: AuditHead | None = None
        self.failed_macs = 0  # entries of our shape whose MAC does not match

    def run(self, lines: Iterator[bytes | None]) -> None:
        for raw in lines:
            self.lines += 1
            if len(self.problems) >= MAX_PROBLEMS:
                self.problems.append((self.lines, "too many problems: verification stopped here"))
                return
            self.check(self.lines, parse_line(raw))

    def check(self, number: int, entry: dict[str, Any] | None) -> None:
        if entry is None:
            self.problems.append((number, "not a valid audit entry"))
            return
        link = chain_link(self.key, entry)
        if link is None:
            self.failed_macs += 1
            self.problems.append((number, "MAC mismatch: the entry was edited"))
            mac = entry.get("mac")
            self.prev, self.expected_seq = mac if isinstance(mac, str) else "", self.expected_seq + 1
            return
        seq, mac = link
        if seq != self.expected_seq:
            self.problems.append(
                (number, f"chain broken: expected entry {self.expected_seq}, found {seq} "
                         "(an entry was deleted, inserted or moved)")
            )
        elif not same_mac(self.prev, entry["prev"]):
            self.problems.append(
                (number, f"chain broken: entry {seq} does not link to the entry before it (a "
                         "line from another log under the same key, or the line before it "
                         "replaced)")
            )
        if entry.get("event") in _RECORDED_DAMAGE:
            self.problems.append((number, _RECORDED_DAMAGE[entry["event"]]))
        for name, anchor in self.anchors.items():
            if anchor.seq == seq and name not in self.found:
                self.found[name] = (number, same_mac(anchor.mac, mac))
        self.prev, self.expected_seq = mac, seq + 1
        self.newest = AuditHead(seq, mac)

    def result(self, head_invalid: bool, head_missing: bool) -> VerificationResult:
        if self.failed_macs and self.newest is None and (head_invalid or head_missing):
            # Nothing authenticates, the head record included: the key is not the log's (one
            # edited entry leaves the others and the head authenticating).
            return VerificationResult(
                entries=self.lines, problems=[(1, (
                    f"the key does not match the one this log was written with: none of its "
                    f"{self.failed_macs} entries nor its head record authenticates under it "
                    f"(another master key or audit key?), unless every entry was replaced"))],
                head=None, wrong_key=True)
        end = self.lines + 1
        if len(self.problems) <= MAX_PROBLEMS:
            for name, anchor in self.anchors.items():
                if anchor.seq == 0:
                    continue
                if name in self.found:
                    line, matches = self.found[name]
                    if not matches:
                        self.problems.append(
                            (line, f"entry {anchor.seq} differs from {name}: the log was rewritten"))
                elif self.newest is None or self.newest.seq < anchor.seq:
                    self.problems.append(
                        (end, f"the log ends before entry {anchor.seq}, named by {name}: "
                              "its newest entries were removed (truncated)"))
                else:
                    self.problems.append((end, f"entry {anchor.seq}, named by {name}, is missing"))
            if head_invalid and self.lines:
                self.problems.append((end, "the head record is damaged or was written under "
                                           "another key: truncation cannot be ruled out"))
            elif head_missing and self.lines:
                self.problems.append((end, "no head record beside the log (written before head "
                                           "records existed, or deleted): truncation cannot be "
                                           "ruled out"))
        return VerificationResult(entries=self.lines, problems=self.problems, head=self.newest)


def read_entries(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The entries of an audit log, unverified (use :func:`verify` first when it matters).

    Raises:
        AuditError: a line is not a JSON object (the message gives its number).
    """
    with open(path, "rb") as f:
        for number, raw in enumerate(read_lines(f), start=1):
            entry = parse_line(raw)
            if entry is None:
                raise AuditError(f"line {number} of {os.fspath(path)} is not an audit entry")
            yield entry
