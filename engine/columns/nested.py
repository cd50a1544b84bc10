"""The serialization of nested values (docs/column-format.md, "Nested values"): lists, maps,
structs, fixed-size lists, unions, and wrappers inside them.

A nested value is written column by column, like a one-row Arrow record batch with varints for
lengths: for items of a type, first a *section* (a validity bitmap, then the *content* of the
present items), and a child's section follows its parent's content. Where each part of a value
starts follows from its type and from counts read before it, so a column of values is written
and read with one pass of array operations per node of the type, for all values at once, never
with a loop over values or items.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..batch import Batch
from ..buffers import offsets_of, pyarrow_module
from ..errors import InvalidArgumentType
from .arrays import (
    binary_parts,
    fixed_width,
    is_binary_like,
    is_wrapper,
    logical_array,
    unwrapped_type,
    validity,
    wrap_array,
)
from .errors import MalformedColumnValue
from .packing import (
    counts_per_group,
    group_bits,
    read_group_bits,
    read_uvarint_blocks,
    segment_arange,
    take_ranges,
    uvarint_batch,
)

__all__ = ["binary_array", "decode_content", "encode_content"]


def _pa() -> Any:
    return pyarrow_module()


def _is_list_like(t: Any) -> bool:
    types = _pa().types
    return (types.is_list(t) or types.is_large_list(t) or types.is_list_view(t)
            or types.is_large_list_view(t) or types.is_map(t))


# ---------------------------------------------------------------- writing


def _lengths_block(lengths: np.ndarray, bounds: np.ndarray) -> list[Batch]:
    """Each group's lengths as a block: its size in bytes, then one varint per length."""
    each = uvarint_batch(lengths)
    block_off = each.offsets[bounds]
    return [uvarint_batch(np.diff(block_off)), Batch._trusted(each.data, block_off)]


def _buffer_slice(array: Any, index: int, dtype: Any, count: int) -> np.ndarray:
    """``count`` values of buffer ``index`` of ``array`` from its offset (raw buffers, since not
    every pyarrow accessor of offsets or type codes follows a slice)."""
    raw = np.frombuffer(array.buffers()[index], dtype=dtype)
    return raw[array.offset : array.offset + count].astype(np.int64)


def _list_items(array: Any) -> tuple[Any, np.ndarray]:
    """(the child items of every list, in order; the list sizes) of a list-like array."""
    pa = _pa()
    t = array.type
    n = len(array)
    wide = pa.types.is_large_list(t) or pa.types.is_large_list_view(t)
    dtype = np.int64 if wide else np.int32
    if n == 0:
        return array.values.slice(0, 0), np.zeros(0, dtype=np.int64)
    if pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        starts = _buffer_slice(array, 1, dtype, n)
        sizes = _buffer_slice(array, 2, dtype, n)
        items = array.values.take(pa.array(np.repeat(starts, sizes) + segment_arange(sizes)))
        return items, sizes
    offsets = _buffer_slice(array, 1, dtype, n + 1)
    items = array.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    return items, np.diff(offsets)


def _encode_section(array: Any, bounds: np.ndarray) -> list[Batch]:
    """A section per group: the validity bitmap of its items, then their content."""
    array = logical_array(array)
    valid = validity(array)
    if valid is None:
        valid = np.ones(len(array), dtype=bool)
        present, present_bounds = array, bounds
    else:
        present = array.filter(_pa().array(valid))
        present_bounds = offsets_of(counts_per_group(valid, bounds))
    return [group_bits(valid, bounds), *encode_content(present, present_bounds)]


