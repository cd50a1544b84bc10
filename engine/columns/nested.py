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
    resolve,
    unwrapped_type,
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

__all__ = ["binary_array", "decode_content", "encode_content", "group_sums"]


def _pa() -> Any:
    return pyarrow_module()


def _is_list_like(t: Any) -> bool:
    types = _pa().types
    return (types.is_list(t) or types.is_large_list(t) or types.is_list_view(t)
            or types.is_large_list_view(t) or types.is_map(t))


# ---------------------------------------------------------------- writing
#
# Items are chosen by index (``idx``: ascending positions in the array, None for all of them)
# rather than by filtering arrays: pyarrow has no take or filter for every type (none for
# run-end encoded arrays, nor for structs or lists holding them).


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


def _list_ranges(array: Any) -> tuple[np.ndarray, np.ndarray]:
    """(start in ``array.values``, size) of every list of a list-like array."""
    pa = _pa()
    t = array.type
    n = len(array)
    wide = pa.types.is_large_list(t) or pa.types.is_large_list_view(t)
    dtype = np.int64 if wide else np.int32
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return _buffer_slice(array, 1, dtype, n), _buffer_slice(array, 2, dtype, n)
    offsets = _buffer_slice(array, 1, dtype, n + 1)
    return offsets[:-1], np.diff(offsets)


def _chosen(idx: np.ndarray | None, n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) if idx is None else idx


def _encode_section(array: Any, bounds: np.ndarray, idx: np.ndarray | None) -> list[Batch]:
    """A section per group: the validity bitmap of the chosen items, then the content of the
    present ones."""
    count = int(bounds[-1])
    array, idx, valid = resolve(array, idx)
    if valid is None:
        return [group_bits(np.ones(count, dtype=bool), bounds), *encode_content(array, bounds, idx)]
    present = np.flatnonzero(valid)
    present = present if idx is None else idx[present]
    present_bounds = offsets_of(counts_per_group(valid, bounds))
    return [group_bits(valid, bounds), *encode_content(array, present_bounds, present)]


def encode_content(array: Any, bounds: np.ndarray, idx: np.ndarray | None = None) -> list[Batch]:
    """The content of each group's items (``array``: no wrapper; ``idx``: the positions of the
    items, all present, in order, or None for every item of ``array``; ``bounds``: ``G + 1``
    indices into that sequence), as parts of one record per group, to be concatenated."""
    pa = _pa()
    t = array.type
    n = len(array)
    width = fixed_width(t)
    if pa.types.is_null(t):
        return []
    if pa.types.is_boolean(t):
        bits = np.unpackbits(np.frombuffer(array.buffers()[1], dtype=np.uint8),
                             bitorder="little")[array.offset : array.offset + n].view(bool)
        return [group_bits(bits if idx is None else bits[idx], bounds)]
    if width is not None:
        raw = np.frombuffer(array.buffers()[1], dtype=np.uint8)
        raw = raw[array.offset * width : (array.offset + n) * width]
        if idx is not None:  # a copy of the chosen values (a view when there is no gap)
            raw = raw.reshape(n, width)[idx].reshape(-1)
        return [Batch._trusted(raw, bounds * width)]
    if is_binary_like(t):
        data, offsets = binary_parts(array)
        values = Batch._trusted(data, offsets)
        if idx is not None:
            values = values.take(idx)
        return [*_lengths_block(values.lengths(), bounds),
                Batch._trusted(values.data, values.offsets[bounds])]
    if _is_list_like(t):
        starts, sizes = _list_ranges(array)
        chosen = _chosen(idx, n)
        sizes = sizes[chosen]
        items = np.repeat(starts[chosen], sizes) + segment_arange(sizes)
        child = array.values  # the whole child (for a map: its entries)
        return [*_lengths_block(sizes, bounds),
                *_encode_section(child, offsets_of(sizes)[bounds], items)]
    if pa.types.is_fixed_size_list(t):
        size = t.list_size
        chosen = _chosen(idx, n) + array.offset
        items = (chosen[:, None] * size + np.arange(size)).reshape(-1)
        return _encode_section(array.values, bounds * size, items)
    if pa.types.is_struct(t):
        return [part for i in range(t.num_fields)
                for part in _encode_section(array.field(i), bounds, idx)]
    if pa.types.is_union(t):
        chosen = _chosen(idx, n)
        codes = _buffer_slice(array, 1, np.int8, n).astype(np.int8)[chosen]
        parts = [Batch._trusted(codes.view(np.uint8), bounds)]
        slots = _buffer_slice(array, 2, np.int32, n)[chosen] if t.mode == "dense" else chosen
        for j, code in enumerate(t.type_codes):
            mine = codes == code
            child = array.field(j)  # sparse: aligned with the union's slots
            items = slots[mine]
            parts += _encode_section(child, offsets_of(counts_per_group(mine, bounds)), items)
        return parts
    raise InvalidArgumentType(f"values of type {t} cannot be serialized")


