"""Ciphertext formats: a JSON envelope and a compact, versioned token.

**JSON envelope** (the shape a TypeScript service on Node.js ``crypto`` reads and writes;
``tests/node/interop.js`` is such a peer)::

    {"iv": b64, "ciphertext": b64, "authTag": b64, "keyVersion": 3,
     "timestamp": "2026-01-31T12:00:00.000Z", "algorithm": "aes-256-gcm"}

Standard base64 with padding; the AAD is only the caller's.

**Binary token** (database columns, bulk data)::

    0xEF | format (1 byte) | key version (uint32 big-endian) | IV | ciphertext | tag (16)

The first 6 bytes are the *header*. Format 1 (what the engine writes) binds the header into the
AAD: ``AAD = header || caller's aad``, so editing the format byte or the key version fails
authentication. Format 2 marks a value converted from the JSON envelope (its AAD is the
caller's only); such a value keeps its tag, and a changed header still fails to decrypt because it
selects a different key or AAD, but only format 1 authenticates the header itself. Formats 3 and
4 are formats 1 and 2 for key versions of XAES-256-GCM (:class:`engine.XAesGcm`), whose IV is
its 24-byte nonce; formats 1 and 2 carry AES-256-GCM's 16-byte IV.

**Text token**: ``"ef1:"`` followed by the binary token in base64url without padding. The prefix
names the text encoding (version 1); the format byte inside names the binary layout.

Bulk packing, base64url and parsing run as native passes over whole batches (no per-record Python).

Errors (all :class:`EnvelopeError`, a ``ValueError``):

- :class:`MalformedEnvelope` -- not JSON / not a token / a missing or mistyped field;
- :class:`InvalidBase64` -- bad characters, bad length or non-canonical base64;
- :class:`InvalidLength` -- an IV of the wrong size for its algorithm, a tag that is not 16
  bytes, a token shorter than its format's header, IV and tag;
- :class:`UnknownFormat` -- an unknown algorithm, text prefix, magic byte or format byte.

An unknown key version is reported by the key provider as :class:`engine.keys.UnknownKeyVersion`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .aead import TAG_BYTES, AesGcm
from .batch import Batch, as_batch
from .buffers import empty_bytes, offsets_of
from .codecs import (
    B64_CHARACTER,
    B64_LENGTH,
    B64_NONCANONICAL,
    B64_PREFIX,
    b64_decode,
    b64_encode,
    b64url_decode,
    b64url_encode,
    batch_to_text,
    concat_each,
    interleave,
    scatter,
)
from .envelope_extras import keep_extra_members
from .errors import EngineError
from .xaes import XAesGcm

__all__ = [
    "ALGORITHM",
    "ALGORITHM_IV_BYTES",
    "BOUND_FORMATS",
    "FORMAT_ALGORITHMS",
    "FORMAT_BOUND",
    "FORMAT_IV_BYTES",
    "FORMAT_OVERHEAD",
    "FORMAT_UNBOUND",
    "FORMAT_XAES",
    "FORMAT_XAES_UNBOUND",
    "TEXT_PREFIX",
    "TEXT_PREFIX_BYTES",
    "EncryptedData",
    "EnvelopeError",
    "InvalidBase64",
    "InvalidLength",
    "MalformedEnvelope",
    "ParsedTokens",
    "StoredValues",
    "TokenHeaders",
    "UnknownFormat",
    "VALUE_BINARY_TOKEN",
    "VALUE_JSON",
    "VALUE_NULL",
    "VALUE_TEXT_TOKEN",
    "as_binary_tokens",
    "decode_text_tokens",
    "encode_text_tokens",
    "format_stored_values",
    "is_text_token",
    "pack_tokens",
    "parse_headers",
    "parse_stored_values",
    "parse_tokens",
    "sealed_to_text_tokens",
    "text_token_mask",
    "text_tokens_batch",
    "token_format",
    "token_header",
]

ALGORITHM = AesGcm.ALGORITHM
ALGORITHM_IV_BYTES = {AesGcm.ALGORITHM: AesGcm.NONCE_SIZE, XAesGcm.ALGORITHM: XAesGcm.NONCE_SIZE}
MAGIC = 0xEF
FORMAT_BOUND = 1
FORMAT_UNBOUND = 2  # the header is not in the AAD: values converted from the JSON envelope
FORMAT_XAES = 3  # as 1 and 2, under XAES-256-GCM (24-byte nonces)
FORMAT_XAES_UNBOUND = 4
FORMATS = (FORMAT_BOUND, FORMAT_UNBOUND, FORMAT_XAES, FORMAT_XAES_UNBOUND)
BOUND_FORMATS = (FORMAT_BOUND, FORMAT_XAES)
FORMAT_ALGORITHMS = {FORMAT_BOUND: AesGcm.ALGORITHM, FORMAT_UNBOUND: AesGcm.ALGORITHM,
                     FORMAT_XAES: XAesGcm.ALGORITHM, FORMAT_XAES_UNBOUND: XAesGcm.ALGORITHM}
HEADER_BYTES = 6
IV_BYTES = 16  # the AES-256-GCM formats' 128-bit IV
OVERHEAD = HEADER_BYTES + IV_BYTES + TAG_BYTES  # the shortest token (formats 1 and 2)
# IV bytes and header + IV + tag bytes of each format, indexed by the format byte (0: unknown)
FORMAT_IV_BYTES = np.zeros(256, dtype=np.int64)
FORMAT_IV_BYTES[list(FORMAT_ALGORITHMS)] = [ALGORITHM_IV_BYTES[a]
                                           for a in FORMAT_ALGORITHMS.values()]
FORMAT_OVERHEAD = np.where(FORMAT_IV_BYTES > 0, FORMAT_IV_BYTES + HEADER_BYTES + TAG_BYTES, 0)
MAX_KEY_VERSION = 2**32 - 1
TEXT_PREFIX = "ef1:"
TEXT_PREFIX_BYTES = TEXT_PREFIX.encode("ascii")


class EnvelopeError(EngineError, ValueError):
    """A ciphertext envelope (JSON or token) cannot be parsed.

    Attributes:
        index: for a batch of tokens, the position of the first one that cannot be parsed
            (None otherwise).
        count: for a batch of tokens, how many cannot be parsed (1 otherwise).
    """

    index: int | None = None
    count: int = 1


class MalformedEnvelope(EnvelopeError):
    """Not JSON, not a token, or a field is missing or has the wrong type."""


class InvalidBase64(EnvelopeError):
    """A base64 field or token body has bad characters, a bad length or non-canonical bits."""


class InvalidLength(EnvelopeError):
    """An IV or tag is not 16 bytes, or a token is too short to hold header, IV and tag."""


class UnknownFormat(EnvelopeError):
    """An unknown algorithm, token prefix, magic byte or format version."""


_OK, _MALFORMED, _BASE64, _LENGTH, _FORMAT = range(5)
_NOT_JSON = object()
_ERRORS = {
    _MALFORMED: (MalformedEnvelope, "not an engine token"),
    _BASE64: (InvalidBase64, "invalid base64url in token"),
    _LENGTH: (InvalidLength, "token too short for its format's header, IV and tag"),
    _FORMAT: (UnknownFormat, "unknown token format"),
}


def token_format(algorithm: str, bound: bool = True) -> int:
    """The token format of values sealed with ``algorithm`` (header bound, or the caller's AAD only).

    Raises:
        UnknownFormat: an unknown algorithm.
    """
    if algorithm == AesGcm.ALGORITHM:
        return FORMAT_BOUND if bound else FORMAT_UNBOUND
    if algorithm == XAesGcm.ALGORITHM:
        return FORMAT_XAES if bound else FORMAT_XAES_UNBOUND
    raise UnknownFormat(f"unknown algorithm (known: {', '.join(ALGORITHM_IV_BYTES)})")


def token_header(key_version: int, fmt: int = FORMAT_BOUND) -> bytes:
    """The 6-byte token header: magic, format, key version (uint32 big-endian)."""
    if type(key_version) is not int or not 1 <= key_version <= MAX_KEY_VERSION:
        raise MalformedEnvelope("key version must be an integer from 1 to 2**32 - 1")
    return bytes((MAGIC, fmt)) + key_version.to_bytes(4, "big")


def token_aad(fmt: int, key_version: int, aad: bytes | None) -> bytes | None:
    """The AAD a token of this format was sealed with."""
    if fmt in BOUND_FORMATS:
        return token_header(key_version, fmt) + (aad or b"")
    return aad


# ---------------------------------------------------------------- single values


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


# ---------------------------------------------------------------- bulk tokens
#
# Whole batches go through native passes (engine.codecs.b64url_encode/decode, Batch.take and the
# token seal/open of engine.AesGcm); here only header checks run, as numpy array operations.


def _header_rows(data: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The 6 bytes at each start (tokens at least that long), as a k x 6 matrix."""
    return data[starts[:, None] + np.arange(HEADER_BYTES)]


def _header_codes(lengths: np.ndarray, heads: np.ndarray | None) -> np.ndarray:
    """Per-token error codes from lengths and (for long-enough tokens) headers."""
    codes = np.where(lengths < OVERHEAD, _LENGTH, _OK).astype(np.uint8)
    if heads is not None and heads.shape[0]:
        bad = (heads[:, 0] != MAGIC) | ~np.isin(heads[:, 1], FORMATS)
        codes[(codes == _OK) & bad] = _FORMAT
        short = lengths < FORMAT_OVERHEAD[heads[:, 1]]
        codes[(codes == _OK) & short] = _LENGTH
        zero = ~heads[:, 2:6].any(axis=1)
        codes[(codes == _OK) & zero] = _MALFORMED
    return codes


def _raise_first(codes: np.ndarray, what: str = "token") -> None:
    bad = np.flatnonzero(codes)
    if bad.shape[0]:
        i = int(bad[0])
        cls, message = _ERRORS[int(codes[i])]
        more = f" (and {bad.shape[0] - 1} more)" if bad.shape[0] > 1 else ""
        error = cls(f"{what} {i}: {message}{more}")
        error.index, error.count = i, int(bad.shape[0])
        raise error


@dataclass(frozen=True)
class TokenHeaders:
    """Format byte and key version of every token of a batch (already checked)."""

    formats: np.ndarray  # uint8 (n,)
    key_versions: np.ndarray  # int64 (n,)


def parse_headers(tokens: Batch) -> TokenHeaders:
    """Checks and reads the headers of binary tokens, with array operations only.

    Raises:
        InvalidLength: a token is shorter than its format's header, IV and tag.
        UnknownFormat: a bad magic byte or an unknown format byte.
        MalformedEnvelope: key version 0.
    """
    lengths = tokens.lengths()
    codes = _header_codes(lengths, None)
    _raise_first(codes)
    heads = _header_rows(tokens.data, tokens.offsets[:-1])
    _raise_first(_header_codes(lengths, heads))
    versions = np.ascontiguousarray(heads[:, 2:6]).view(">u4").reshape(-1).astype(np.int64)
    return TokenHeaders(heads[:, 1].copy(), versions)


def pack_tokens(sealed: Any, key_version: int | np.ndarray, fmt: int = FORMAT_BOUND) -> Batch:
    """Binary tokens from a sealed batch: header, nonce, ciphertext and tag gathered into one
    buffer by native code. The nonces must be the format's IV size (16 bytes; 24 for the
    XAES-256-GCM formats).

    ``key_version`` is one version for every record, or an array of one per record (a stored
    three-column layout with its key-version column).

    (:meth:`engine.AesGcm.seal_tokens` seals straight into this layout; this is for batches
    sealed earlier.)

    Raises:
        InvalidLength: the nonces are not 16 bytes.
        MalformedEnvelope: a key version outside 1 to 2**32 - 1, or not one per record.
    """
    ct = sealed.ciphertexts
    n = len(ct)
    iv_bytes = int(FORMAT_IV_BYTES[fmt]) if fmt in FORMATS else 0
    if not iv_bytes:
        raise UnknownFormat(f"unknown token format {fmt}")
    if sealed.nonces.shape[1:] != (iv_bytes,):
        raise InvalidLength(f"format {fmt} tokens need {iv_bytes}-byte nonces")
    lengths = ct.lengths()
    off = offsets_of(lengths + HEADER_BYTES + iv_bytes + TAG_BYTES)
    out = empty_bytes(int(off[-1]))
    starts = off[:-1]
    head = np.empty((n, HEADER_BYTES + iv_bytes), dtype=np.uint8)
    if isinstance(key_version, np.ndarray):
        versions = key_version
        if versions.shape != (n,) or not np.issubdtype(versions.dtype, np.integer) or (
                n and (int(versions.min()) < 1 or int(versions.max()) > MAX_KEY_VERSION)):
            raise MalformedEnvelope("key versions must be one integer from 1 to 2**32 - 1 "
                                    "per record")
        head[:, 0] = MAGIC
        head[:, 1] = fmt
        head[:, 2:HEADER_BYTES] = versions.astype(">u4").view(np.uint8).reshape(n, 4)
    else:
        head[:, :HEADER_BYTES] = np.frombuffer(token_header(key_version, fmt), dtype=np.uint8)
    head[:, HEADER_BYTES:] = sealed.nonces
    parts = [Batch._trusted(head.reshape(-1), offsets_of(np.full(n, HEADER_BYTES + iv_bytes))),
             ct,
             Batch._trusted(np.ascontiguousarray(sealed.tags).reshape(-1),
                            offsets_of(np.full(n, TAG_BYTES)))]
    scatter(out, [starts, starts + HEADER_BYTES + iv_bytes, off[1:] - TAG_BYTES], parts)
    return Batch._trusted(out, off)


@dataclass(frozen=True)
class ParsedTokens:
    """Bulk-parsed binary tokens: one entry per token, in order."""

    formats: np.ndarray  # uint8 (n,)
    key_versions: np.ndarray  # int64 (n,)
    nonces: np.ndarray  # uint8 (n, IV bytes of the formats)
    tags: np.ndarray  # uint8 (n, 16)
    ciphertexts: Batch

    def __len__(self) -> int:
        return len(self.ciphertexts)


def parse_tokens(tokens: Batch) -> ParsedTokens:
    """Splits binary tokens into formats, key versions, nonces, tags and ciphertexts (copies).
    The tokens must have one IV size (AES-256-GCM formats, or XAES-256-GCM formats).

    Raises:
        InvalidLength, UnknownFormat, MalformedEnvelope: as :func:`parse_headers`.
        InvalidLength: tokens of both IV sizes in one batch.
    """
    headers = parse_headers(tokens)
    iv_sizes = np.unique(FORMAT_IV_BYTES[headers.formats])
    if iv_sizes.shape[0] > 1:
        raise InvalidLength("tokens with 16- and 24-byte IVs; parse each kind on its own")
    iv_bytes = int(iv_sizes[0]) if iv_sizes.shape[0] else IV_BYTES
    starts, ends = tokens.offsets[:-1], tokens.offsets[1:]
    rows = tokens.data[starts[:, None] + np.arange(HEADER_BYTES, HEADER_BYTES + iv_bytes)]
    tags = tokens.data[(ends - TAG_BYTES)[:, None] + np.arange(TAG_BYTES)]
    lengths = tokens.lengths() - (HEADER_BYTES + iv_bytes + TAG_BYTES)
    ct = Batch._trusted(tokens.data, tokens.offsets).slices(starts + HEADER_BYTES + iv_bytes,
                                                             lengths)
    return ParsedTokens(headers.formats, headers.key_versions, rows, tags, ct)


def encode_text_tokens(tokens: Batch, *, threads: int | None = None) -> list[str]:
    """Text tokens (``"ef1:" + base64url``) for a batch of binary tokens, as a list of str:
    encoded natively into one ASCII buffer, then one str per token made in C."""
    return batch_to_text(text_tokens_batch(tokens, threads=threads))


def text_tokens_batch(tokens: Batch, *, threads: int | None = None) -> Batch:
    """Text tokens as a :class:`~engine.Batch` of ASCII records (``Batch.to_arrow(text=True)``
    makes a pyarrow string column of them without creating a Python object per token)."""
    return b64url_encode(tokens, prefix=TEXT_PREFIX_BYTES, threads=threads)


def sealed_to_text_tokens(sealed: Any, key_version: int, fmt: int = FORMAT_BOUND, *,
                          threads: int | None = None) -> list[str]:
    """Text tokens for a sealed batch (:func:`pack_tokens`, then :func:`encode_text_tokens`)."""
    return encode_text_tokens(pack_tokens(sealed, key_version, fmt), threads=threads)


def _text_batch(tokens: Any) -> Batch:
    if isinstance(tokens, Batch):
        return tokens
    if isinstance(tokens, (list, tuple)):
        try:
            return Batch.from_list(tokens)
        except (TypeError, ValueError):
            raise MalformedEnvelope("tokens must all be str or bytes") from None
    return as_batch(tokens, "tokens")


_B64_CODES = np.zeros(256, dtype=np.uint8)
_B64_CODES[B64_PREFIX] = _MALFORMED
_B64_CODES[[B64_LENGTH, B64_CHARACTER, B64_NONCANONICAL]] = _BASE64


def _decode_text(batch: Batch, threads: int | None = None) -> tuple[Batch, np.ndarray]:
    """(binary tokens, per-record error codes); failed records decode to zero bytes."""
    binary, status = b64url_decode(batch, prefix=TEXT_PREFIX_BYTES, threads=threads)
    codes = _B64_CODES[status]
    wrong_prefix = np.flatnonzero(status == B64_PREFIX)
    if wrong_prefix.shape[0]:  # "ef..." with another version is an unknown format, not junk
        lengths = batch.lengths()[wrong_prefix]
        starts = batch.offsets[:-1][wrong_prefix]
        two_bytes = lengths >= 2
        first = batch.data[starts[two_bytes]]
        second = batch.data[starts[two_bytes] + 1]
        ef = np.zeros(wrong_prefix.shape[0], dtype=bool)
        ef[two_bytes] = (first == ord("e")) & (second == ord("f"))
        codes[wrong_prefix[ef]] = _FORMAT
    ok = codes == _OK
    lengths = binary.lengths()
    heads = np.zeros((len(batch), HEADER_BYTES), dtype=np.uint8)
    long_enough = np.flatnonzero(ok & (lengths >= HEADER_BYTES))
    heads[long_enough] = _header_rows(binary.data, binary.offsets[:-1][long_enough])
    header_codes = _header_codes(lengths, heads)
    codes[ok] = header_codes[ok]
    return binary, codes


def decode_text_tokens(tokens: Any, *, threads: int | None = None) -> Batch:
    """Binary tokens from text tokens (a list of str/bytes, a Batch or a pyarrow column).

    Raises:
        MalformedEnvelope: a value is not a token.
        InvalidBase64: bad base64url.
        InvalidLength: a token too short.
        UnknownFormat: an unknown prefix, magic or format byte.
    """
    binary, codes = _decode_text(_text_batch(tokens), threads)
    _raise_first(codes)
    return binary


def text_token_mask(batch: Batch) -> np.ndarray:
    """A boolean per record: True where the record is a strictly valid text token.

    Only records that start with the token prefix are decoded (vectorized prefix test first)."""
    n = len(batch)
    mask = np.zeros(n, dtype=bool)
    starts = batch.offsets[:-1]
    candidates = np.flatnonzero(batch.lengths() >= len(TEXT_PREFIX_BYTES))
    for k, byte in enumerate(TEXT_PREFIX_BYTES):
        candidates = candidates[batch.data[starts[candidates] + k] == byte]
    if candidates.shape[0]:
        sub = batch if candidates.shape[0] == n else batch.take(candidates)
        mask[candidates] = _decode_text(sub)[1] == _OK
    return mask


def as_binary_tokens(tokens: Any) -> Batch:
    """Binary tokens from text or binary tokens (each batch must be one kind or the other).

    Raises:
        EnvelopeError: as :func:`decode_text_tokens` and :func:`parse_headers`.
    """
    batch = _text_batch(tokens)
    if len(batch) == 0:
        return batch
    off = batch.offsets
    nonempty = off[:-1][np.diff(off) > 0]
    if nonempty.shape[0] == len(batch) and bool((batch.data[nonempty] == MAGIC).all()):
        return batch
    return decode_text_tokens(batch)


# ---------------------------------------------------------------- stored values of any kind
#
# What a database column or a Parquet field holds: binary tokens, text tokens or the JSON
# shape (text, or PostgreSQL jsonb read as text), any of them NULL. They are read into one batch
# of binary tokens (a JSON value becomes a format-2 token: its AAD is the caller's only) and
# written back in the kind each value had.

VALUE_NULL, VALUE_BINARY_TOKEN, VALUE_TEXT_TOKEN, VALUE_JSON = range(4)
_JSON_SPACE = (0x20, 0x09, 0x0A, 0x0D)


@dataclass(frozen=True)
class StoredValues:
    """Stored values read in bulk: one entry per value, in order.

    Attributes:
        kinds: ``uint8``: ``VALUE_NULL``, ``VALUE_BINARY_TOKEN``, ``VALUE_TEXT_TOKEN`` (``ef1:``
            text, as str or its bytes) or ``VALUE_JSON`` (a value that starts with ``{``,
            after JSON whitespace).
        valid: ``bool``: the value parses strictly (the rules of :class:`EncryptedData`).
        formats: ``uint8`` token format (JSON values: 2), 0 where not valid.
        key_versions: ``int64``, 0 where not valid.
        tokens: the values as binary tokens; an empty record where not valid.
    """

    kinds: np.ndarray
    valid: np.ndarray
    formats: np.ndarray
    key_versions: np.ndarray
    tokens: Batch

    def __len__(self) -> int:
        return len(self.tokens)


def parse_stored_values(values: Batch, present: np.ndarray | None = None, *,
                        threads: int | None = None) -> StoredValues:
    """Reads stored values of any kind into binary tokens, with batch passes only.

    Args:
        values: one record per value (text as UTF-8); a NULL's record is ignored.
        present: ``bool`` per value, False for NULL (default: none is NULL).

    Returns:
        A :class:`StoredValues`. A value that does not parse is marked not valid; nothing is
        raised for it.

    JSON values go through pyarrow's JSON reader in one pass; a batch it cannot read as a
    whole (a malformed value among them) is halved until the values it refuses are found,
    and those are checked one by one by :meth:`EncryptedData.from_json`.
    """
    n = len(values)
    present = np.ones(n, dtype=bool) if present is None else np.asarray(present, dtype=bool)
    if present.shape != (n,):
        raise MalformedEnvelope("present must hold one bool per value")
    lengths = values.lengths()
    first = np.full(n, -1, dtype=np.int64)
    nonempty = np.flatnonzero(present & (lengths > 0))
    first[nonempty] = values.data[values.offsets[:-1][nonempty]]
    # JSON may start with JSON whitespace (EncryptedData.parse reads such values): look past
    # it, for the few values that have it.
    for i in np.flatnonzero(np.isin(first, _JSON_SPACE)).tolist():
        if bytes(values[i]).lstrip(b" \t\n\r")[:1] == b"{":
            first[i] = ord("{")
    kinds = np.full(n, VALUE_TEXT_TOKEN, dtype=np.uint8)
    kinds[first == MAGIC] = VALUE_BINARY_TOKEN
    kinds[first == ord("{")] = VALUE_JSON
    kinds[~present] = VALUE_NULL
    valid = np.zeros(n, dtype=bool)
    parts: list[tuple[np.ndarray, Batch]] = []
    for kind, idx, sub in _by_kind(values, kinds, threads):
        if kind == VALUE_BINARY_TOKEN:
            tokens, ok = sub, _token_codes(sub) == _OK
        elif kind == VALUE_TEXT_TOKEN:
            tokens, codes = _decode_text(sub, threads)
            ok = codes == _OK
        else:
            tokens, ok = _json_to_tokens(sub, threads)
        valid[idx] = ok
        parts.append((idx[ok], tokens if bool(ok.all()) else tokens.take(np.flatnonzero(ok))))
    tokens = _merged(n, parts, threads)
    formats = np.zeros(n, dtype=np.uint8)
    versions = np.zeros(n, dtype=np.int64)
    ok_idx = np.flatnonzero(valid)
    if ok_idx.shape[0]:
        heads = _header_rows(tokens.data, tokens.offsets[:-1][ok_idx])
        formats[ok_idx] = heads[:, 1]
        versions[ok_idx] = np.ascontiguousarray(heads[:, 2:6]).view(">u4").reshape(-1)
    return StoredValues(kinds, valid, formats, versions, tokens)


def format_stored_values(tokens: Batch, kinds: np.ndarray, *, timestamp: datetime | None = None,
                         threads: int | None = None, previous: Batch | None = None) -> Batch:
    """Binary tokens written back as the kind of value each replaces: binary tokens as they
    are, text tokens in base64url, JSON values in the JSON envelope (format-2 tokens only).

    Args:
        tokens: one binary token per value (empty for a NULL).
        kinds: ``VALUE_*`` per value, as :func:`parse_stored_values` found them.
        timestamp: the JSON shape's ``timestamp`` (default: now).
        previous: the stored values these replace (one per token): a JSON value keeps their
            members that are not the engine's (:func:`engine.envelope_extras.keep_extra_members`).

    Raises:
        EnvelopeError: a token that does not parse, or a format-1 token for a JSON value (the
            JSON envelope cannot express a bound header).
    """
    kinds = np.asarray(kinds, dtype=np.uint8)
    n = len(tokens)
    if kinds.shape != (n,):
        raise MalformedEnvelope("kinds must hold one entry per token")
    if bool((kinds == VALUE_BINARY_TOKEN).all()):
        return tokens
    parts: list[tuple[np.ndarray, Batch]] = []
    for kind, idx, sub in _by_kind(tokens, kinds, threads):
        if kind == VALUE_TEXT_TOKEN:
            sub = text_tokens_batch(sub, threads=threads)
        elif kind == VALUE_JSON:
            sub = _tokens_to_json(sub, timestamp, threads)
            if previous is not None:
                sub = keep_extra_members(sub, previous if idx.shape[0] == n else
                                         previous.take(idx, threads=threads))
        parts.append((idx, sub))
    return _merged(n, parts, threads)


def _by_kind(values: Batch, kinds: np.ndarray, threads: int | None) -> Any:
    """(kind, indices, the values at them) for each kind of value present but NULL."""
    n = len(values)
    for kind in (VALUE_BINARY_TOKEN, VALUE_TEXT_TOKEN, VALUE_JSON):
        idx = np.flatnonzero(kinds == kind)
        if idx.shape[0]:
            yield kind, idx, values if idx.shape[0] == n else values.take(idx, threads=threads)


def _merged(n: int, parts: list[tuple[np.ndarray, Batch]], threads: int | None) -> Batch:
    """The parts put back in order (:func:`engine.batch.interleave`), without a copy when one
    part holds every record."""
    if len(parts) == 1 and parts[0][0].shape[0] == n:
        return parts[0][1]
    return interleave(n, parts, threads=threads)


def _token_codes(tokens: Batch) -> np.ndarray:
    """Per-token error codes of binary tokens (length, magic, format, key version 0)."""
    lengths = tokens.lengths()
    heads = np.zeros((len(tokens), HEADER_BYTES), dtype=np.uint8)
    long_enough = np.flatnonzero(lengths >= HEADER_BYTES)
    heads[long_enough] = _header_rows(tokens.data, tokens.offsets[:-1][long_enough])
    return _header_codes(lengths, heads)


def _decimal(values: np.ndarray) -> Batch:
    """Each non-negative integer below 10**10 in decimal ASCII, as a batch (array operations)."""
    n = values.shape[0]
    v = values.astype(np.uint64)
    digits = np.empty((n, 10), dtype=np.uint8)
    for k in range(10):
        digits[:, 9 - k] = ord("0") + (v // np.uint64(10**k)) % np.uint64(10)
    width = 1 + sum((v >= np.uint64(10**k)).astype(np.int64) for k in range(1, 10))
    flat = Batch._trusted(digits.reshape(-1), np.arange(n + 1, dtype=np.int64) * 10)
    return flat.slices(np.arange(n, dtype=np.int64) * 10 + 10 - width, width)


def _tokens_to_json(tokens: Batch, timestamp: datetime | None, threads: int | None) -> Batch:
    """Binary tokens of one unbound format (2, or 4 for XAES-256-GCM) in the JSON envelope, byte
    for byte what :meth:`EncryptedData.to_json` writes."""
    parsed = parse_tokens(tokens)
    formats = np.unique(parsed.formats)
    if formats.shape[0] > 1 or (formats.shape[0] and int(formats[0]) in BOUND_FORMATS):
        raise EnvelopeError(
            "a value sealed as a token (its header is part of the AAD) cannot be written in the "
            "JSON envelope"
        )
    algorithm = FORMAT_ALGORITHMS[int(formats[0])] if formats.shape[0] else ALGORITHM
    n = len(parsed)
    ts = _timestamp(timestamp) if timestamp is not None else None
    ts = datetime.now(timezone.utc) if ts is None else ts
    stamp = ts.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def column(arr: np.ndarray) -> Batch:
        return Batch._trusted(arr.reshape(-1), np.arange(n + 1, dtype=np.int64) * arr.shape[1])

    return concat_each([
        b'{"iv":"', b64_encode(column(parsed.nonces), threads=threads),
        b'","ciphertext":"', b64_encode(parsed.ciphertexts, threads=threads),
        b'","authTag":"', b64_encode(column(parsed.tags), threads=threads),
        b'","keyVersion":', _decimal(parsed.key_versions),
        f',"timestamp":"{stamp}","algorithm":"{algorithm}"}}'.encode("ascii"),
    ], threads=threads)


# What the one-pass reader accepts as a timestamp without a second look: ISO-8601 as
# JavaScript and Python write it. Anything else goes to EncryptedData's own check.
_ISO_TIMESTAMP = (r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?"
                  r"(Z|[+-](0\d|1\d|2[0-3]):[0-5]\d)?$")
_JSON_FIELDS = (("iv", "string"), ("ciphertext", "string"), ("authTag", "string"),
                ("keyVersion", "int64"), ("timestamp", "string"), ("algorithm", "string"))


def _json_to_tokens(values: Batch, threads: int | None) -> tuple[Batch, np.ndarray]:
    """(format-2 binary tokens, valid) for values that start with ``{``."""
    n = len(values)
    valid = np.zeros(n, dtype=bool)
    parts: list[tuple[np.ndarray, Batch]] = []

    def one_by_one(idx: np.ndarray) -> None:
        ok, found = [], []
        for i in idx.tolist():
            try:
                found.append(EncryptedData.from_json(bytes(values[i])).to_binary_token())
            except EnvelopeError:
                continue
            ok.append(i)
        if ok:
            valid[ok] = True
            parts.append((np.array(ok, dtype=np.int64), Batch.from_list(found)))

    def solve(idx: np.ndarray) -> None:
        sub = values if idx.shape[0] == n else values.take(idx, threads=threads)
        read = _json_one_pass(sub, threads)
        if read is None:
            if idx.shape[0] <= 8:
                one_by_one(idx)
            else:
                half = idx.shape[0] // 2
                solve(idx[:half])
                solve(idx[half:])
            return
        tokens, ok, unsure = read
        valid[idx[ok]] = True
        parts.append((idx[ok], tokens.take(np.flatnonzero(ok), threads=threads)))
        if unsure.shape[0]:
            one_by_one(idx[unsure])

    if n:
        solve(np.arange(n, dtype=np.int64))
    return interleave(n, parts, threads=threads), valid


def _json_one_pass(values: Batch, threads: int | None) -> tuple[Batch, np.ndarray, np.ndarray] | None:
    """(tokens, valid, indices to check one by one), or None when pyarrow is missing or cannot
    read these values as one object each (then the caller splits them)."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.json as pj
    except ImportError:
        return None
    n = len(values)
    body = values.data[int(values.offsets[0]) : int(values.offsets[-1])]
    if bool(((body == ord("\n")) | (body == ord("\r"))).any()):
        return None  # one value per line is how the reader tells them apart
    lines = concat_each([values, b"\n"], threads=threads)
    longest = int(values.lengths().max()) + 1 if n else 1
    try:
        table = pj.read_json(
            pa.py_buffer(lines.data),
            read_options=pj.ReadOptions(use_threads=False, block_size=max(1 << 20, longest)),
            parse_options=pj.ParseOptions(
                explicit_schema=pa.schema([(k, getattr(pa, t)()) for k, t in _JSON_FIELDS]),
                unexpected_field_behavior="ignore"),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != n:
        return None  # a value held more than one object

    def present(name: str) -> np.ndarray:
        return table.column(name).is_valid().to_numpy(zero_copy_only=False)

    def decoded(name: str) -> tuple[Batch, np.ndarray]:
        text = pc.fill_null(table.column(name), "").cast(pa.large_string()).combine_chunks()
        batch, status = b64_decode(Batch.from_arrow(text.view(pa.large_binary())),
                                   threads=threads)
        return batch, status == 0

    ok = present("iv") & present("ciphertext") & present("authTag") & present("keyVersion")
    iv, iv_ok = decoded("iv")
    ct, ct_ok = decoded("ciphertext")
    tag, tag_ok = decoded("authTag")
    algorithm = pc.utf8_lower(table.column("algorithm"))
    xaes = pc.fill_null(pc.equal(algorithm, XAesGcm.ALGORITHM), False).to_numpy(
        zero_copy_only=False)
    known = pc.or_kleene(pc.is_null(algorithm), pc.is_in(
        algorithm, pa.array([AesGcm.ALGORITHM, XAesGcm.ALGORITHM]))).to_numpy(zero_copy_only=False)
    iv_size = np.where(xaes, FORMAT_IV_BYTES[FORMAT_XAES_UNBOUND], FORMAT_IV_BYTES[FORMAT_UNBOUND])
    ok &= iv_ok & ct_ok & tag_ok & known & (iv.lengths() == iv_size) & (tag.lengths() == TAG_BYTES)
    versions = pc.fill_null(table.column("keyVersion"), 0).to_numpy()
    ok &= (versions >= 1) & (versions <= MAX_KEY_VERSION)
    ts = table.column("timestamp")
    prefix = pc.utf8_slice_codeunits(ts, 0, 19)
    calendar = pc.equal(pc.strftime(pc.strptime(prefix, format="%Y-%m-%dT%H:%M:%S", unit="s",
                                                error_is_null=True),
                                    format="%Y-%m-%dT%H:%M:%S"), prefix)
    simple = pc.and_kleene(pc.match_substring_regex(ts, _ISO_TIMESTAMP), calendar)
    simple = pc.fill_null(pc.or_kleene(pc.is_null(ts), simple), False).to_numpy(
        zero_copy_only=False)
    unsure = np.flatnonzero(ok & ~simple)
    ok &= simple
    heads = np.empty((n, HEADER_BYTES), dtype=np.uint8)
    heads[:, 0] = MAGIC
    heads[:, 1] = np.where(xaes, FORMAT_XAES_UNBOUND, FORMAT_UNBOUND)
    heads[:, 2:] = np.where(ok, versions, 1).astype(">u4").view(np.uint8).reshape(n, 4)
    head = Batch._trusted(heads.reshape(-1), np.arange(n + 1, dtype=np.int64) * HEADER_BYTES)
    return concat_each([head, iv, ct, tag], threads=threads), ok, unsure
