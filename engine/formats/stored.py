"""Stored values of any kind, in bulk: binary tokens, text tokens or the JSON envelope (text,
or PostgreSQL jsonb read as text), read into one batch of binary tokens and written back in the
kind each value had. The JSON envelopes of a batch are parsed by one pass over Arrow arrays
(:func:`parse_stored_values`), which must agree with :meth:`engine.formats.envelope.EncryptedData.from_json`
on every document; a property test holds them to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..aead import TAG_BYTES, AesGcm
from ..batch import Batch
from ..codecs import (
    b64_decode,
    b64_encode,
    concat_each,
    interleave,
)
from ..xaes import XAesGcm
from .envelope import EncryptedData, _timestamp
from .json_extras import keep_extra_members
from .tokens import _decode_text, _header_codes, _header_rows, parse_tokens, text_tokens_batch
from .wire import (
    _OK,
    ALGORITHM,
    BOUND_FORMATS,
    FORMAT_ALGORITHMS,
    FORMAT_IV_BYTES,
    FORMAT_UNBOUND,
    FORMAT_XAES_UNBOUND,
    HEADER_BYTES,
    MAGIC,
    MAX_KEY_VERSION,
    EnvelopeError,
    MalformedEnvelope,
)

__all__ = [
    "StoredValues",
    "VALUE_BINARY_TOKEN",
    "VALUE_JSON",
    "VALUE_NULL",
    "VALUE_TEXT_TOKEN",
    "format_stored_values",
    "parse_stored_values",
]


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
            members that are not the engine's (:func:`engine.formats.json_extras.keep_extra_members`).

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
_EDGE_YEARS = r"^(0001|9999)-"
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
    # in years 1 and 9999 an offset can put the time outside datetime's range in UTC, which
    # the reference refuses: it decides those
    simple = pc.and_kleene(simple, pc.invert(pc.match_substring_regex(ts, _EDGE_YEARS)))
    simple = pc.fill_null(pc.or_kleene(pc.is_null(ts), simple), False).to_numpy(
        zero_copy_only=False)
    # a null algorithm is none given (aes-256-gcm) or "algorithm": null, which the reference
    # refuses: a value that may name the member (its name, or any escape) goes to the reference
    unnamed = pc.is_null(algorithm).to_numpy(zero_copy_only=False)
    if unnamed.any():  # the engine names the algorithm: most batches have none without it
        text = values.to_arrow()
        may_name = pc.or_(pc.match_substring(text, "lgorithm"), pc.match_substring(text, "\\"))
        simple &= ~(unnamed & may_name.to_numpy(zero_copy_only=False))
    unsure = np.flatnonzero(ok & ~simple)
    ok &= simple
    heads = np.empty((n, HEADER_BYTES), dtype=np.uint8)
    heads[:, 0] = MAGIC
    heads[:, 1] = np.where(xaes, FORMAT_XAES_UNBOUND, FORMAT_UNBOUND)
    heads[:, 2:] = np.where(ok, versions, 1).astype(">u4").view(np.uint8).reshape(n, 4)
    head = Batch._trusted(heads.reshape(-1), np.arange(n + 1, dtype=np.int64) * HEADER_BYTES)
    return concat_each([head, iv, ct, tag], threads=threads), ok, unsure