def encode_content(array: Any, bounds: np.ndarray) -> list[Batch]:
    """The content of each group's present items (``array``: all present, no wrapper;
    ``bounds``: ``G + 1`` indices into it, from 0 to ``len(array)``), as parts of one record per
    group, to be concatenated in order."""
    pa = _pa()
    t = array.type
    n = len(array)
    width = fixed_width(t)
    if pa.types.is_null(t):
        return []
    if pa.types.is_boolean(t):
        bits = array.to_numpy(zero_copy_only=False).astype(bool)
        return [group_bits(bits, bounds)]
    if width is not None:
        raw = np.frombuffer(array.buffers()[1], dtype=np.uint8)
        raw = raw[array.offset * width : (array.offset + n) * width]
        return [Batch._trusted(raw, bounds * width)]
    if is_binary_like(t):
        data, offsets = binary_parts(array)
        return [*_lengths_block(np.diff(offsets), bounds), Batch._trusted(data, offsets[bounds])]
    if _is_list_like(t):
        items, sizes = _list_items(array)
        item_bounds = offsets_of(sizes)[bounds]
        return [*_lengths_block(sizes, bounds), *_encode_section(items, item_bounds)]
    if pa.types.is_fixed_size_list(t):
        size = t.list_size
        items = array.values.slice(array.offset * size, n * size)
        return _encode_section(items, bounds * size)
    if pa.types.is_struct(t):
        return [part for i in range(t.num_fields) for part in _encode_section(array.field(i), bounds)]
    if pa.types.is_union(t):
        codes = _buffer_slice(array, 1, np.int8, n).astype(np.int8)
        parts = [Batch._trusted(codes.view(np.uint8), bounds)]
        dense = t.mode == "dense"
        offsets = _buffer_slice(array, 2, np.int32, n) if dense else None
        for j, code in enumerate(t.type_codes):
            chosen = codes == code
            child = array.field(j)
            items = child.take(pa.array(offsets[chosen])) if dense else child.filter(pa.array(chosen))
            parts += _encode_section(items, offsets_of(counts_per_group(chosen, bounds)))
        return parts
    raise InvalidArgumentType(f"values of type {t} cannot be serialized")


# ---------------------------------------------------------------- reading


def binary_array(data_type: Any, offsets: np.ndarray, data: np.ndarray,
                 valid_bitmap: Any = None) -> Any:
    """A binary-like array of ``data_type`` over int64 offsets and data (strings are checked to
    be UTF-8).

    Raises:
        MalformedColumnValue: a string value is not UTF-8 (no content is shown).
    """
    pa = _pa()
    n = offsets.shape[0] - 1
    text = (pa.types.is_string(data_type) or pa.types.is_large_string(data_type)
            or pa.types.is_string_view(data_type))
    array = pa.Array.from_buffers(pa.large_string() if text else pa.large_binary(), n,
                                  [valid_bitmap, pa.py_buffer(offsets), pa.py_buffer(data)])
    if text:
        try:
            array.validate(full=True)
        except pa.ArrowInvalid:
            raise MalformedColumnValue("a string value is not valid UTF-8") from None
    return array if array.type == data_type else array.cast(data_type)


def _expand(present: Any, valid: np.ndarray) -> Any:
    """``present`` spread over the items, NULL where ``valid`` is False."""
    pa = _pa()
    if valid.all():
        return present
    if pa.types.is_null(present.type):
        return pa.nulls(valid.shape[0])
    index = np.cumsum(valid) - 1
    return present.take(pa.array(np.maximum(index, 0), mask=~valid))


def _decode_section(t: Any, buf: np.ndarray, pos: np.ndarray, end: np.ndarray,
                    counts: np.ndarray) -> tuple[Any, np.ndarray]:
    if is_wrapper(t):
        values, pos = _decode_section(unwrapped_type(t), buf, pos, end, counts)
        return wrap_array(values, t), pos
    bits, size = read_group_bits(buf, pos, end, counts)
    pos = pos + size
    if _pa().types.is_union(t) and not bits.all():
        raise MalformedColumnValue("a union item is marked NULL")
    present = counts_per_group(bits, offsets_of(counts))
    values, pos = decode_content(t, buf, pos, end, present)
    return _expand(values, bits), pos


def _check_room(pos: np.ndarray, end: np.ndarray, need: np.ndarray) -> None:
    if bool(((need < 0) | (need > end - pos)).any()):
        raise MalformedColumnValue("a value is shorter than its type requires")


