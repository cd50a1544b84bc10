"""Whole-array building blocks of the column format: LEB128 varints and per-group bitmaps, written
and read with numpy and the engine's native gathers, never one value at a time in Python.

A *group* is a run of consecutive items that belongs to one stored value (one row); writers take
group bounds (``G + 1`` item indices) and return a :class:`~engine.Batch` of one record per group,
readers take one cursor per group into a shared buffer and give back the items of every group,
concatenated in group order.
"""

from __future__ import annotations

import numpy as np

from ..batch import Batch
from ..buffers import offsets_of
from .errors import MalformedColumnValue

__all__ = ["MAX_COUNT", "counts_per_group", "group_bits", "read_group_bits", "read_uvarints",
           "read_uvarint_blocks", "segment_arange", "take_ranges", "uvarint", "uvarint_batch",
           "read_uvarint"]

MAX_COUNT = 1 << 48  # lengths and counts above this are refused (no int64 sum can overflow)
_VARINT_MAX_BYTES = 10


def uvarint(value: int) -> bytes:
    """``value`` (a non-negative int below 2**64) as an unsigned LEB128 varint, minimal."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_uvarint(buf: bytes | memoryview, pos: int, end: int | None = None) -> tuple[int, int]:
    """(value, position after it) of the minimal varint at ``buf[pos]``.

    Raises:
        MalformedColumnValue: it runs past ``end``, is longer than 10 bytes or not minimal.
    """
    end = len(buf) if end is None else end
    value = shift = 0
    for i in range(_VARINT_MAX_BYTES):
        if pos + i >= end:
            break
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            if (i and byte == 0) or value >= 1 << 64:
                break
            return value, pos + i + 1
    raise MalformedColumnValue("a malformed varint")


def uvarint_batch(values: np.ndarray) -> Batch:
    """One record per value: its minimal LEB128 varint."""
    v = np.ascontiguousarray(values, dtype=np.uint64)
    n = v.shape[0]
    sizes = np.ones(n, dtype=np.int64)
    for k in range(1, _VARINT_MAX_BYTES):
        sizes += v >= np.uint64(1 << (7 * k))
    width = int(sizes.max()) if n else 1
    grid = np.empty((n, width), dtype=np.uint8)
    for k in range(width):
        grid[:, k] = ((v >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        grid[:, k] |= np.where(k + 1 < sizes, 0x80, 0).astype(np.uint8)
    keep = np.arange(width)[None, :] < sizes[:, None]
    return Batch._trusted(grid[keep], offsets_of(sizes))


def segment_arange(counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(c) for c in counts])``, without the loop."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    starts = offsets_of(counts)[:-1]
    return np.arange(total, dtype=np.int64) - np.repeat(starts, counts)


def counts_per_group(flags: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """How many of ``flags`` are set in each group (``bounds``: G + 1 item indices)."""
    running = np.zeros(flags.shape[0] + 1, dtype=np.int64)
    np.cumsum(flags, out=running[1:])
    return running[bounds[1:]] - running[bounds[:-1]]


def take_ranges(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The bytes ``buf[starts[i] : starts[i] + lengths[i]]`` of every i, concatenated (one
    native gather; the caller has checked the ranges)."""
    whole = Batch._trusted(buf, np.array([0, buf.shape[0]], dtype=np.int64))
    return whole.slices(starts, lengths).data


def group_bits(bits: np.ndarray, bounds: np.ndarray) -> Batch:
    """Each group's bits as a bitmap of ``ceil(k / 8)`` bytes, least significant bit first (as
    Arrow's validity bitmaps), padding bits zero."""
    counts = np.diff(bounds)
    nbytes = (counts + 7) // 8
    off = offsets_of(nbytes)
    padded = np.zeros(int(off[-1]) * 8, dtype=bool)
    items = int(bounds[-1] - bounds[0])
    if items:
        groups = np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)
        local = np.arange(items, dtype=np.int64) - np.repeat(bounds[:-1] - bounds[0], counts)
        padded[off[:-1][groups] * 8 + local] = bits[int(bounds[0]):int(bounds[-1])]
    return Batch._trusted(np.packbits(padded, bitorder="little"), off)


def _check_room(pos: np.ndarray, end: np.ndarray, need: np.ndarray) -> None:
    if bool(((need < 0) | (need > end - pos)).any()):
        raise MalformedColumnValue("a value is shorter than its type requires")


