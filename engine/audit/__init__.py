"""Tamper-evident audit trail: an append-only JSON Lines file whose entries are chained by HMAC,
anchored by a head record kept beside it.

Each line holds a sequence number, the previous entry's MAC and its own MAC, an HMAC-SHA256 over
the previous MAC and the entry's canonical JSON (every field but ``mac``). :func:`verify`
recomputes the chain and names each line that was edited, deleted, inserted or moved. Entries
describe key use and lifecycle events; callers never pass key material or plaintext, and values
that are bytes are refused.

A chain alone cannot show that its newest entries were removed: a shorter chain is still a valid
chain. So every append also writes a head record, ``<log>.head``: the last entry's sequence
number and MAC and the log's length in bytes after it, under an HMAC of the same key. It holds two
fixed-size slots, written alternately by sequence parity, so a write torn by a crash leaves the
previous head readable in the other slot. The log line is written (and fsynced) first, the head
after it, both while the append holds ``flock`` on the log, so the head never runs ahead of the
log; the head is not flushed on its own (one flush per entry): one that a crash left behind the
log is caught up by the next writer, as the lines after it chain on. Decisions:

- A writer reads the head, not the log's last line. When the log is exactly as long as the head
  says, it continues from the head. When the log is longer (a writer died between its two
  writes, a torn or garbled line, bytes appended by something else), the entries after the head's
  length that continue the chain are adopted and anything else is left where it is: the writer
  starts its line with a newline when the file does not end in one, and carries on. Nothing
  wedges the log; :func:`verify` reports the bad line.
- When the log is shorter than its head (truncated, emptied, replaced), the writer continues the
  chain from the head, not from what is left, and first appends an ``AUDIT_LOG_TRUNCATED`` entry
  saying what it found: the gap stays in the log and :func:`verify` reports it from then on.
- When the head is missing or invalid beside a non-empty log (a log written before head records
  existed, a deleted or damaged head, another key), the writer continues from the log's last
  entry that authenticates and first appends an ``AUDIT_HEAD_RECREATED`` entry. The two cases
  cannot be told apart, and the second could hide a truncation, so :func:`verify` reports the
  missing head while it is missing and that entry for ever after. A log from before this change
  is best verified once as it is and then moved away (with its head) so that a new log starts.
- Damage is never repaired away: what a writer finds wrong stays visible to :func:`verify`.
- Rotate a log by moving it together with its head; a writer then starts a new chain.

Anyone who can write the directory can put back an older genuine head together with a log cut to
match it; only an anchor kept elsewhere rules that out. ``verify(...).head`` (printed by
``crypto-engine audit-verify``) is the newest entry's sequence number and MAC: store it
somewhere the log's host cannot write, and pass it back as ``verify(path, key, expect_head=...)``
(``--expect-head``): the log must still hold that entry, unchanged.
"""

from __future__ import annotations

from .format import (
    AUDIT_HEAD_RECREATED,
    AUDIT_LOG_TRUNCATED,
    GENESIS,
    HEAD_SLOT_BYTES,
    KEY_ACCESS,
    KEY_DEPRECATED,
    KEY_PURGED,
    KEY_ROTATION,
    KEY_ROTATION_FAILED,
    MAX_LINE_BYTES,
    REENCRYPTION_COMPLETED,
    REENCRYPTION_STARTED,
    AuditError,
    AuditHead,
    AuditLogUnreadable,
    head_path,
)
from .log import AuditLog
from .verify import MAX_PROBLEMS, VerificationResult, read_entries, verify

__all__ = [
    "AUDIT_HEAD_RECREATED",
    "AUDIT_LOG_TRUNCATED",
    "AuditError",
    "AuditHead",
    "AuditLog",
    "AuditLogUnreadable",
    "GENESIS",
    "HEAD_SLOT_BYTES",
    "KEY_ACCESS",
    "KEY_DEPRECATED",
    "KEY_PURGED",
    "KEY_ROTATION",
    "KEY_ROTATION_FAILED",
    "MAX_LINE_BYTES",
    "MAX_PROBLEMS",
    "REENCRYPTION_COMPLETED",
    "REENCRYPTION_STARTED",
    "VerificationResult",
    "head_path",
    "read_entries",
    "verify",
]
