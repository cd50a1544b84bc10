"""The audit trail on disk: entries (one JSON object a line, chained by HMAC-SHA256) and the head
record beside the log (two fixed-size slots, each under an HMAC of the same key)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator, Mapping, NamedTuple

from ..errors import EngineError, InvalidArgument

KEY_ACCESS = "KEY_ACCESS"
KEY_ROTATION = "KEY_ROTATION"
KEY_ROTATION_FAILED = "KEY_ROTATION_FAILED"
REENCRYPTION_STARTED = "REENCRYPTION_STARTED"
REENCRYPTION_COMPLETED = "REENCRYPTION_COMPLETED"
KEY_DEPRECATED = "KEY_DEPRECATED"
KEY_PURGED = "KEY_PURGED"
# written by the audit log itself when it finds damage (see the package's docstring)
AUDIT_LOG_TRUNCATED = "AUDIT_LOG_TRUNCATED"
AUDIT_HEAD_RECREATED = "AUDIT_HEAD_RECREATED"

GENESIS = "0" * 64
MIN_KEY_BYTES = 32
MAX_LINE_BYTES = 1 << 20
HEAD_SUFFIX = ".head"
HEAD_SLOT_BYTES = 256

_HEAD_DOMAIN = b"engine audit head\n"
_MAC_TEXT = re.compile(r"[0-9a-f]{64}")


class AuditError(EngineError):
    """The audit log cannot be written or read."""


class AuditLogUnreadable(AuditError):
    """The audit log to verify is missing or cannot be read (the command line exits 5)."""


@dataclass(frozen=True)
class AuditHead:
    """An entry of the chain as an anchor: its sequence number and MAC.

    ``str(head)`` is ``"SEQ:MAC"``, the form ``crypto-engine audit-verify --expect-head`` takes.
    """

    seq: int
    mac: str

    @classmethod
    def parse(cls, value: Any) -> AuditHead:
        """An :class:`AuditHead` from itself, ``{"seq": ..., "mac": ...}`` or ``"SEQ:MAC"``.

        Raises:
            InvalidArgument: anything else, a negative sequence number or a MAC that is not 64
                lowercase hexadecimal digits.
        """
        seq: object
        mac: object
        if isinstance(value, AuditHead):
            seq, mac = value.seq, value.mac
        elif isinstance(value, Mapping) and set(value) == {"seq", "mac"}:
            seq, mac = value["seq"], value["mac"]
        elif isinstance(value, str) and value.count(":") == 1:
            text, mac = value.split(":")
            seq = int(text) if text.isascii() and text.isdigit() and len(text) <= 20 else None
        else:
            seq = mac = None
        if type(seq) is not int or seq < 0 or not isinstance(mac, str) or not _MAC_TEXT.fullmatch(mac):
            raise InvalidArgument(
                "an audit head is a sequence number and a 64-digit hex MAC: "
                '{"seq": N, "mac": "..."} or "N:MAC"'
            )
        return cls(seq, mac)

    def __str__(self) -> str:
        return f"{self.seq}:{self.mac}"


class HeadRecord(NamedTuple):
    """What the head record holds: the newest entry and the log's length in bytes after it."""

    seq: int
    mac: str
    size: int


def head_path(path: str | os.PathLike[str]) -> str:
    """Where the head record of the audit log at ``path`` is kept: ``<path>.head``."""
    return os.fspath(path) + HEAD_SUFFIX


def check_key(key: bytes) -> bytes:
    """The HMAC key as bytes.

    Raises:
        InvalidArgument: not bytes, or shorter than 32 bytes.
    """
    if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_BYTES:
        raise InvalidArgument(f"the audit HMAC key must be at least {MIN_KEY_BYTES} bytes")
    return bytes(key)


def same_mac(expected: str, found: Any) -> bool:
    """Constant-time comparison of a MAC we computed with one read from a file (any JSON value)."""
    if not isinstance(found, str):
        return False
    return hmac.compare_digest(expected.encode(), found.encode("utf-8", "surrogatepass"))


