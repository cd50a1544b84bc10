"""The JSON envelope, one value at a time (:class:`EncryptedData`), and its text-token form.

The shape a TypeScript service on Node.js ``crypto`` reads and writes (``tests/node/interop.js``
is such a peer)::

    {"iv": b64, "ciphertext": b64, "authTag": b64, "keyVersion": 3,
     "timestamp": "2026-01-31T12:00:00.000Z", "algorithm": "aes-256-gcm"}

Standard base64 with padding; the AAD is only the caller's. Members that are not the engine's
are kept where a value is rewritten (:mod:`engine.formats.json_extras`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..aead import TAG_BYTES
from .wire import (
    _NOT_JSON,
    ALGORITHM,
    ALGORITHM_IV_BYTES,
    BOUND_FORMATS,
    FORMAT_ALGORITHMS,
    FORMAT_IV_BYTES,
    FORMAT_OVERHEAD,
    FORMATS,
    HEADER_BYTES,
    MAGIC,
    MAX_KEY_VERSION,
    OVERHEAD,
    TEXT_PREFIX,
    EnvelopeError,
    InvalidBase64,
    InvalidLength,
    MalformedEnvelope,
    UnknownFormat,
    token_aad,
    token_format,
    token_header,
)

__all__ = [
    "EncryptedData",
    "is_text_token",
]


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _unb64(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise MalformedEnvelope(f"{name!r} must be a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidBase64(f"{name!r} is not valid base64") from None
    if _b64(raw) != value:
        raise InvalidBase64(f"{name!r} is not canonical base64")
    return raw


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _text_to_binary(token: str) -> bytes:
    if not token.startswith(TEXT_PREFIX):
        if token.startswith("ef"):
            raise UnknownFormat("unknown token prefix (expected 'ef1:')")
        raise MalformedEnvelope("not an engine token (expected the prefix 'ef1:')")
    body = token[len(TEXT_PREFIX):]
    if not _B64URL.fullmatch(body) or len(body) % 4 == 1:
        raise InvalidBase64("invalid base64url in token")
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    if _b64url(raw) != body:
        raise InvalidBase64("non-canonical base64url in token")
    return raw


def _coerce_bytes(value: Any, name: str) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return memoryview(value).tobytes()
    except TypeError:
        raise MalformedEnvelope(f"{name} must be bytes, not {type(value).__name__}") from None


def _timestamp(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        ts = value
    elif isinstance(value, str):
        try:
            ts = datetime.fromisoformat(value)
        except ValueError:
            raise MalformedEnvelope("timestamp must be an ISO-8601 string") from None
    else:
        raise MalformedEnvelope("timestamp must be an ISO-8601 string or a datetime")
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    try:  # an offset of almost a day near year 1 or 9999 has no UTC time
        ts.astimezone(timezone.utc)
    except OverflowError:
        ts = None
    if ts is None:
        raise MalformedEnvelope("timestamp is out of range once converted to UTC")
    return ts


@dataclass(frozen=True)
class EncryptedData:
    """One encrypted value: IV, ciphertext, tag, key version and time of encryption.

    ``timestamp`` is a timezone-aware :class:`~datetime.datetime` (UTC; naive values and ISO
    strings are accepted and converted), or ``None`` for a value read from a token (tokens carry
    no time). ``header_bound`` is True when the AAD began with the token header (formats 1 and 3,
    what :meth:`EncryptionService.encrypt_many` writes) and False for the JSON envelope's AAD (the
    caller's only). ``algorithm`` is ``"aes-256-gcm"`` (a 16-byte IV) or ``"xaes-256-gcm"`` (the
    IV is the 24-byte nonce).

    Raises:
        InvalidLength: the IV is not the algorithm's size, or the tag is not 16 bytes.
        MalformedEnvelope: a field has the wrong type or the key version is out of range.
        UnknownFormat: an unknown algorithm.
    """

    iv: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)
    auth_tag: bytes = field(repr=False)
    key_version: int
    timestamp: datetime | None = None
    header_bound: bool = False
    algorithm: str = ALGORITHM

    def __post_init__(self) -> None:
        for name in ("iv", "ciphertext", "auth_tag"):
            object.__setattr__(self, name, _coerce_bytes(getattr(self, name), name))
        iv_bytes = (ALGORITHM_IV_BYTES.get(self.algorithm) if isinstance(self.algorithm, str)
                    else None)
        if iv_bytes is None:
            raise UnknownFormat(f"unknown algorithm (known: {', '.join(ALGORITHM_IV_BYTES)})")
        if len(self.iv) != iv_bytes:
            raise InvalidLength(f"iv must be {iv_bytes} bytes for {self.algorithm}, "
                                f"got {len(self.iv)}")
        if len(self.auth_tag) != TAG_BYTES:
            raise InvalidLength(f"authTag must be {TAG_BYTES} bytes, got {len(self.auth_tag)}")
        v = self.key_version
        if type(v) is not int or not 1 <= v <= MAX_KEY_VERSION:
            raise MalformedEnvelope("keyVersion must be an integer from 1 to 2**32 - 1")
        object.__setattr__(self, "timestamp", _timestamp(self.timestamp))

    @property
    def format(self) -> int:
        """The token format this value belongs to (1: header bound, 2: the caller's AAD only; 3
        and 4 the same for XAES-256-GCM)."""
        return token_format(self.algorithm, self.header_bound)

    def aad(self, aad: bytes | None) -> bytes | None:
        """The full AAD to decrypt with, given the caller's."""
        return token_aad(self.format, self.key_version, aad)

    # ---- the JSON envelope ----

    def to_dict(self) -> dict[str, Any]:
        """The JSON envelope: ``iv``, ``ciphertext``, ``authTag`` (base64), ``keyVersion``,
        ``timestamp`` (ISO-8601 in UTC with milliseconds and ``Z``, as JavaScript writes it,
        or ``None``), ``algorithm``.

        Raises:
            EnvelopeError: the value is header-bound (format 1): the JSON envelope cannot express it.
        """
        if self.header_bound:
            raise EnvelopeError(
                "this value was sealed as a token (its header is part of the AAD); "
                "keep it as a token, the JSON envelope cannot express it"
            )
        ts = self.timestamp
        return {
            "iv": _b64(self.iv),
            "ciphertext": _b64(self.ciphertext),
            "authTag": _b64(self.auth_tag),
            "keyVersion": self.key_version,
            "timestamp": None if ts is None else
            ts.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "algorithm": self.algorithm,
        }

    @classmethod
    def from_dict(cls, doc: Any) -> "EncryptedData":
        """Parses the JSON envelope strictly.

        Raises:
            MalformedEnvelope: not a dict, a missing field, a mistyped key version or timestamp.
            InvalidBase64: a field is not canonical standard base64.
            InvalidLength: IV or tag of the wrong size.
            UnknownFormat: ``algorithm`` is present and is neither ``aes-256-gcm`` nor
                ``xaes-256-gcm``.
        """
        if not isinstance(doc, dict):
            raise MalformedEnvelope("an encrypted value must be a JSON object")
        missing = [k for k in ("iv", "ciphertext", "authTag", "keyVersion") if k not in doc]
        if missing:
            raise MalformedEnvelope(f"missing field(s): {', '.join(missing)}")
        algorithm = doc.get("algorithm", ALGORITHM)
        if not isinstance(algorithm, str) or algorithm.lower() not in ALGORITHM_IV_BYTES:
            raise UnknownFormat(f"unsupported algorithm (known: {', '.join(ALGORITHM_IV_BYTES)})")
        version = doc["keyVersion"]
        if (isinstance(version, str) and version.isdecimal() and version.isascii()
                and len(version) <= 10):
            version = int(version)
        if type(version) is not int:
            raise MalformedEnvelope("keyVersion must be an integer")
        return cls(
            iv=_unb64(doc["iv"], "iv"),
            ciphertext=_unb64(doc["ciphertext"], "ciphertext"),
            auth_tag=_unb64(doc["authTag"], "authTag"),
            key_version=version,
            timestamp=_timestamp(doc.get("timestamp")),
            algorithm=algorithm.lower(),
        )

    def to_json(self) -> str:
        """The JSON envelope as a JSON string (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "EncryptedData":
        """Parses the JSON envelope from its JSON text (see :meth:`from_dict`).

        Raises:
            MalformedEnvelope: not JSON; and everything :meth:`from_dict` raises.
        """
        try:
            doc = json.loads(text)
        except (ValueError, TypeError, RecursionError):  # RecursionError: thousands of levels
            doc = _NOT_JSON
        if doc is _NOT_JSON:
            raise MalformedEnvelope("not valid JSON")
        return cls.from_dict(doc)

    # ---- tokens ----

    def to_binary_token(self) -> bytes:
        """``0xEF | format | version | iv | ciphertext | tag``."""
        return token_header(self.key_version, self.format) + self.iv + self.ciphertext + self.auth_tag

    def to_token(self) -> str:
        """The text token, ``"ef1:" + base64url(binary token)`` without padding."""
        return TEXT_PREFIX + _b64url(self.to_binary_token())

    @classmethod
    def from_token(cls, token: str | bytes | bytearray | memoryview) -> "EncryptedData":
        """Parses a text token (str, or its ASCII bytes) or a binary token (bytes).

        Raises:
            MalformedEnvelope: not a token.
            InvalidBase64: bad base64url in a text token.
            InvalidLength: too short.
            UnknownFormat: unknown prefix, magic or format byte.
        """
        if isinstance(token, str):
            raw = _text_to_binary(token)
        else:
            raw = _coerce_bytes(token, "token")
            if raw[:1] != bytes((MAGIC,)):
                if not raw.isascii():
                    raise UnknownFormat("not an engine token (bad magic byte)")
                raw = _text_to_binary(raw.decode("ascii"))
        if len(raw) < OVERHEAD:
            raise InvalidLength(f"token too short (a token holds at least {OVERHEAD} bytes)")
        if raw[0] != MAGIC:
            raise UnknownFormat("not an engine token (bad magic byte)")
        if raw[1] not in FORMATS:
            raise UnknownFormat(f"unknown token format {raw[1]}")
        if len(raw) < FORMAT_OVERHEAD[raw[1]]:
            raise InvalidLength(f"token too short (a format {raw[1]} token holds at least "
                                f"{int(FORMAT_OVERHEAD[raw[1]])} bytes)")
        version = int.from_bytes(raw[2:6], "big")
        if version < 1:
            raise MalformedEnvelope("key version 0 is not valid")
        iv_end = HEADER_BYTES + int(FORMAT_IV_BYTES[raw[1]])
        return cls(iv=raw[HEADER_BYTES:iv_end], ciphertext=raw[iv_end:-TAG_BYTES],
                   auth_tag=raw[-TAG_BYTES:], key_version=version,
                   header_bound=raw[1] in BOUND_FORMATS, algorithm=FORMAT_ALGORITHMS[raw[1]])

    @classmethod
    def parse(cls, value: Any) -> "EncryptedData":
        """An :class:`EncryptedData` from itself, its dict, its JSON (str, or bytes as redis-py and
        files opened ``'rb'`` give it) or a token."""
        if isinstance(value, EncryptedData):
            return value
        if isinstance(value, dict):
            return cls.from_dict(value)
        if isinstance(value, str) and value.lstrip().startswith("{"):
            return cls.from_json(value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
            if raw.lstrip().startswith(b"{"):
                return cls.from_json(raw)
            return cls.from_token(raw)
        if isinstance(value, str):
            return cls.from_token(value)
        raise MalformedEnvelope(
            f"expected EncryptedData, a dict, JSON or a token, not {type(value).__name__}"
        )


def is_text_token(value: Any) -> bool:
    """True when ``value`` is a str that parses strictly as a text token."""
    if not isinstance(value, str) or not value.startswith(TEXT_PREFIX):
        return False
    try:
        EncryptedData.from_token(value)
    except EnvelopeError:
        return False
    return True
