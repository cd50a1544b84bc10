"""Ciphertext formats: the IntelliFlow JSON envelope and a compact, versioned token.

**JSON envelope** (what the IntelliFlow TypeScript service reads and writes)::

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
    b64url_decode,
    b64url_encode,
    batch_to_text,
    scatter,
)
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
    "TokenHeaders",
    "UnknownFormat",
    "as_binary_tokens",
    "decode_text_tokens",
    "encode_text_tokens",
    "is_text_token",
    "pack_tokens",
    "parse_headers",
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
    """A ciphertext envelope (JSON or token) cannot be parsed."""


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
        raise cls(f"{what} {i}: {message}{more}")


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


def pack_tokens(sealed: Any, key_version: int, fmt: int = FORMAT_BOUND) -> Batch:
    """Binary tokens from a sealed batch under one key version: header, nonce, ciphertext and
    tag gathered into one buffer by native code. The nonces must be the format's IV size (16
    bytes; 24 for the XAES-256-GCM formats).

    (:meth:`engine.AesGcm.seal_tokens` seals straight into this layout; this is for batches
    sealed earlier.)
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
        long_enough = lengths >= 2
        first = batch.data[starts[long_enough]]
        second = batch.data[starts[long_enough] + 1]
        ef = np.zeros(wrong_prefix.shape[0], dtype=bool)
        ef[long_enough] = (first == ord("e")) & (second == ord("f"))
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
