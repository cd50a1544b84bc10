"""Columns for data pipelines: every Arrow type encrypted value by value in the column format
(docs/column-format.md), and Parquet Modular Encryption under the engine's keys (docs/pme.md).

Needs pyarrow (the ``arrow`` extra); not imported by ``import engine``.
"""

from .errors import ColumnTypeMismatch, MalformedColumnValue, UnknownColumnFormat, UnknownColumnType
from .format import ColumnValuesInfo, decrypt_array, encrypt_array, from_text, inspect_values, to_text
from .types import type_descriptor, type_from_descriptor

__all__ = [
    "ColumnTypeMismatch",
    "ColumnValuesInfo",
    "MalformedColumnValue",
    "UnknownColumnFormat",
    "UnknownColumnType",
    "decrypt_array",
    "encrypt_array",
    "from_text",
    "inspect_values",
    "to_text",
    "type_descriptor",
    "type_from_descriptor",
]
