"""What the serialization needs to know about Arrow arrays and types: the logical array under a
dictionary, run-end or extension wrapper, fixed widths, the buffers of binary-like arrays, and
validity as numpy arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..buffers import pyarrow_module

__all__ = ["binary_parts", "fixed_width", "is_binary_like", "is_wrapper", "logical_array",
           "unwrapped_type", "validity", "wrap_array"]


def _pa() -> Any:
    return pyarrow_module()


def is_wrapper(data_type: Any) -> bool:
    """Dictionary, run-end encoded and extension types: values are those of the type beneath."""
    t = _pa().types
    return (isinstance(data_type, _pa().BaseExtensionType) or t.is_dictionary(data_type)
            or t.is_run_end_encoded(data_type))


def unwrapped_type(data_type: Any) -> Any:
    """The type a wrapper's values have (dictionary values, run values, extension storage)."""
    pa = _pa()
    if isinstance(data_type, pa.BaseExtensionType):
        return data_type.storage_type
    if pa.types.is_dictionary(data_type):
        return data_type.value_type
    return data_type.value_type  # run-end encoded


def logical_array(array: Any) -> Any:
    """``array`` with every wrapper taken off: dictionary values decoded, runs expanded,
    extension storage."""
    pa = _pa()
    import pyarrow.compute as pc

    while is_wrapper(array.type):
        t = array.type
        if isinstance(t, pa.BaseExtensionType):
            array = array.storage
        elif pa.types.is_dictionary(t):
            array = array.dictionary_decode()
        else:
            array = pc.run_end_decode(array)
    return array


def wrap_array(values: Any, data_type: Any) -> Any:
    """The inverse of :func:`logical_array`: ``values`` (of the logical type) as ``data_type``.

    A dictionary is rebuilt from the values in the order they first appear (the original
    dictionary's order and unused entries are not part of any value)."""
    pa = _pa()
    import pyarrow.compute as pc

    if not is_wrapper(data_type):
        return values
    inner = wrap_array(values, unwrapped_type(data_type))
    if isinstance(data_type, pa.BaseExtensionType):
        return pa.ExtensionArray.from_storage(data_type, inner)
    if pa.types.is_dictionary(data_type):
        encoded = pc.dictionary_encode(inner)
        return pa.DictionaryArray.from_arrays(encoded.indices.cast(data_type.index_type),
                                              encoded.dictionary, ordered=data_type.ordered)
    encoded = pc.run_end_encode(inner, run_end_type=data_type.run_end_type)
    if encoded.type != data_type:  # field names or nullability of the run-end type's children
        encoded = pa.RunEndEncodedArray.from_arrays(encoded.run_ends, encoded.values,
                                                    type=data_type)
    return encoded


_BINARY_LIKE = ("string", "large_string", "string_view", "binary", "large_binary", "binary_view")


def is_binary_like(data_type: Any) -> bool:
    """String and binary types of every offset width, views included."""
    t = _pa().types
    return any(getattr(t, f"is_{name}")(data_type) for name in _BINARY_LIKE)


def fixed_width(data_type: Any) -> int | None:
    """Bytes per value of a fixed-width type (integers, floats, decimals, temporal types,
    intervals, fixed-size binary); None for every other type (bool and null included)."""
    pa = _pa()
    if (is_wrapper(data_type) or pa.types.is_boolean(data_type) or pa.types.is_null(data_type)
            or pa.types.is_nested(data_type)):
        return None
    try:
        bits = data_type.bit_width
    except ValueError:
        return None
    return bits // 8 if bits % 8 == 0 and bits else None


def validity(array: Any) -> np.ndarray | None:
    """Which values are present (a numpy bool array), or None when all of them are. Union
    values have no validity of their own (a union value is always present)."""
    pa = _pa()
    if pa.types.is_union(array.type) or array.null_count == 0:
        return None
    if pa.types.is_null(array.type):
        return np.zeros(len(array), dtype=bool)
    return array.is_valid().to_numpy(zero_copy_only=False)


def binary_parts(array: Any) -> tuple[np.ndarray, np.ndarray]:
    """(data, offsets): the data buffer and the ``n + 1`` offsets into it (int64, absolute) of a
    binary-like array; views are copied into a ``large_binary`` first."""
    pa = _pa()
    t = array.type
    if pa.types.is_string_view(t) or pa.types.is_binary_view(t):
        array = array.cast(pa.large_binary())
        t = array.type
    wide = pa.types.is_large_string(t) or pa.types.is_large_binary(t)
    n = len(array)
    _, off_buf, data_buf = array.buffers()
    if off_buf is None:  # an empty array may have no buffers
        return np.empty(0, dtype=np.uint8), np.zeros(n + 1, dtype=np.int64)
    offsets = np.frombuffer(off_buf, dtype=np.int64 if wide else np.int32)
    offsets = offsets[array.offset : array.offset + n + 1].astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else \
        np.empty(0, dtype=np.uint8)
    return data, offsets
