"""Reading and writing one field of many dict records, in single C loops (the C-API helpers of
:mod:`engine._native`): the per-record Python objects that a batch of records must end as.
"""

from __future__ import annotations

from typing import Any

from . import _native

__all__ = [
    "BYTES_VALUES",
    "NONE_VALUES",
    "OTHER_VALUES",
    "STR_VALUES",
    "field_values",
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


def value_kinds(values: list | tuple) -> int:
    """Which kinds of value a list holds, as bits: :data:`STR_VALUES`, :data:`BYTES_VALUES`
    (bytes, bytearray, memoryview), :data:`NONE_VALUES`, :data:`OTHER_VALUES` (one C pass)."""
    return _native.value_kinds(values)
