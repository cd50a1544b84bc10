"""A row's key, of whatever type its database gave it, as checkpoints store it and reports show
it.

SQLite keeps a type per value, not per column: a TEXT primary key can hold text, integers
(in a column of INTEGER or NUMERIC affinity), reals, blobs (``uuid.uuid4().bytes``) and text
that is not valid UTF-8, row by row. A checkpoint must give the next batch back exactly the key
it read, of the same storage class, or keyset pagination compares the wrong things; so each
key is stored with a tag naming its type (:func:`encode_key`, :func:`decode_key`).
"""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import ColumnNotFound

__all__ = ["UndecodableText", "decode_key", "encode_key", "key_for_json"]


class UndecodableText(bytes):
    """A TEXT value whose bytes are not UTF-8 (a legacy latin-1 value in SQLite): kept as its
    bytes, and written back as TEXT, never as a BLOB."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"UndecodableText({bytes(self)!r})"


def encode_key(value: Any) -> str | None:
    """``value`` (a key as the driver returned it) as text that :func:`decode_key` reads back
    to a value of the same type.

    Raises:
        ColumnNotFound: a type no key column of a supported store holds.
    """
    if value is None:
        return None
    if isinstance(value, UndecodableText):
        return "u:" + bytes(value).hex()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "b:" + bytes(value).hex()
    if isinstance(value, bool):  # a bool is an int to Python, never a key to a database
        pass
    elif isinstance(value, int):
        return f"i:{value}"
    elif isinstance(value, float):
        return "r:" + value.hex()
    elif isinstance(value, str):
        return "t:" + value
    raise ColumnNotFound(f"a key of type {type(value).__name__} cannot be checkpointed; a key "
                         "column holds integers, reals, text or blobs")


def decode_key(text: str | None) -> Any:
    """The key :func:`encode_key` wrote (a checkpoint of an earlier release, JSON, too)."""
    if text is None:
        return None
    tag, sep, rest = text.partition(":")
    if sep and len(tag) == 1:
        if tag == "i":
            return int(rest)
        if tag == "r":
            return float.fromhex(rest)
        if tag == "t":
            return rest
        if tag == "b":
            return bytes.fromhex(rest)
        if tag == "u":
            return UndecodableText(bytes.fromhex(rest))
    return json.loads(text)


def key_for_json(value: Any) -> Any:
    """A key as a JSON report gives it: integers, finite reals and text as themselves; a blob
    as ``{"blob": HEX}``, text that is not UTF-8 as ``{"text_bytes": HEX}``, and a real JSON
    cannot hold as ``{"real": "inf"}``."""
    if isinstance(value, UndecodableText):
        return {"text_bytes": bytes(value).hex()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"blob": bytes(value).hex()}
    if isinstance(value, float) and not math.isfinite(value):
        return {"real": repr(value)}
    return value
