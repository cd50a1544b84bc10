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
    "b64_decode",
    "b64_encode",
    "b64url_decode",
    "b64url_encode",
    "b64url_lengths",
    "batch_to_text",
    "concat_each",
    "interleave",
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
        return str(out.data, "utf-8").split(chr(sep))[:-1]
    except UnicodeDecodeError:  # it holds the decrypted buffer: not to be the error's context
        pass
    raise InvalidArgument("decrypted data is not valid UTF-8 text")


_SEPARATORS = (0, 31, 30, 29, 28, 1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21,
               22, 23, 24, 25, 26, 27, 127, 10, 9, 13)


def prefix_each(prefix: bytes, batch: Batch, *, threads: int | None = None) -> Batch:
    """A new batch whose record i is ``prefix || batch[i]`` (two native gathers, no loop)."""
    return concat_each([prefix, batch], threads=threads)


def concat_each(parts: Sequence[Any], *, threads: int | None = None) -> Batch:
    """A new batch whose record i is ``parts[0][i] || parts[1][i] || ...``: each part is a
    :class:`Batch` of n records or one ``bytes`` value repeated for every record (one native
    gather per part, no per-record loop).

    Raises:
        InvalidArgument: no Batch among the parts, or Batches of different sizes.
    """
    sizes = {len(p) for p in parts if isinstance(p, Batch)}
    if len(sizes) != 1:
        raise InvalidArgument("concat_each needs at least one Batch, all of the same size")
    n = sizes.pop()
    lengths = [p.lengths() if isinstance(p, Batch) else np.full(n, len(p), dtype=np.int64)
               for p in parts]
    off = offsets_of(np.sum(lengths, axis=0) if lengths else np.zeros(n, dtype=np.int64))
    out = empty_bytes(int(off[-1]), secret=True)  # the records may be plaintext
    starts = off[:-1].copy()
    threads = check_threads(threads)
    for part, part_lengths in zip(parts, lengths):
        if n and isinstance(part, Batch):
            _native.gather(n, part.data, part.offsets[:-1], part_lengths, out, starts, threads)
        elif n and len(part):
            _native.gather(n, bytes(part), None, part_lengths, out, starts, threads)
        starts += part_lengths
    return Batch._trusted(out, off)


def interleave(n: int, parts: Sequence[tuple[Any, Batch]], *,
               threads: int | None = None) -> Batch:
    """A batch of ``n`` records where record ``indices[j]`` is ``part[j]`` for each
    ``(indices, part)`` of ``parts`` (the inverse of :meth:`Batch.take`); records no part
    names are empty. One native gather per part.

    Raises:
        InvalidArgument: an index outside ``0..n-1``, or a part whose size differs from its
            indices.
    """
    lengths = np.zeros(n, dtype=np.int64)
    checked = []
    for indices, part in parts:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.shape != (len(part),) or (idx.shape[0] and (int(idx.min()) < 0
                                                           or int(idx.max()) >= n)):
            raise InvalidArgument("interleave needs one index in 0..n-1 per record of a part")
        lengths[idx] = part.lengths()
        checked.append((idx, part))
    off = offsets_of(lengths)
    out = empty_bytes(int(off[-1]), secret=True)
    threads = check_threads(threads)
    for idx, part in checked:
        if idx.shape[0]:
            _native.gather(idx.shape[0], part.data, part.offsets[:-1], part.lengths(), out,
                           off[:-1][idx], threads)
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


# The standard alphabet (RFC 4648 section 4) differs from base64url in two characters; the
# other alphabet's two are mapped to a byte the base64url decoder refuses.
_STD_TO_URL = np.arange(256, dtype=np.uint8)
_STD_TO_URL[[ord("+"), ord("/"), ord("-"), ord("_")]] = [ord("-"), ord("_"), ord("!"), ord("!")]
_URL_TO_STD = np.arange(256, dtype=np.uint8)
_URL_TO_STD[[ord("-"), ord("_")]] = [ord("+"), ord("/")]


def b64_encode(batch: Batch, *, threads: int | None = None) -> Batch:
    """Standard base64 with padding (what JavaScript's ``Buffer.toString("base64")`` and
    Python's ``base64.b64encode`` write) of every record, by native passes."""
    url = b64url_encode(batch, threads=threads)
    std = Batch._trusted(_URL_TO_STD[url.data], url.offsets)
    pad = (3 - batch.lengths() % 3) % 3
    return concat_each([std, Batch._trusted(np.full(int(pad.sum()), ord("="), dtype=np.uint8),
                                             offsets_of(pad))], threads=threads)


def b64_decode(batch: Batch, *, threads: int | None = None) -> tuple[Batch, np.ndarray]:
    """Decodes standard base64 with padding, strictly (a length that is a multiple of 4, no
    character of base64url, canonical padding and trailing bits), by native passes.

    Returns:
        ``(decoded, status)`` as :func:`b64url_decode`: bad records decode to zero bytes and
        have a non-zero status.
    """
    n = len(batch)
    lengths = batch.lengths()
    ends = batch.offsets[1:]

    def ends_with_pad(k: int) -> np.ndarray:
        """Whether the k-th byte from the end of each record is "="."""
        found = np.zeros(n, dtype=bool)
        long_enough = np.flatnonzero(lengths >= k)
        found[long_enough] = batch.data[ends[long_enough] - k] == ord("=")
        return found

    last = ends_with_pad(1)
    pad = last.astype(np.int64) + (last & ends_with_pad(2))
    first = int(batch.offsets[0])
    url = Batch._trusted(_STD_TO_URL[batch.data[first : int(batch.offsets[-1])]],
                         batch.offsets - first)
    # A length that is not a multiple of 4 is cut to one character, which the decoder refuses
    # as a bad length (and zero-fills, like every record it refuses).
    body = np.where(lengths % 4 != 0, 1, lengths - pad)
    return b64url_decode(url.slices(url.offsets[:-1], body), threads=threads)