# ---------------------------------------------------------------- reading
#
# Items are placed, not gathered: every reader takes ``place``, a mask over the slots of the
# array it builds, True where the next item goes; the other slots are NULL (the children of a
# struct that is NULL, say). The array is then made with its validity in one step, without a
# take, for every type.


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
            valid = True
        except pa.ArrowInvalid:  # its message may quote the data: not this error's context
            valid = False
        if not valid:
            raise MalformedColumnValue("a string value is not valid UTF-8")
    return array if array.type == data_type else array.cast(data_type)


def _bitmap(valid: np.ndarray) -> Any:
    return None if valid.all() else _pa().py_buffer(np.packbits(valid, bitorder="little"))


def _check_room(pos: np.ndarray, end: np.ndarray, need: np.ndarray) -> None:
    if bool(((need < 0) | (need > end - pos)).any()):
        raise MalformedColumnValue("a value is shorter than its type requires")


def _placed(values: np.ndarray, place: np.ndarray) -> np.ndarray:
    """``values`` (one per item) spread over the slots, zero where no item goes."""
    out = np.zeros(place.shape[0], dtype=values.dtype)
    out[place] = values
    return out


def _decode_section(t: Any, buf: np.ndarray, pos: np.ndarray, end: np.ndarray,
                    counts: np.ndarray, place: np.ndarray) -> tuple[Any, np.ndarray]:
    """Reads each group's section of ``counts[g]`` items of type ``t`` and builds the array of
    ``place``'s slots."""
    bits, size = read_group_bits(buf, pos, end, counts)
    pos = pos + size
    if _pa().types.is_union(t) and not bits.all():
        raise MalformedColumnValue("a union item is marked NULL")
    present = np.zeros(place.shape[0], dtype=bool)
    present[place] = bits
    return decode_content(t, buf, pos, end, counts_per_group(bits, offsets_of(counts)), present)


