"""What the serialization needs to know about Arrow arrays and types: the logical array under a
dictionary, run-end or extension wrapper, fixed widths, the buffers of binary-like arrays, and
validity as numpy arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..buffers import pyarrow_module
from ..errors import InvalidArgument

__all__ = ["binary_parts", "fixed_width", "is_binary_like", "is_wrapper", "resolve",
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


def resolve(array: Any, idx: np.ndarray | None = None
            ) -> tuple[Any, np.ndarray | None, np.ndarray | None]:
    """The values of ``array`` (or of its items at ``idx``) seen through every wrapper, without
    materializing them: pyarrow cannot decode or take every wrapped array (run-end encoded
    dictionaries, structs holding runs...).

    Returns:
        (the array under the wrappers; for each chosen item, the position of its value there,
        or None when positions are unchanged; whether each chosen item is present, or None when
        all are).
    """
    pa = _pa()
    valid = None
    while is_wrapper(array.type):
        t = array.type
        if isinstance(t, pa.BaseExtensionType):
            array = array.storage
            continue
        n = len(array)
        chosen = np.arange(n, dtype=np.int64) if idx is None else idx
        if pa.types.is_dictionary(t):
            if array.null_count:
                present = array.is_valid().to_numpy(zero_copy_only=False)[chosen]
                valid = present if valid is None else valid & present
            raw = np.frombuffer(array.buffers()[1], dtype=t.index_type.to_pandas_dtype())
            positions = raw[array.offset : array.offset + n][chosen].astype(np.int64)
            dictionary = array.dictionary
            used = positions if valid is None else positions[valid]
            if used.shape[0] and (int(used.min()) < 0 or int(used.max()) >= len(dictionary)):
                raise InvalidArgument("a dictionary index is out of range")
            if valid is not None:  # a NULL's index may be anything: never read through it
                positions = np.where(valid, positions, 0)
            array, idx = dictionary, positions
        else:  # run-end encoded: the run holding each logical position
            ends = array.run_ends.to_numpy().astype(np.int64)
            idx = np.searchsorted(ends, chosen + array.offset, side="right")
            array = array.values
    base_valid = validity(array)
    if base_valid is not None:
        if idx is None:
            valid = base_valid
        else:
            present = np.zeros(idx.shape[0], dtype=bool)
            looked = slice(None) if valid is None else valid
            present[looked] = base_valid[idx[looked]]
            valid = present
    return array, idx, valid


def wrap_array(values: Any, data_type: Any) -> Any:
    """``values`` (of the type under the wrappers) as ``data_type``: a dictionary is rebuilt from
    the values in the order they first appear, runs from equal neighbours (the original
    dictionary's order and unused entries, or a run split in two, are no part of any value).
    Where pyarrow cannot encode a value type, each value gets an entry or a run of its own."""
    pa = _pa()
    import pyarrow.compute as pc

    if not is_wrapper(data_type):
        return values
    inner = wrap_array(values, unwrapped_type(data_type))
    if isinstance(data_type, pa.BaseExtensionType):
        return pa.ExtensionArray.from_storage(data_type, inner)
    n = len(inner)
    if pa.types.is_dictionary(data_type):
        try:
            encoded = pc.dictionary_encode(inner)
            indices, dictionary = encoded.indices, encoded.dictionary
        except pa.ArrowNotImplementedError:
            indices, dictionary = pa.array(np.arange(n), mask=~_valid(inner)), inner
        return pa.DictionaryArray.from_arrays(indices.cast(data_type.index_type), dictionary,
                                              ordered=data_type.ordered)
    try:
        encoded = pc.run_end_encode(inner, run_end_type=data_type.run_end_type)
        run_ends, runs = encoded.run_ends, encoded.values
    except pa.ArrowNotImplementedError:
        run_ends, runs = pa.array(np.arange(1, n + 1)).cast(data_type.run_end_type), inner
    # from_buffers, not from_arrays: that one validates the values, quoting them in its errors
    return pa.Array.from_buffers(data_type, n, [None], children=[run_ends, runs])


def _valid(array: Any) -> np.ndarray:
    found = validity(array)
    return np.ones(len(array), dtype=bool) if found is None else found


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
