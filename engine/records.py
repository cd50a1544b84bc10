"""Reading and writing one field of many dict records, in single C loops (the C-API helpers of
:mod:`engine._native`): the per-record Python objects that a batch of records must end as.
"""

from __future__ import annotations

from typing import Any, Sequence

from . import _native

__all__ = [
    "BYTES_VALUES",
    "NONE_VALUES",
    "OTHER_VALUES",
    "STR_VALUES",
    "field_values",
    "pack_into",
    "packed_size",
    "value_kinds",
    "with_field",
]

STR_VALUES: int = _native.STR_VALUES
BYTES_VALUES: int = _native.BYTES_VALUES
NONE_VALUES: int = _native.NONE_VALUES
OTHER_VALUES: int = _native.OTHER_VALUES


def field_values(records: list | tuple, field: Any) -> list:
    """``[r.get(field) for r in records]`` for a list of dicts, in one C loop (a dict subclass's
    own ``get`` is called).

    Raises:
        InvalidArgumentType: ``records`` is not a list or tuple of dicts.
        RuntimeError: the list changed size during the call (code run by a key's ``__eq__``).
    """
    return _native.field_values(records, field)


def with_field(records: list | tuple, field: Any, values: list | tuple) -> list[dict]:
    """New plain dicts, each a shallow copy of ``records[i]`` with ``field`` set to
    ``values[i]``; a ``None`` value for a record that lacks the field leaves it absent. One C
    loop.

    Raises:
        InvalidArgumentType: ``records`` is not a list or tuple of dicts, or ``values`` not a
            list or tuple.
        InvalidArgument: ``values`` does not have one item per record.
        RuntimeError: a list changed size during the call (code run by a key's ``__eq__``).
    """
    return _native.with_field(records, field, values)


def value_kinds(values: Sequence[Any]) -> int:
    """Which kinds of value a list holds, as bits: :data:`STR_VALUES`, :data:`BYTES_VALUES`
    (bytes, bytearray, memoryview), :data:`NONE_VALUES`, :data:`OTHER_VALUES` (one C pass)."""
    return _native.value_kinds(values)


def packed_size(values: list | tuple, with_none: bool = False) -> int | None:
    """Bytes that ``values`` take packed (str as UTF-8), or None unless every value is str,
    bytes or bytearray (or None, when ``with_none``). One C pass.

    Raises:
        InvalidArgument: a str that UTF-8 cannot encode (the message shows no text).
    """
    return _native.packed_size(values, with_none)


def pack_into(values: list | tuple, out: Any, none_mask: Any = None) -> bytes:
    """Writes the records of ``values`` one after the other into ``out`` (exactly
    :func:`packed_size` bytes) and returns their n+1 ``int64`` offsets as bytes. With
    ``none_mask`` (n writable bytes) a None value becomes an empty record marked 1 there.

    Raises:
        InvalidArgumentType: a value that is not str, bytes or bytearray (or None).
        RuntimeError: ``values`` changed since :func:`packed_size`.
    """
    return _native.pack_into(values, out, none_mask)