def decode_content(t: Any, buf: np.ndarray, pos: np.ndarray, end: np.ndarray,
                   counts: np.ndarray) -> tuple[Any, np.ndarray]:
    """Reads the content of ``counts[g]`` present items of type ``t`` (no wrapper) at
    ``buf[pos[g]:]`` for every group g, none reading past ``end[g]``.

    Returns:
        (an array of the items of every group, in order; the position after each group's
        content).

    Raises:
        MalformedColumnValue: the bytes do not follow the serialization of ``t``.
    """
    pa = _pa()
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    width = fixed_width(t)
    if pa.types.is_null(t):
        if total:
            raise MalformedColumnValue("a null-typed item is marked present")
        return pa.nulls(0), pos
    if pa.types.is_boolean(t):
        bits, size = read_group_bits(buf, pos, end, counts)
        return pa.array(bits, type=pa.bool_()), pos + size
    if width is not None:
        need = counts * width
        _check_room(pos, end, need)
        raw = take_ranges(buf, pos, need)
        return pa.Array.from_buffers(t, total, [None, pa.py_buffer(raw)]), pos + need
    if is_binary_like(t):
        lengths, size = read_uvarint_blocks(buf, pos, end, counts)
        pos = pos + size
        offsets = offsets_of(lengths)
        need = counts_per_group_sum(offsets, counts)
        _check_room(pos, end, need)
        raw = take_ranges(buf, pos, need)
        return binary_array(t, offsets, raw), pos + need
    if _is_list_like(t):
        sizes, size = read_uvarint_blocks(buf, pos, end, counts)
        pos = pos + size
        offsets = offsets_of(sizes)
        child_type = (pa.struct([t.key_field, t.item_field]) if pa.types.is_map(t)
                      else t.value_type)
        child, pos = _decode_section(child_type, buf, pos, end,
                                     counts_per_group_sum(offsets, counts))
        wide = pa.types.is_large_list(t) or pa.types.is_large_list_view(t)
        if not wide and int(offsets[-1]) >= 2**31:
            raise MalformedColumnValue("a list holds more items than its type's offsets can count")
        dtype = np.int64 if wide else np.int32
        if pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
            buffers = [None, pa.py_buffer(offsets[:-1].astype(dtype)), pa.py_buffer(sizes.astype(dtype))]
        else:
            buffers = [None, pa.py_buffer(offsets.astype(dtype))]
        return pa.Array.from_buffers(t, total, buffers, children=[child]), pos
    if pa.types.is_fixed_size_list(t):
        child, pos = _decode_section(t.value_type, buf, pos, end, counts * t.list_size)
        return pa.Array.from_buffers(t, total, [None], children=[child]), pos
    if pa.types.is_struct(t):
        children = []
        for i in range(t.num_fields):
            child, pos = _decode_section(t.field(i).type, buf, pos, end, counts)
            children.append(child)
        return pa.Array.from_buffers(t, total, [None], children=children), pos
    if pa.types.is_union(t):
        return _decode_union(t, buf, pos, end, counts, total)
    raise InvalidArgumentType(f"values of type {t} cannot be deserialized")


def counts_per_group_sum(offsets: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The sum of each group's values, given the offsets (running sums) over all values and how
    many values each group has."""
    bounds = offsets_of(counts)
    return offsets[bounds[1:]] - offsets[bounds[:-1]]


def _decode_union(t: Any, buf: np.ndarray, pos: np.ndarray, end: np.ndarray,
                  counts: np.ndarray, total: int) -> tuple[Any, np.ndarray]:
    pa = _pa()
    _check_room(pos, end, counts)
    codes = take_ranges(buf, pos, counts).view(np.int8)
    pos = pos + counts
    known = np.asarray(t.type_codes, dtype=np.int8)
    if not np.isin(codes, known).all():
        raise MalformedColumnValue("a union item names a type code its type does not have")
    dense = t.mode == "dense"
    offsets = np.zeros(total, dtype=np.int32)
    children = []
    item_bounds = offsets_of(counts)
    for j, code in enumerate(known.tolist()):
        chosen = codes == code
        child, pos = _decode_section(t.field(j).type, buf, pos, end,
                                     counts_per_group(chosen, item_bounds))
        rank = np.cumsum(chosen) - 1
        if dense:
            offsets[chosen] = rank[chosen]
        else:
            child = child.take(pa.array(np.maximum(rank, 0), mask=~chosen))
        children.append(child)
    buffers = [None, pa.py_buffer(codes)] + ([pa.py_buffer(offsets)] if dense else [])
    return pa.Array.from_buffers(t, total, buffers, children=children), pos