def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


# ---- entries ----

def entry_mac(key: bytes, prev: str, body: Mapping[str, Any]) -> str:
    """The MAC of an entry: HMAC-SHA256 over the previous MAC and the canonical JSON of every
    field but ``mac``.

    Raises:
        TypeError, ValueError, RecursionError: ``body`` cannot be written as JSON.
    """
    return hmac.new(key, prev.encode() + b"\n" + _canonical(body), hashlib.sha256).hexdigest()


def parse_line(raw: bytes | None) -> dict[str, Any] | None:
    """A line as a JSON object, or None: not JSON, not an object, or nested too deeply to read
    (``json`` raises RecursionError beyond the interpreter's recursion limit)."""
    if raw is None:
        return None
    try:
        entry = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return entry if isinstance(entry, dict) else None


def chain_link(key: bytes, entry: dict[str, Any]) -> tuple[int, str] | None:
    """(seq, mac) of an entry whose MAC is right and whose shape is the one we write, else None."""
    body = {name: value for name, value in entry.items() if name != "mac"}
    seq, prev, mac = body.get("seq"), body.get("prev"), entry.get("mac")
    if type(seq) is not int or seq < 1 or not isinstance(prev, str):
        return None
    try:
        expected = entry_mac(key, prev, body)
    except (ValueError, RecursionError):  # lone surrogates; nesting json can read but not write
        return None
    return (seq, mac) if isinstance(mac, str) and same_mac(expected, mac) else None


def read_lines(f: BinaryIO, end: int | None = None) -> Iterator[bytes | None]:
    """The lines of ``f`` from its position up to byte ``end``; None for a line longer than any
    entry we write (read in pieces, so a huge line of garbage never sits in memory whole)."""
    pos = f.tell()

    def piece(limit: int) -> bytes:
        nonlocal pos
        raw = f.readline(limit if end is None else min(limit, end - pos))
        pos += len(raw)
        return raw

    while end is None or pos < end:
        raw = piece(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) <= MAX_LINE_BYTES:
            yield raw
            continue
        while raw and not raw.endswith(b"\n"):
            raw = piece(MAX_LINE_BYTES)
        yield None


# ---- the head record ----

def _head_mac(key: bytes, seq: int, mac: str, size: int) -> str:
    body = _canonical({"seq": seq, "mac": mac, "size": size})
    return hmac.new(key, _HEAD_DOMAIN + body, hashlib.sha256).hexdigest()


def head_slot(key: bytes, head: HeadRecord) -> tuple[int, bytes]:
    """(offset, bytes) of the slot that records ``head``: slot ``seq % 2``, so that a torn
    write leaves the previous head readable in the other slot."""
    record = {**head._asdict(), "hmac": _head_mac(key, *head)}
    text = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    return head.seq % 2 * HEAD_SLOT_BYTES, text.ljust(HEAD_SLOT_BYTES - 1) + b"\n"


def _read_slot(key: bytes, raw: bytes) -> HeadRecord | None:
    record = parse_line(raw)
    if record is None or set(record) != {"seq", "mac", "size", "hmac"}:
        return None
    seq, mac, size = record["seq"], record["mac"], record["size"]
    if (type(seq) is not int or type(size) is not int or seq < 0 or size < 0
            or not isinstance(mac, str) or not _MAC_TEXT.fullmatch(mac)):
        return None
    if not same_mac(_head_mac(key, seq, mac, size), record["hmac"]):
        return None
    return HeadRecord(seq, mac, size)


def read_head(key: bytes, data: bytes) -> HeadRecord | None:
    """The newer of the two slots in ``data`` that authenticate, or None."""
    slots = [_read_slot(key, data[i:i + HEAD_SLOT_BYTES])
             for i in range(0, min(len(data), 2 * HEAD_SLOT_BYTES), HEAD_SLOT_BYTES)]
    valid = [slot for slot in slots if slot is not None]
    return max(valid, key=lambda slot: slot.seq) if valid else None
