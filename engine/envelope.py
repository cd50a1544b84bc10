"""Ciphertext formats: the seed's JSON shape and a compact, versioned token.

**JSON shape** (the seed's TypeScript service reads and writes it)::

    {"iv": b64, "ciphertext": b64, "authTag": b64, "keyVersion": 3,
     "timestamp": "2026-01-31T12:00:00.000Z", "algorithm": "aes-256-gcm"}

Standard base64 with padding; the AAD is only the caller's.

**Binary token** (database columns, bulk data)::

    0xEF | format (1 byte) | key version (uint32 big-endian) | IV (16) | ciphertext | tag (16)

The first 6 bytes are the *header*. Format 1 (what the engine writes) binds the header into the
AAD: ``AAD = header || caller's aad``, so editing the format byte or the key version fails
authentication. Format 2 marks a value converted from the seed's JSON shape (its AAD is the
caller's only); such a value keeps its tag, and a changed header still fails to decrypt because it
selects a different key or AAD, but only format 1 authenticates the header itself.

**Text token**: ``"ef1:"`` followed by the binary token in base64url without padding. The prefix
names the text encoding (version 1); the format byte inside names the binary layout.

Bulk packing and parsing are numpy index arithmetic over whole buffers; the Python-level loops run
once per distinct token length, never once per record.

Errors (all :class:`EnvelopeError`, a ``ValueError``):

- :class:`MalformedEnvelope` -- not JSON / not a token / a missing or mistyped field;
- :class:`InvalidBase64` -- bad characters, bad length or non-canonical base64;
- :class:`InvalidLength` -- an IV or tag that is not 16 bytes, a token shorter than 38 bytes;
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
from typing import Any, Callable

import numpy as np

from .batch import Batch, as_batch
from .errors import EngineError

__all__ = [
    "ALGORITHM",
    "FORMAT_BOUND",
    "FORMAT_SEED",
    "TEXT_PREFIX",
    "EncryptedData",
    "EnvelopeError",
    "InvalidBase64",
    "InvalidLength",
    "MalformedEnvelope",
    "ParsedTokens",
    "UnknownFormat",
    "decode_text_tokens",
    "encode_text_tokens",
    "is_text_token",
    "pack_tokens",
    "sealed_to_text_tokens",
    "parse_tokens",
    "copy_records",
    "prefix_each",
    "take",
    "text_token_mask",
    "token_header",
]

ALGORITHM = "aes-256-gcm"
MAGIC = 0xEF
FORMAT_BOUND = 1
FORMAT_SEED = 2
FORMATS = (FORMAT_BOUND, FORMAT_SEED)
HEADER_BYTES = 6
IV_BYTES = 16
TAG_BYTES = 16
OVERHEAD = HEADER_BYTES + IV_BYTES + TAG_BYTES
MAX_KEY_VERSION = 2**32 - 1
TEXT_PREFIX = "ef1:"
_PREFIX_BYTES = TEXT_PREFIX.encode("ascii")


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
_ERRORS = {
    _MALFORMED: (MalformedEnvelope, "not an engine token"),
    _BASE64: (InvalidBase64, "invalid base64url in token"),
    _LENGTH: (InvalidLength, f"token too short (a token holds at least {OVERHEAD} bytes)"),
    _FORMAT: (UnknownFormat, "unknown token format"),
}


def token_header(key_version: int, fmt: int = FORMAT_BOUND) -> bytes:
    """The 6-byte token header: magic, format, key version (uint32 big-endian)."""
    if type(key_version) is not int or not 1 <= key_version <= MAX_KEY_VERSION:
        raise MalformedEnvelope("key version must be an integer from 1 to 2**32 - 1")
    return bytes((MAGIC, fmt)) + key_version.to_bytes(4, "big")


def token_aad(fmt: int, key_version: int, aad: bytes | None) -> bytes | None:
    """The AAD a token of this format was sealed with."""
    if fmt == FORMAT_BOUND:
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
    if ts is not None and ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ts


@dataclass(frozen=True)
class EncryptedData:
    """One encrypted value: IV, ciphertext, tag, key version and time of encryption.

    ``timestamp`` is a timezone-aware :class:`~datetime.datetime` (UTC; naive values and ISO
    strings are accepted and converted), or ``None`` for a value read from a token (tokens carry
    no time). ``header_bound`` is True when the AAD began with the token header (format 1, what
    :meth:`EncryptionService.encrypt_many` writes) and False for the seed's AAD (the JSON shape).

    Raises:
        InvalidLength: the IV or tag is not 16 bytes.
        MalformedEnvelope: a field has the wrong type or the key version is out of range.
    """

    iv: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)
    auth_tag: bytes = field(repr=False)
    key_version: int
    timestamp: datetime | None = None
    header_bound: bool = False

    def __post_init__(self) -> None:
        for name in ("iv", "ciphertext", "auth_tag"):
            object.__setattr__(self, name, _coerce_bytes(getattr(self, name), name))
        if len(self.iv) != IV_BYTES:
            raise InvalidLength(f"iv must be {IV_BYTES} bytes, got {len(self.iv)}")
        if len(self.auth_tag) != TAG_BYTES:
            raise InvalidLength(f"authTag must be {TAG_BYTES} bytes, got {len(self.auth_tag)}")
        v = self.key_version
        if type(v) is not int or not 1 <= v <= MAX_KEY_VERSION:
            raise MalformedEnvelope("keyVersion must be an integer from 1 to 2**32 - 1")
        object.__setattr__(self, "timestamp", _timestamp(self.timestamp))

    @property
    def format(self) -> int:
        """The token format this value belongs to (1: header bound, 2: seed AAD)."""
        return FORMAT_BOUND if self.header_bound else FORMAT_SEED

    def aad(self, aad: bytes | None) -> bytes | None:
        """The full AAD to decrypt with, given the caller's."""
        return token_aad(self.format, self.key_version, aad)

    # ---- the seed's JSON shape ----

    def to_dict(self) -> dict[str, Any]:
        """The seed's shape: ``iv``, ``ciphertext``, ``authTag`` (base64), ``keyVersion``,
        ``timestamp`` (ISO-8601 in UTC with milliseconds and ``Z``, as JavaScript writes it,
        or ``None``), ``algorithm``.

        Raises:
            EnvelopeError: the value is header-bound (format 1): the seed could not open it.
        """
        if self.header_bound:
            raise EnvelopeError(
                "this value was sealed as a token (its header is part of the AAD); "
                "keep it as a token, the seed's JSON shape cannot express it"
            )
        ts = self.timestamp
        return {
            "iv": _b64(self.iv),
            "ciphertext": _b64(self.ciphertext),
            "authTag": _b64(self.auth_tag),
            "keyVersion": self.key_version,
            "timestamp": None if ts is None else
            ts.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "algorithm": ALGORITHM,
        }

    @classmethod
    def from_dict(cls, doc: Any) -> "EncryptedData":
        """Parses the seed's shape strictly.

        Raises:
            MalformedEnvelope: not a dict, a missing field, a mistyped key version or timestamp.
            InvalidBase64: a field is not canonical standard base64.
            InvalidLength: IV or tag not 16 bytes.
            UnknownFormat: ``algorithm`` is present and is not ``aes-256-gcm``.
        """
        if not isinstance(doc, dict):
            raise MalformedEnvelope("an encrypted value must be a JSON object")
        missing = [k for k in ("iv", "ciphertext", "authTag", "keyVersion") if k not in doc]
        if missing:
            raise MalformedEnvelope(f"missing field(s): {', '.join(missing)}")
        algorithm = doc.get("algorithm", ALGORITHM)
        if not isinstance(algorithm, str) or algorithm.lower() != ALGORITHM:
            raise UnknownFormat(f"unsupported algorithm (only {ALGORITHM!r} is known)")
        version = doc["keyVersion"]
        if isinstance(version, str) and version.isdecimal() and version.isascii():
            version = int(version)
        if type(version) is not int:
            raise MalformedEnvelope("keyVersion must be an integer")
        return cls(
            iv=_unb64(doc["iv"], "iv"),
            ciphertext=_unb64(doc["ciphertext"], "ciphertext"),
            auth_tag=_unb64(doc["authTag"], "authTag"),
            key_version=version,
            timestamp=_timestamp(doc.get("timestamp")),
        )

    def to_json(self) -> str:
        """The seed's shape as a JSON string (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "EncryptedData":
        """Parses the seed's JSON string (see :meth:`from_dict`).

        Raises:
            MalformedEnvelope: not JSON; and everything :meth:`from_dict` raises.
        """
        try:
            doc = json.loads(text)
        except (ValueError, TypeError):
            raise MalformedEnvelope("not valid JSON") from None
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
                try:
                    text = raw.decode("ascii")
                except UnicodeDecodeError:
                    raise UnknownFormat("not an engine token (bad magic byte)") from None
                raw = _text_to_binary(text)
        if len(raw) < OVERHEAD:
            raise InvalidLength(f"token too short (a token holds at least {OVERHEAD} bytes)")
        if raw[0] != MAGIC:
            raise UnknownFormat("not an engine token (bad magic byte)")
        if raw[1] not in FORMATS:
            raise UnknownFormat(f"unknown token format {raw[1]}")
        version = int.from_bytes(raw[2:6], "big")
        if version < 1:
            raise MalformedEnvelope("key version 0 is not valid")
        return cls(iv=raw[6:22], ciphertext=raw[22:-TAG_BYTES], auth_tag=raw[-TAG_BYTES:],
                   key_version=version, header_bound=raw[1] == FORMAT_BOUND)

    @classmethod
    def parse(cls, value: Any) -> "EncryptedData":
        """An :class:`EncryptedData` from itself, its dict, its JSON string or a token."""
        if isinstance(value, EncryptedData):
            return value
        if isinstance(value, dict):
            return cls.from_dict(value)
        if isinstance(value, str) and value.lstrip().startswith("{"):
            return cls.from_json(value)
        if isinstance(value, (str, bytes, bytearray, memoryview)):
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


# ---------------------------------------------------------------- vectorized base64url

_ENC = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
                     dtype=np.uint8)
_DEC = np.full(256, 255, dtype=np.uint8)
_DEC[_ENC] = np.arange(64, dtype=np.uint8)


_PAIRS = np.arange(4096)
# Two base64url characters for each 12-bit value, as one little-endian uint16.
_LUT12 = _ENC[_PAIRS >> 6].astype(np.uint16) | (_ENC[_PAIRS & 63].astype(np.uint16) << 8)
del _PAIRS


def padded_width(width: int) -> int:
    """Row width :func:`b64url_encode_padded` expects for rows of ``width`` bytes."""
    return -(-width // 3) * 3 + 1


def _encode_into(m: np.ndarray, dest: np.ndarray) -> None:
    """base64url of the rows of ``m`` (see :func:`b64url_encode_padded`) into ``dest``, a
    ``k x groups x 2`` uint16 view (any strides): two characters per 12-bit half of each
    3-byte group.

    Each 3-byte group is read as one unaligned 32-bit word through a strided view; its two
    12-bit halves index a 4096-entry table of character pairs (the indices are made ``intp``
    once, so numpy does not convert them again).
    """
    k, stride = m.shape
    groups = (stride - 1) // 3
    words = np.ndarray((k, groups), dtype="<u4", buffer=m, strides=(stride, 3))
    v = words.byteswap()
    v >>= 8  # a << 16 | b << 8 | c
    v = v.astype(np.intp)
    hi = v >> 12
    v &= 4095
    dest[..., 0] = _LUT12[hi]
    dest[..., 1] = _LUT12[v]


def b64url_encode_padded(m: np.ndarray, width: int) -> np.ndarray:
    """base64url (no padding) of the first ``width`` bytes of each row of ``m``, a C-contiguous
    ``k x padded_width(width)`` uint8 matrix whose bytes from ``width`` to the last-but-one are
    zero (the last one is read and discarded). Returns ``k x ceil(4 * width / 3)`` characters.
    """
    k, stride = m.shape
    groups = (stride - 1) // 3
    out = np.empty((k, groups, 2), dtype=np.uint16)
    _encode_into(m, out)
    return out.view(np.uint8).reshape(k, groups * 4)[:, : (4 * width + 2) // 3]


def b64url_encode_rows(rows: np.ndarray) -> np.ndarray:
    """base64url without padding of each row of a ``k x B`` uint8 matrix: ``k x ceil(4B/3)``."""
    k, width = rows.shape
    m = np.zeros((k, padded_width(width)), dtype=np.uint8)
    m[:, :width] = rows
    return b64url_encode_padded(m, width)


_DEC_TABLE = bytes(_DEC.tolist())


def b64url_decode_rows(chars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decodes each row of a ``k x E`` matrix of base64url characters (no padding).

    Characters become 6-bit values through one ``bytes.translate`` (255 marks a bad character);
    each group of four is packed into a 24-bit word with shifts and masks on whole arrays and
    stored through a strided 32-bit view (stride 3 bytes); the first byte of every group is then
    written again, since a neighbour's fourth byte may have landed on it.

    Returns:
        ``(rows, bad)``: the ``k x floor(3E/4)`` bytes and a boolean per row that is True for
        a bad character, an impossible length (E mod 4 == 1) or non-zero trailing bits.
    """
    k, width = chars.shape
    if width % 4 == 1:
        return np.zeros((k, 0), dtype=np.uint8), np.ones(k, dtype=bool)
    size = (3 * width) // 4
    if k == 0 or width == 0:
        return np.zeros((k, size), dtype=np.uint8), np.zeros(k, dtype=bool)
    groups = (width + 3) // 4
    v = np.zeros((k, groups * 4), dtype=np.uint8)
    sextets = np.ascontiguousarray(chars).tobytes().translate(_DEC_TABLE)
    v[:, :width] = np.frombuffer(sextets, dtype=np.uint8).reshape(k, width)
    bad = v.max(axis=1) == 255
    if width % 4 == 2:
        bad |= (v[:, width - 1] & 15) != 0
    elif width % 4 == 3:
        bad |= (v[:, width - 1] & 3) != 0
    w = v.view("<u4").reshape(k, groups)  # s0 | s1 << 8 | s2 << 16 | s3 << 24
    x = w & 0x3F
    x <<= 18
    t = w & 0x3F00
    t <<= 4
    x |= t
    np.right_shift(w, 10, out=t)
    t &= 0xFC0
    x |= t
    np.right_shift(w, 24, out=t)
    t &= 0x3F
    x |= t
    x <<= 8
    x.byteswap(inplace=True)  # little-endian bytes b0 b1 b2 0
    stride = groups * 3 + 1
    out = np.empty((k, stride), dtype=np.uint8)
    dest = np.ndarray((k, groups), dtype="<u4", buffer=out, strides=(stride, 3))
    dest[...] = x
    # A store's fourth byte may have clobbered the next group's first byte: write those again.
    firsts = np.ndarray((k, groups), dtype=np.uint8, buffer=out, strides=(stride, 3))
    firsts[...] = x.view(np.uint8).reshape(k, groups, 4)[..., 0]
    return out[:, :size], bad