def read_group_bits(buf: np.ndarray, pos: np.ndarray, end: np.ndarray,
                    counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the bits of every group, concatenated; the bytes each group's bitmap takes).

    Raises:
        MalformedColumnValue: a bitmap runs past its value, or has a padding bit set.
    """
    counts = np.asarray(counts, dtype=np.int64)
    nbytes = (counts + 7) // 8
    _check_room(pos, end, nbytes)
    raw = take_ranges(buf, pos, nbytes)
    unpacked = np.unpackbits(raw, bitorder="little").view(bool)
    bit_off = offsets_of(nbytes)[:-1] * 8
    bits = unpacked[np.repeat(bit_off, counts) + segment_arange(counts)]
    if int(np.count_nonzero(unpacked)) != int(np.count_nonzero(bits)):
        raise MalformedColumnValue("a bitmap has a padding bit set")
    return bits, nbytes


def read_uvarints(buf: np.ndarray, pos: np.ndarray, end: np.ndarray,
                  max_bytes: int = _VARINT_MAX_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """(values, sizes) of the varint at each position, each before its ``end``.

    Raises:
        MalformedColumnValue: a varint runs past its end, is longer than ``max_bytes``, is not
            minimal, or is at least :data:`MAX_COUNT`.
    """
    n = pos.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if bool((pos >= end).any()):
        raise MalformedColumnValue("a varint runs past the end of its value")
    first = buf[pos]
    values = (first & 0x7F).astype(np.int64)
    sizes = np.ones(n, dtype=np.int64)
    open_ = np.flatnonzero(first >= 0x80)  # most varints are one byte: only the rest loop
    for k in range(1, max_bytes):
        if not open_.shape[0]:
            break
        at = pos[open_] + k
        if bool((at >= end[open_]).any()):
            raise MalformedColumnValue("a varint runs past the end of its value")
        byte = buf[at]
        values[open_] |= (byte & 0x7F).astype(np.int64) << (7 * k)
        done = byte < 0x80
        if bool((done & (byte == 0)).any()):
            raise MalformedColumnValue("a varint is not minimal")
        sizes[open_[done]] = k + 1
        open_ = open_[~done]
        if 7 * (k + 1) >= 49 and open_.shape[0]:  # past 2**48: out of range whatever follows
            raise MalformedColumnValue("a length or count is out of range")
    if open_.shape[0]:
        raise MalformedColumnValue("a varint is too long")
    if bool((values >= MAX_COUNT).any()):
        raise MalformedColumnValue("a length or count is out of range")
    return values, sizes


def read_uvarint_blocks(buf: np.ndarray, pos: np.ndarray, end: np.ndarray,
                        counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reads one *lengths block* per group: a varint giving the block's size in bytes, then
    ``counts[g]`` varints filling it exactly.

    Returns:
        (the values of every group, concatenated; the bytes each group's block takes).

    Raises:
        MalformedColumnValue: a block does not hold exactly its count of minimal varints, or
            runs past its value.
    """
    counts = np.asarray(counts, dtype=np.int64)
    block, head = read_uvarints(buf, pos, end)
    _check_room(pos + head, end, block)
    raw = take_ranges(buf, pos + head, block)
    last = raw < 0x80
    ends = np.flatnonzero(last)
    block_off = offsets_of(block)
    # every block ends on a varint's last byte and holds exactly its count of varints
    closed = block == 0
    closed[~closed] = last[block_off[1:][~closed] - 1]
    if not closed.all() or not np.array_equal(counts_per_group(last, block_off), counts):
        raise MalformedColumnValue("a lengths block does not hold its count of varints")
    starts = np.empty(ends.shape[0], dtype=np.int64)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    size = ends - starts + 1
    if bool((size > _VARINT_MAX_BYTES).any()) or bool(((size > 1) & (raw[ends] == 0)).any()):
        raise MalformedColumnValue("a malformed varint in a lengths block")
    values = np.zeros(ends.shape[0], dtype=np.uint64)
    for k in range(int(size.max()) if size.shape[0] else 0):
        has = size > k
        values[has] |= (raw[starts[has] + k] & 0x7F).astype(np.uint64) << np.uint64(7 * k)
    if bool((values >= np.uint64(MAX_COUNT)).any()):
        raise MalformedColumnValue("a length or count is out of range")
    return values.astype(np.int64), head + block
