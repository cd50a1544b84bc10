"""Binary and text tokens in bulk: headers checked, tokens packed, parsed, and converted
between their binary and text forms, as native passes over whole batches (no per-record Python).
The layout is in :mod:`engine.formats.wire`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..aead import TAG_BYTES
from ..batch import Batch, as_batch
from ..buffers import empty_bytes, offsets_of
from ..codecs import (
    B64_CHARACTER,
    B64_LENGTH,
    B64_NONCANONICAL,
    B64_PREFIX,
    b64url_decode,
    b64url_encode,
    batch_to_text,
    scatter,
)
from .wire import (
    _BASE64,
    _ERRORS,
    _FORMAT,
    _LENGTH,
    _MALFORMED,
    _OK,
    FORMAT_BOUND,
    FORMAT_IV_BYTES,
    FORMAT_OVERHEAD,
    FORMATS,
    HEADER_BYTES,
    IV_BYTES,
    MAGIC,
    MAX_KEY_VERSION,
    OVERHEAD,
    TEXT_PREFIX_BYTES,
    InvalidLength,
    MalformedEnvelope,
    UnknownFormat,
    token_header,
)

__all__ = [
    "ParsedTokens",
    "TokenHeaders",
    "as_binary_tokens",
    "decode_text_tokens",
    "encode_text_tokens",
    "pack_tokens",
    "parse_headers",
    "parse_tokens",
    "sealed_to_text_tokens",
    "text_token_mask",
    "text_tokens_batch",
]


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

    def groups(self) -> list[tuple[int, int, np.ndarray | None]]:
        """``(key version, format, indices)`` for each distinct header, in ascending order of
        version then format; ``indices`` is None when every token has that header."""
        n = self.formats.shape[0]
        if n == 0:
            return []
        key = self.key_versions * 256 + self.formats  # a version is below 2**32: no overflow
        if bool((key == key[0]).all()):
            return [(int(self.key_versions[0]), int(self.formats[0]), None)]
        values, inverse = np.unique(key, return_inverse=True)
        return [(g // 256, g % 256, np.flatnonzero(inverse == i))
                for i, g in enumerate(values.tolist())]


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