# ---------------------------------------------------------------- batch helpers


def _windows(buf: np.ndarray, width: int) -> np.ndarray:
    """Every ``width``-byte window of ``buf`` as one ``V{width}`` item (a view, no copy):
    indexing it with n starts copies n rows with one ``memcpy`` each."""
    return np.ndarray((buf.shape[0] - width + 1,), dtype=np.dtype((np.void, width)), buffer=buf,
                      strides=(1,))


def _rows(data: np.ndarray, starts: np.ndarray | None, width: int, n: int) -> np.ndarray:
    """``data[s:s+width]`` for each start, as a ``k x width`` matrix (one row copy each).
    ``starts=None`` means n rows packed back to back from byte 0 (a view, no copy)."""
    if starts is None:
        return data[: n * width].reshape(n, width)
    k = len(starts)
    if width == 0 or k == 0:
        return np.empty((k, width), dtype=np.uint8)
    return _windows(data, width)[starts].view(np.uint8).reshape(k, width)


def _put_rows(buf: np.ndarray, starts: np.ndarray | None, rows: np.ndarray) -> None:
    k, width = rows.shape
    if starts is None:
        buf[: k * width].reshape(k, width)[...] = rows
    elif width and k:
        items = np.ascontiguousarray(rows).view(np.dtype((np.void, width))).reshape(k)
        _windows(buf, width)[starts] = items


