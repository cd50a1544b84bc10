"""Record-wise codecs over whole batches, run by native code with no per-record Python: base64url
(RFC 4648 section 5, no padding), UTF-8 text, prefixes and scattered copies.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import _native
from .batch import Batch
from .buffers import byte_view, check_threads, empty_bytes, offsets_of
from .errors import InvalidArgument

__all__ = [
    "B64_CHARACTER",
    "B64_LENGTH",
    "B64_NONCANONICAL",
    "B64_PREFIX",
    "b64url_decode",
    "b64url_encode",
    "b64url_lengths",
    "batch_to_text",
    "prefix_each",
    "scatter",
]

def b64url_lengths(lengths: np.ndarray) -> np.ndarray:
    """base64url (no padding) sizes of records of the given lengths."""
    return lengths // 3 * 4 + np.where(lengths % 3 != 0, lengths % 3 + 1, 0)


def scatter(out: Any, starts: Sequence[Any], parts: Sequence[Batch], *,
            threads: int | None = None) -> None:
    """Copies record i of ``parts[k]`` to ``out[starts[k][i]:]`` for every k and i (native).

    Raises:
        InvalidArgument: ``out`` is not writable, or a record would land outside it.
    """
    target = byte_view(out, "out", writable=True)
    for where, part in zip(starts, parts):
        n = len(part)
        where = np.ascontiguousarray(where, dtype=np.int64)
        if where.shape != (n,):
            raise InvalidArgument("scatter needs one start per record")
        lengths = part.lengths()
        if n and (int(where.min()) < 0 or bool((where > target.shape[0] - lengths).any())):
            raise InvalidArgument("a record would land outside the output buffer")
        if n:
            _native.gather(n, part.data, part.offsets[:-1], lengths, target, where,
                           check_threads(threads))


def batch_to_text(batch: Batch) -> list[str]:
    """Each record of a batch decoded from UTF-8 as one str, without a per-record Python loop.

    ASCII records (text tokens, most identifiers) become str objects straight from the buffer in
    C. Other text is joined with an ASCII control byte that occurs in none of the records, and the
    whole buffer is decoded and split in C; only when every candidate separator occurs in the data
    does it fall back to decoding record by record.

    Raises:
        InvalidArgument: a record is not valid UTF-8 (the message shows no content).
    """
    n = len(batch)
    if n == 0:
        return []
    try:
        return _native.ascii_strings(batch.data, batch.offsets)
    except ValueError:  # not ASCII: UTF-8 below
        pass
    data, off = batch.data, batch.offsets
    data = data[int(off[0]) : int(off[-1])]
    off = off - off[0] if off[0] else off
    sep = next((c for c in _SEPARATORS if not (data == c).any()), None)
    try:
        if sep is None:
            return [bytes(v).decode("utf-8") for v in batch]
        lengths = np.diff(off)
        out_off = offsets_of(lengths + 1)
        out = empty_bytes(int(out_off[-1]), secret=True)
        scatter(out, [out_off[:-1]], [batch])
        out[out_off[1:] - 1] = sep
        return str(memoryview(out), "utf-8").split(chr(sep))[:-1]
    except UnicodeDecodeError:  # it holds the decrypted buffer: not to be the error's context
        pass
    raise InvalidArgument("decrypted data is not valid UTF-8 text")


_SEPARATORS = (0, 31, 30, 29, 28, 1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21,
               22, 23, 24, 25, 26, 27, 127, 10, 9, 13)


def prefix_each(prefix: bytes, batch: Batch, *, threads: int | None = None) -> Batch:
    """A new batch whose record i is ``prefix || batch[i]`` (two native gathers, no loop)."""
    n, p = len(batch), len(prefix)
    lengths = batch.lengths()
    off = offsets_of(lengths + p)
    out = empty_bytes(int(off[-1]))
    starts = off[:-1]
    if n and p:
        _native.gather(n, prefix, None, np.full(n, p, dtype=np.int64), out, starts, check_threads(threads))
    if n:
        _native.gather(n, batch.data, batch.offsets[:-1], lengths, out, starts + p, check_threads(threads))
    return Batch._trusted(out, off)


def b64url_encode(batch: Batch, *, prefix: bytes = b"",
                  threads: int | None = None) -> Batch:
    """A batch of ``prefix || base64url(record)`` for every record (RFC 4648 section 5 alphabet,
    no padding), written by native code on threads."""
    off = offsets_of(b64url_lengths(batch.lengths()) + len(prefix))
    out = empty_bytes(int(off[-1]))
    _native.b64url_encode(len(batch), batch.data, batch.offsets, prefix, out, off,
                          check_threads(threads))
    return Batch._trusted(out, off)


B64_PREFIX = _native.B64_PREFIX
B64_LENGTH = _native.B64_LENGTH
B64_CHARACTER = _native.B64_CHARACTER
B64_NONCANONICAL = _native.B64_NONCANONICAL


def b64url_decode(batch: Batch, *, prefix: bytes = b"",
                  threads: int | None = None) -> tuple[Batch, np.ndarray]:
    """Checks each record's prefix and decodes the rest (strict: base64url alphabet, no padding,
    canonical trailing bits).

    Returns:
        ``(decoded, status)``: a batch of decoded records (bad ones zero-filled) and a
        ``uint8`` status per record: 0 ok, or ``B64_PREFIX``, ``B64_LENGTH``, ``B64_CHARACTER``,
        ``B64_NONCANONICAL``.
    """
    p = len(prefix)
    chars = np.maximum(batch.lengths() - p, 0)
    rem = chars % 4
    sizes = chars // 4 * 3 + np.where(rem > 1, rem - 1, 0)
    off = offsets_of(sizes)
    out = empty_bytes(int(off[-1]))
    status = np.empty(len(batch), dtype=np.uint8)
    _native.b64url_decode(len(batch), batch.data, batch.offsets, prefix, out, off, status,
                          check_threads(threads))
    return Batch._trusted(out, off), status
