"""The engine's binary and text tokens on the wire: layout constants, format numbers, headers,
and the errors of every ciphertext format.

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

Errors (all :class:`EnvelopeError`, a ``ValueError``):

- :class:`MalformedEnvelope` -- not JSON / not a token / a missing or mistyped field;
- :class:`InvalidBase64` -- bad characters, bad length or non-canonical base64;
- :class:`InvalidLength` -- an IV of the wrong size for its algorithm, a tag that is not 16
  bytes, a token shorter than its format's header, IV and tag;
- :class:`UnknownFormat` -- an unknown algorithm, text prefix, magic byte or format byte.

An unknown key version is reported by the key provider as :class:`engine.keys.UnknownKeyVersion`.
"""

from __future__ import annotations

import numpy as np

from ..aead import TAG_BYTES, AesGcm
from ..errors import EngineError
from ..xaes import XAesGcm

__all__ = [
    "ALGORITHM",
    "ALGORITHM_IV_BYTES",
    "BOUND_FORMATS",
    "EnvelopeError",
    "FORMATS",
    "FORMAT_ALGORITHMS",
    "FORMAT_BOUND",
    "FORMAT_IV_BYTES",
    "FORMAT_OVERHEAD",
    "FORMAT_UNBOUND",
    "FORMAT_XAES",
    "FORMAT_XAES_UNBOUND",
    "HEADER_BYTES",
    "IV_BYTES",
    "InvalidBase64",
    "InvalidLength",
    "MAGIC",
    "MAX_KEY_VERSION",
    "MalformedEnvelope",
    "OVERHEAD",
    "TEXT_PREFIX",
    "TEXT_PREFIX_BYTES",
    "UnknownFormat",
    "token_aad",
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