def decode_content(t: Any, buf: np.ndarray, pos: np.ndarray, end: np.ndarray,
                   counts: np.ndarray, place: np.ndarray | None = None) -> tuple[Any, np.ndarray]:
    """Reads the content of ``counts[g]`` present items of type ``t`` at ``buf[pos[g]:]`` for
    every group g, none reading past ``end[g]``.

    Args:
        place: the slots of the array to build, True where the items go in order (the others
            are NULL); None: one slot per item.

    Returns:
        (the array; the position after each group's content).

    Raises:
        MalformedColumnValue: the bytes do not follow the serialization of ``t``.
    """
    pa = _pa()
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    place = np.ones(total, dtype=bool) if place is None else place
    slots = place.shape[0]
    if is_wrapper(t):
        base = t
        while is_wrapper(base):
            base = unwrapped_type(base)
        values, pos = decode_content(base, buf, pos, end, counts, place)
        return wrap_array(values, t), pos
    width = fixed_width(t)
    if pa.types.is_null(t):
        if total:
            raise MalformedColumnValue("a null-typed item is marked present")
        return pa.nulls(slots), pos
    if pa.types.is_boolean(t):
        bits, size = read_group_bits(buf, pos, end, counts)
        packed = np.packbits(_placed(bits, place), bitorder="little")
        return pa.Array.from_buffers(t, slots, [_bitmap(place), pa.py_buffer(packed)]), pos + size
    if width is not None:
        need = counts * width
        _check_room(pos, end, need)
        raw = take_ranges(buf, pos, need)
        if total != slots:
            full = np.zeros((slots, width), dtype=np.uint8)
            full[place] = raw.reshape(total, width)
            raw = full.reshape(-1)
        return pa.Array.from_buffers(t, slots, [_bitmap(place), pa.py_buffer(raw)]), pos + need
    if is_binary_like(t):
        lengths, size = read_uvarint_blocks(buf, pos, end, counts)
        pos = pos + size
        need = group_sums(lengths, counts)
        _check_room(pos, end, need)
        raw = take_ranges(buf, pos, need)
        return binary_array(t, offsets_of(_placed(lengths, place)), raw, _bitmap(place)), pos + need
    if _is_list_like(t):
        sizes, size = read_uvarint_blocks(buf, pos, end, counts)
        pos = pos + size
        child_type = (pa.struct([t.key_field, t.item_field]) if pa.types.is_map(t)
                      else t.value_type)
        items = int(sizes.sum())
        child, pos = _decode_section(child_type, buf, pos, end, group_sums(sizes, counts),
                                     np.ones(items, dtype=bool))
        wide = pa.types.is_large_list(t) or pa.types.is_large_list_view(t)
        if not wide and items >= 2**31:
            raise MalformedColumnValue("a list holds more items than its type's offsets can count")
        dtype = np.int64 if wide else np.int32
        offsets = offsets_of(_placed(sizes, place))
        if pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
            buffers = [_bitmap(place), pa.py_buffer(offsets[:-1].astype(dtype)),
                       pa.py_buffer(_placed(sizes, place).astype(dtype))]
        else:
            buffers = [_bitmap(place), pa.py_buffer(offsets.astype(dtype))]
        return pa.Array.from_buffers(t, slots, buffers, children=[child]), pos
    if pa.types.is_fixed_size_list(t):
        size = t.list_size
        child, pos = _decode_section(t.value_type, buf, pos, end, counts * size,
                                     np.repeat(place, size))
        return pa.Array.from_buffers(t, slots, [_bitmap(place)], children=[child]), pos
    if pa.types.is_struct(t):
        children = []
        for i in range(t.num_fields):
            child, pos = _decode_section(t.field(i).type, buf, pos, end, counts, place)
            children.append(child)
        return pa.Array.from_buffers(t, slots, [_bitmap(place)], children=children), pos
    if pa.types.is_union(t):
        return _decode_union(t, buf, pos, end, counts, place)
    raise InvalidArgumentType(f"values of type {t} cannot be deserialized")


def group_sums(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The sum of each group's values (``counts[g]`` consecutive values per group)."""
    running = offsets_of(values)
    bounds = offsets_of(counts)
    return running[bounds[1:]] - running[bounds[:-1]]


def _decode_union(t: Any, buf: np.ndarray, pos: np.ndarray, end: np.ndarray,
                  counts: np.ndarray, place: np.ndarray) -> tuple[Any, np.ndarray]:
    """A union's slots where no item goes (the union sits in a NULL parent) take the first
    type code and, when dense, an extra NULL at the end of the first child."""
    pa = _pa()
    _check_room(pos, end, counts)
    read = take_ranges(buf, pos, counts).view(np.int8)
    pos = pos + counts
    known = np.asarray(t.type_codes, dtype=np.int8)
    if not np.isin(read, known).all():
        raise MalformedColumnValue("a union item names a type code its type does not have")
    codes = np.full(place.shape[0], known[0], dtype=np.int8)
    codes[place] = read
    filler = ~place
    dense = t.mode == "dense"
    offsets = np.zeros(place.shape[0], dtype=np.int32)
    children = []
    item_bounds = offsets_of(counts)
    for j, code in enumerate(known.tolist()):
        mine = read == code
        count = int(mine.sum())
        if dense:
            slots = np.ones(count + (1 if j == 0 and filler.any() else 0), dtype=bool)
            slots[count:] = False
            offsets[place & (codes == code)] = np.arange(count, dtype=np.int32)
            if j == 0:
                offsets[filler] = count
        else:
            slots = place & (codes == code)
        child, pos = _decode_section(t.field(j).type, buf, pos, end,
                                     counts_per_group(mine, item_bounds), slots)
        children.append(child)
    buffers = [None, pa.py_buffer(codes)] + ([pa.py_buffer(offsets)] if dense else [])
    return pa.Array.from_buffers(t, place.shape[0], buffers, children=children), pos