def _record_dtype(fields: list[tuple[str, int]]) -> np.dtype:
    """A packed structured dtype of void fields: one row of a token matrix."""
    names, formats, offsets, at = [], [], [], 0
    for name, size in fields:
        if size:
            names.append(name)
            formats.append(np.dtype((np.void, size)))
            offsets.append(at)
        at += size
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": at})


def _void(raw: bytes) -> Any:
    return np.frombuffer(raw, dtype=np.dtype((np.void, len(raw))))[0]


def _groups(values: np.ndarray) -> list[tuple[int, np.ndarray | None]]:
    """``(value, indices)`` for each distinct value, ascending; indices ascending. A single
    group covering everything in order has ``indices=None``."""
    n = values.shape[0]
    if n == 0:
        return []
    lo, hi = int(values.min()), int(values.max())
    if lo == hi:
        return [(lo, None)]
    key = (values - lo).astype(np.uint16) if hi - lo < 65536 else values
    order = np.argsort(key, kind="stable")
    ordered = values[order]
    cuts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    bounds = np.concatenate(([0], cuts, [n]))
    return [(int(ordered[a]), order[a:b]) for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]


def copy_records(src: np.ndarray, src_starts: np.ndarray, lengths: np.ndarray,
                 dst: np.ndarray, dst_starts: np.ndarray) -> None:
    """``dst[dst_starts[i]:][:lengths[i]] = src[src_starts[i]:][:lengths[i]]`` for every i.

    Records are grouped by length and each group moves as ``V{length}`` items (one ``memcpy``
    per record, in C); with very many distinct lengths (long, varied records) a per-byte index
    is used instead. Python iterates once per distinct length.
    """
    n = lengths.shape[0]
    if n == 0:
        return
    groups = _groups(lengths)
    if len(groups) > max(256, n // 16):
        total = int(lengths.sum())
        if total:
            shift = np.repeat(src_starts - dst_starts, lengths)
            pos = np.repeat(dst_starts - _offsets(lengths)[:-1], lengths)
            pos += np.arange(total)
            dst[pos] = src[pos + shift]
        return
    for length, idx in groups:
        if length == 0:
            continue
        if idx is None:
            _windows(dst, length)[dst_starts] = _windows(src, length)[src_starts]
        else:
            _windows(dst, length)[dst_starts[idx]] = _windows(src, length)[src_starts[idx]]


def _offsets(lengths: np.ndarray) -> np.ndarray:
    off = np.empty(lengths.shape[0] + 1, dtype=np.int64)
    off[0] = 0
    np.cumsum(lengths, out=off[1:])
    return off


def _body(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """(data from the first record's start, offsets rebased to 0)."""
    o = batch.offsets
    base = int(o[0])
    return batch.data[base : int(o[-1])], (o - base if base else o)


def prefix_each(prefix: bytes, batch: Batch) -> Batch:
    """A batch whose record i is ``prefix || batch[i]``, built with whole-array operations."""
    n = len(batch)
    p = len(prefix)
    if p == 0:
        return batch
    data, off = _body(batch)
    lengths = np.diff(off)
    out_off = _offsets(lengths + p)
    out = np.empty(int(out_off[-1]), dtype=np.uint8)
    copy_records(data, off[:-1], lengths, out, out_off[:-1] + p)
    if n:
        _windows(out, p)[out_off[:-1]] = _void(prefix)
    return Batch._trusted(out, out_off)


def take(batch: Batch, indices: np.ndarray) -> Batch:
    """The records at ``indices``, packed into a new batch (no per-record loop)."""
    data, off = _body(batch)
    lengths = np.diff(off)[indices]
    out_off = _offsets(lengths)
    out = np.empty(int(out_off[-1]), dtype=np.uint8)
    copy_records(data, off[:-1][indices], lengths, out, out_off[:-1])
    return Batch._trusted(out, out_off)


# ---------------------------------------------------------------- bulk tokens


def pack_tokens(sealed: Any, key_version: int, fmt: int = FORMAT_BOUND) -> Batch:
    """Binary tokens for a sealed batch (16-byte nonces), all under one key version.

    Header, nonces, ciphertexts and tags are scattered into one output buffer at offsets computed
    with ``cumsum``: header+nonce and tag as fixed-size row copies, the ciphertexts with
    :func:`copy_records` (one ``memcpy`` per record, grouped by length).

    Returns:
        A :class:`~engine.Batch` of n binary tokens.
    """
    ct = sealed.ciphertexts
    n = len(ct)
    if sealed.nonces.shape[1:] != (IV_BYTES,):
        raise InvalidLength(f"tokens need {IV_BYTES}-byte nonces")
    lengths = ct.lengths()
    head = np.empty((n, HEADER_BYTES + IV_BYTES), dtype=np.uint8)
    head[:, :HEADER_BYTES] = np.frombuffer(token_header(key_version, fmt), dtype=np.uint8)
    head[:, HEADER_BYTES:] = sealed.nonces
    off = _offsets(lengths + OVERHEAD)
    out = np.empty(int(off[-1]), dtype=np.uint8)
    data, _ = _body(ct)
    copy_records(data, np.asarray(ct.offsets[:-1] - ct.offsets[0]), lengths, out,
                 off[:-1] + HEADER_BYTES + IV_BYTES)
    _put_rows(out, off[:-1], head)
    _put_rows(out, off[1:] - TAG_BYTES, np.ascontiguousarray(sealed.tags))
    return Batch._trusted(out, off)


@dataclass(frozen=True)
class ParsedTokens:
    """Bulk-parsed binary tokens: one entry per token, in order."""

    formats: np.ndarray  # uint8 (n,)
    key_versions: np.ndarray  # int64 (n,)
    nonces: np.ndarray  # uint8 (n, 16)
    tags: np.ndarray  # uint8 (n, 16)
    ciphertexts: Batch

    def __len__(self) -> int:
        return len(self.ciphertexts)


def _raise_first(codes: np.ndarray, what: str = "token") -> None:
    bad = np.flatnonzero(codes)
    if bad.shape[0]:
        i = int(bad[0])
        cls, message = _ERRORS[int(codes[i])]
        more = f" (and {bad.shape[0] - 1} more)" if bad.shape[0] > 1 else ""
        raise cls(f"{what} {i}: {message}{more}")


def parse_tokens(tokens: Batch) -> ParsedTokens:
    """Splits binary tokens into formats, key versions, nonces, tags and ciphertexts.

    Raises:
        InvalidLength: a token is shorter than 38 bytes.
        UnknownFormat: a bad magic byte or an unknown format byte.
        MalformedEnvelope: key version 0.
    """
    n = len(tokens)
    data, off = _body(tokens)
    lengths = np.diff(off)
    codes = np.where(lengths < OVERHEAD, _LENGTH, _OK).astype(np.uint8)
    _raise_first(codes)
    starts = off[:-1]
    head = _rows(data, starts, HEADER_BYTES + IV_BYTES, n) if n else np.empty((0, 22), np.uint8)
    tags = _rows(data, off[1:] - TAG_BYTES, TAG_BYTES, n) if n else np.empty((0, 16), np.uint8)
    formats = head[:, 1].copy()
    codes[(head[:, 0] != MAGIC) | ~np.isin(formats, FORMATS)] = _FORMAT
    _raise_first(codes)
    versions = head[:, 2:6].copy().view(">u4").reshape(n).astype(np.int64)
    if n and not versions.all():
        codes[versions == 0] = _MALFORMED
        _raise_first(codes)
    ct_off = _offsets(lengths - OVERHEAD)
    ct_data = np.empty(int(ct_off[-1]), dtype=np.uint8)
    copy_records(data, starts + HEADER_BYTES + IV_BYTES, lengths - OVERHEAD, ct_data, ct_off[:-1])
    ct = Batch._trusted(ct_data, ct_off)
    return ParsedTokens(formats, versions, np.ascontiguousarray(head[:, HEADER_BYTES:]),
                        np.ascontiguousarray(tags), ct)


_CHUNK_ROWS = 1 << 16


def _work_units(lengths: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(length, indices) units: records grouped by length, large groups cut into chunks."""
    units = []
    for length, idx in _groups(lengths):
        if idx is None:
            idx = np.arange(lengths.shape[0])
        for a in range(0, idx.shape[0], _CHUNK_ROWS):
            units.append((length, idx[a : a + _CHUNK_ROWS]))
    return units


def _run(units: list, work: Callable[[Any], None], threads: int | None) -> None:
    """Runs ``work`` on each unit; on several threads when there is enough to share (numpy
    releases the GIL in these loops)."""
    if threads is None:
        from .aead import default_threads

        threads = default_threads()
    if threads <= 1 or len(units) < 2:
        for u in units:
            work(u)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(threads, len(units))) as pool:
        for _ in pool.map(work, units):
            pass


def _text_tokens(token_lengths: np.ndarray, build: Callable[[np.ndarray, int, int], np.ndarray],
                 threads: int | None) -> list[str]:
    """Text tokens for n binary tokens of the given lengths; ``build(idx, length, width)``
    returns the ``k x width`` binary tokens of records ``idx`` (all of ``length`` bytes), zero
    padded to ``width`` (see :func:`b64url_encode_padded`).

    Each unit (records of one length) is encoded straight into one ASCII matrix whose rows are
    ``"ef1:" + characters + r newlines`` (r fills the row to whole 4-character groups plus one),
    split into strings by ``str.split`` in C and placed at their indices through an object array.
    No buffer the size of the whole output is built (fresh memory costs page faults).
    """
    n = token_lengths.shape[0]
    if n == 0:
        return []
    p = len(_PREFIX_BYTES)
    prefix_item = _void(_PREFIX_BYTES)
    out = np.empty(n, dtype=object)

    def work(unit: tuple[int, np.ndarray]) -> None:
        length, idx = unit
        rows = build(idx, length, padded_width(length))
        k = idx.shape[0]
        groups = (length + 2) // 3
        e = (4 * length + 2) // 3
        tail = 4 * groups + 1 - e
        width = p + 4 * groups + 1
        m = np.empty((k, width), dtype=np.uint8)
        _encode_into(rows, np.ndarray((k, groups, 2), dtype="<u2", buffer=m, offset=p,
                                      strides=(width, 4, 2)))
        frame = m.view(_record_dtype([("p", p), ("b", e), ("nl", tail)])).reshape(k)
        frame["p"] = prefix_item
        frame["nl"] = _void(b"\n" * tail)
        strings = str(memoryview(m.reshape(-1)), "ascii").split("\n" * tail)
        strings.pop()
        column = np.empty(k, dtype=object)
        column[:] = strings
        out[idx] = column

    _run(_work_units(token_lengths), work, threads)
    return out.tolist()


def encode_text_tokens(tokens: Batch, *, threads: int | None = None) -> list[str]:
    """Text tokens (``"ef1:" + base64url``) for a batch of binary tokens, as a list of str.

    Records are grouped by length; each group is encoded as one matrix. The results are written
    newline-separated into one ASCII buffer and split into strings by ``str.split`` in C.
    """
    data, off = _body(tokens)

    def build(idx: np.ndarray, length: int, width: int) -> np.ndarray:
        m = np.zeros((idx.shape[0], width), dtype=np.uint8)
        m[:, :length] = _rows(data, off[idx], length, 0)
        return m

    return _text_tokens(np.diff(off), build, threads)


def sealed_to_text_tokens(sealed: Any, key_version: int, fmt: int = FORMAT_BOUND, *,
                          threads: int | None = None) -> list[str]:
    """Text tokens straight from a sealed batch (same result as ``pack_tokens`` followed by
    :func:`encode_text_tokens`, without building the binary tokens first)."""
    if sealed.nonces.shape[1:] != (IV_BYTES,):
        raise InvalidLength(f"tokens need {IV_BYTES}-byte nonces")
    header = _void(token_header(key_version, fmt))
    data, off = _body(sealed.ciphertexts)
    nonces = np.ascontiguousarray(sealed.nonces).view(np.dtype((np.void, IV_BYTES))).reshape(-1)
    tags = np.ascontiguousarray(sealed.tags).view(np.dtype((np.void, TAG_BYTES))).reshape(-1)

    def build(idx: np.ndarray, length: int, width: int) -> np.ndarray:
        size = length - OVERHEAD
        k = idx.shape[0]
        m = np.empty((k, width), dtype=np.uint8)
        rec = m.view(_record_dtype([("h", HEADER_BYTES), ("iv", IV_BYTES), ("ct", size),
                                    ("tag", TAG_BYTES), ("pad", width - length)])).reshape(k)
        rec["h"] = header
        rec["iv"] = nonces[idx]
        if size:
            rec["ct"] = _windows(data, size)[off[idx]]
        rec["tag"] = tags[idx]
        rec["pad"] = _void(bytes(width - length))
        return m

    return _text_tokens(np.diff(off) + OVERHEAD, build, threads)


def _text_batch(tokens: Any) -> Batch:
    if isinstance(tokens, Batch):
        return tokens
    if isinstance(tokens, (list, tuple)):
        try:
            return Batch.from_list(tokens)
        except (TypeError, ValueError):
            raise MalformedEnvelope("tokens must all be str or bytes") from None
    return as_batch(tokens, "tokens")


def _decode_text(batch: Batch) -> tuple[Batch, np.ndarray]:
    """(binary tokens, per-record error codes); failed records decode to zero bytes."""
    n = len(batch)
    data, off = _body(batch)
    lengths = np.diff(off)
    codes = np.full(n, _MALFORMED, dtype=np.uint8)
    p = len(_PREFIX_BYTES)
    long_enough = np.flatnonzero(lengths >= p)
    if long_enough.shape[0]:
        heads = _rows(data, off[long_enough], p, n)
        ok = (heads == np.frombuffer(_PREFIX_BYTES, dtype=np.uint8)).all(axis=1)
        ef = (heads[:, :2] == np.frombuffer(b"ef", dtype=np.uint8)).all(axis=1)
        codes[long_enough[ef]] = _FORMAT
        codes[long_enough[ok]] = _OK
    decoded: list[tuple[np.ndarray, np.ndarray]] = []
    out_len = np.zeros(n, dtype=np.int64)
    candidates = np.flatnonzero(codes == _OK)
    for width, sub in _groups(lengths[candidates]):
        idx = candidates if sub is None else candidates[sub]
        e = width - p
        size = (3 * e) // 4
        if e % 4 == 1:
            codes[idx] = _BASE64
            continue
        if size < OVERHEAD:
            codes[idx] = _LENGTH
            continue
        chars = _rows(data, off[idx] + p, e, n)
        rows, bad = b64url_decode_rows(chars)
        bad_format = (rows[:, 0] != MAGIC) | ~np.isin(rows[:, 1], FORMATS)
        codes[idx[bad_format]] = _FORMAT
        codes[idx[bad]] = _BASE64
        good = ~(bad | bad_format)
        out_len[idx[good]] = size
        decoded.append((idx[good], rows[good]))
    out_off = _offsets(out_len)
    buf = np.empty(int(out_off[-1]), dtype=np.uint8)
    for idx, rows in decoded:
        _put_rows(buf, out_off[idx], rows)
    return Batch._trusted(buf, out_off), codes


def decode_text_tokens(tokens: Any) -> Batch:
    """Binary tokens from text tokens (a list of str/bytes, a Batch or a pyarrow column).

    Raises:
        MalformedEnvelope: a value is not a token.
        InvalidBase64: bad base64url.
        InvalidLength: a token too short.
        UnknownFormat: an unknown prefix, magic or format byte.
    """
    binary, codes = _decode_text(_text_batch(tokens))
    _raise_first(codes)
    return binary


def text_token_mask(batch: Batch) -> np.ndarray:
    """A boolean per record: True where the record is a strictly valid text token."""
    return _decode_text(batch)[1] == _OK


def as_binary_tokens(tokens: Any) -> Batch:
    """Binary tokens from text or binary tokens (each batch must be one kind or the other).

    Raises:
        EnvelopeError: as :func:`decode_text_tokens` and :func:`parse_tokens`.
    """
    batch = _text_batch(tokens)
    if len(batch) == 0:
        return batch
    data, off = _body(batch)
    nonempty = off[:-1][np.diff(off) > 0]
    first = data[nonempty]
    if nonempty.shape[0] == len(batch) and bool((first == MAGIC).all()):
        return batch
    return decode_text_tokens(batch)
