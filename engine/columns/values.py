"""The canonical serialization of one Arrow value (docs/column-format.md, "Values"), for whole
arrays at a time: the plaintexts that the column format encrypts, and the array rebuilt from
them.

- fixed-width types: the value's little-endian bytes, as Arrow keeps them (integers, floats,
  decimals, dates, times, timestamps, durations, intervals, fixed-size binary); a column without
  NULLs is handed to the cipher as its values buffer, with no copy;
- bool: one byte, 0 or 1;
- string and binary types: the bytes themselves;
- dictionary, run-end encoded and extension types: the value beneath (decoded);
- nested types: :mod:`engine.columns.nested`.

NULLs have no plaintext: they stay NULL and are never encrypted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..batch import Batch
from ..buffers import empty_bytes, offsets_of, pyarrow_module
from ..codecs import concat_each
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
from .nested import binary_array, decode_content, encode_content

__all__ = ["PlaintextLayout", "plaintexts"]


def _pa() -> Any:
    return pyarrow_module()


def _base_type(data_type: Any) -> Any:
    while is_wrapper(data_type):
        data_type = unwrapped_type(data_type)
    return data_type


def plaintexts(array: Any) -> tuple[Batch, np.ndarray | None]:
    """The serialized value of every present value of ``array`` (a pyarrow Array), in order.

    Returns:
        (a Batch of one plaintext per present value; the row index of each, or None when every
        value is present).

    Raises:
        InvalidArgumentType: a type the serialization does not cover.
    """
    pa = _pa()
    n = len(array)
    values, idx, valid = resolve(array)
    t = values.type
    rows = None if valid is None else np.flatnonzero(valid)
    # the position in ``values`` of each present row's value (None: row i is value i)
    chosen = rows if idx is None else (idx if rows is None else idx[rows])
    count = n if rows is None else rows.shape[0]
    width = fixed_width(t)
    if pa.types.is_null(t):
        return Batch._trusted(np.empty(0, dtype=np.uint8), np.zeros(1, dtype=np.int64)), \
            np.empty(0, dtype=np.int64)
    if width is not None:
        size = len(values)
        raw = np.frombuffer(values.buffers()[1], dtype=np.uint8)
        raw = raw[values.offset * width : (values.offset + size) * width]
        if chosen is not None:
            raw = raw.reshape(size, width)[chosen].reshape(-1)
        return Batch._trusted(raw, np.arange(count + 1, dtype=np.int64) * width), rows
    if pa.types.is_boolean(t):
        bits = np.unpackbits(np.frombuffer(values.buffers()[1], dtype=np.uint8),
                             bitorder="little")[values.offset : values.offset + len(values)]
        kept = bits if chosen is None else bits[chosen]
        return Batch._trusted(np.ascontiguousarray(kept), np.arange(count + 1,
                                                                    dtype=np.int64)), rows
    if is_binary_like(t):
        data, offsets = binary_parts(values)
        whole = Batch._trusted(data, offsets)
        return (whole if chosen is None else whole.take(chosen)), rows
    parts = encode_content(values, np.arange(count + 1, dtype=np.int64), chosen)
    if not parts:  # a struct without fields: every value is empty
        return Batch._trusted(np.empty(0, dtype=np.uint8),
                              np.zeros(count + 1, dtype=np.int64)), rows
    return concat_each(parts), rows


class PlaintextLayout:
    """Where the plaintexts of a column of one type go as they are decrypted, and the array
    built from them.

    Fixed-width values are written straight into their rows' slots of an Arrow values buffer,
    and string or binary values at their rows' offsets of an Arrow data buffer, so that the
    array is made from the decryption's output buffer with no copy; other types are written one
    after the other and deserialized from there.

    Args:
        data_type: the column's type.
        sizes: the plaintext size of each present value (int64).
        rows: the row of each present value (ascending), or None when all ``n`` are present.
        n: the number of rows.

    Raises:
        MalformedColumnValue: a fixed-width value of the wrong size.
    """

    __slots__ = ("data_type", "base", "sizes", "rows", "n", "width", "starts", "nbytes",
                 "_offsets")

    def __init__(self, data_type: Any, sizes: np.ndarray, rows: np.ndarray | None, n: int) -> None:
        pa = _pa()
        self.data_type, self.base = data_type, _base_type(data_type)
        self.sizes, self.rows, self.n = sizes, rows, n
        self.width = fixed_width(self.base)
        self._offsets = None
        at = np.arange(n, dtype=np.int64) if rows is None else rows
        if self.width is not None:
            if bool((sizes != self.width).any()):
                raise MalformedColumnValue("a value's plaintext does not have its type's size")
            self.starts, self.nbytes = at * self.width, n * self.width
        elif is_binary_like(self.base):
            full = sizes if rows is None else np.zeros(n, dtype=np.int64)
            if rows is not None:
                full[rows] = sizes
            self._offsets = offsets_of(full)
            self.starts, self.nbytes = self._offsets[:-1][at], int(self._offsets[-1])
        else:
            if pa.types.is_boolean(self.base) and bool((sizes != 1).any()):
                raise MalformedColumnValue("a bool value's plaintext is not one byte")
            offsets = offsets_of(sizes)
            self.starts, self.nbytes = offsets[:-1], int(offsets[-1])

    def buffer(self) -> np.ndarray:
        """The output buffer to decrypt into (zeroed where a NULL's slot is not written)."""
        if self.rows is not None and self.width is not None:
            return np.zeros(self.nbytes, dtype=np.uint8)
        return empty_bytes(self.nbytes, secret=True)

    def _valid_bitmap(self) -> Any:
        if self.rows is None:
            return None
        valid = np.zeros(self.n, dtype=bool)
        valid[self.rows] = True
        return _pa().py_buffer(np.packbits(valid, bitorder="little"))

    def array(self, buf: np.ndarray) -> Any:
        """The column, from the buffer the plaintexts were written into.

        Raises:
            MalformedColumnValue: a plaintext does not deserialize as the column's type.
        """
        pa = _pa()
        base, n = self.base, self.n
        if pa.types.is_null(base):
            values = pa.nulls(n)
        elif self.width is not None:
            values = pa.Array.from_buffers(base, n, [self._valid_bitmap(), pa.py_buffer(buf)])
        elif self._offsets is not None:
            values = binary_array(base, self._offsets, buf, self._valid_bitmap())
        else:
            values = self._deserialized(buf)
        return wrap_array(values, self.data_type)

    def _deserialized(self, buf: np.ndarray) -> Any:
        pa = _pa()
        count = self.sizes.shape[0]
        place = np.ones(self.n, dtype=bool)
        if self.rows is not None:
            place[:] = False
            place[self.rows] = True
        if pa.types.is_boolean(self.base):
            if bool((buf > 1).any()):
                raise MalformedColumnValue("a bool value's plaintext is neither 0 nor 1")
            bits = np.zeros(self.n, dtype=bool)
            bits[place] = buf.view(bool)
            return pa.Array.from_buffers(pa.bool_(), self.n, [
                self._valid_bitmap(), pa.py_buffer(np.packbits(bits, bitorder="little"))])
        offsets = offsets_of(self.sizes)
        values, pos = decode_content(self.base, buf, offsets[:-1], offsets[1:],
                                     np.ones(count, dtype=np.int64), place)
        if not np.array_equal(pos, offsets[1:]):
            raise MalformedColumnValue("a value has bytes after its content")
        return values
