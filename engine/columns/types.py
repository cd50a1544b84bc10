"""Type descriptors: every Arrow type as a short, canonical byte string (docs/column-format.md,
"Type descriptors").

A descriptor is what the Arrow C data interface says about the type (format strings, field
names, nullability, metadata, children, dictionary), so it covers every type pyarrow has,
extension types included, and any Arrow implementation can rebuild it:

- a type without children, dictionary or metadata (every primitive, decimal, temporal and binary
  type) is its format string alone: ``l`` for int64, ``tsu:UTC`` for timestamp[us, UTC],
  ``d:38,10`` for decimal128(38, 10), ``u`` for string;
- any other type is ``0x00`` followed by its schema tree (see :func:`_write_node`).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from .._native.arrow_schema import FLAG_NULLABLE, SchemaNode, export_type, import_type
from .errors import MalformedColumnValue, UnknownColumnType
from .packing import read_uvarint, uvarint

__all__ = ["DIGEST_BYTES", "descriptor_digest", "type_descriptor", "type_from_descriptor"]

TREE = 0x00
DIGEST_BYTES = 4
_DICTIONARY_FOLLOWS = 0x80
_ARROW_FLAGS = 0x07
_MAX_NODES = 4096
_MAX_DEPTH = 64


def _write_node(node: SchemaNode, out: bytearray) -> None:
    """format, flags (+0x80: a dictionary node follows), name, metadata (each length-prefixed),
    the number of children, the children, the dictionary."""
    out += uvarint(len(node.format)) + node.format
    out.append(node.flags | (_DICTIONARY_FOLLOWS if node.dictionary is not None else 0))
    out += uvarint(len(node.name)) + node.name
    out += uvarint(len(node.metadata)) + node.metadata
    out += uvarint(len(node.children))
    for child in node.children:
        _write_node(child, out)
    if node.dictionary is not None:
        _write_node(node.dictionary, out)


def type_descriptor(data_type: Any) -> bytes:
    """The canonical descriptor of a pyarrow type (not cached: pyarrow types that differ only in
    a child's name or metadata compare and hash equal)."""
    node = export_type(data_type)
    root = node._replace(name=b"", flags=node.flags & ~FLAG_NULLABLE)
    if not (root.children or root.dictionary or root.metadata or root.flags):
        return root.format
    out = bytearray([TREE])
    _write_node(root, out)
    return bytes(out)


def descriptor_digest(descriptor: bytes) -> bytes:
    """The 4 bytes by which a value refers to a long descriptor: the start of its SHA-256."""
    return hashlib.sha256(descriptor).digest()[:DIGEST_BYTES]


class _Reader:
    __slots__ = ("buf", "pos", "nodes")

    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos, self.nodes = buf, 0, 0

    def chunk(self) -> bytes:
        size, self.pos = read_uvarint(self.buf, self.pos)
        if size > len(self.buf) - self.pos:
            raise MalformedColumnValue("a type descriptor is truncated")
        part = self.buf[self.pos : self.pos + size]
        self.pos += size
        return part

    def node(self, depth: int) -> SchemaNode:
        self.nodes += 1
        if depth > _MAX_DEPTH or self.nodes > _MAX_NODES:
            raise MalformedColumnValue("a type descriptor is nested too deeply or too large")
        fmt = self.chunk()
        if self.pos >= len(self.buf):
            raise MalformedColumnValue("a type descriptor is truncated")
        flags = self.buf[self.pos]
        self.pos += 1
        if flags & ~(_ARROW_FLAGS | _DICTIONARY_FOLLOWS):
            raise MalformedColumnValue("a type descriptor has unknown flags")
        name, metadata = self.chunk(), self.chunk()
        count, self.pos = read_uvarint(self.buf, self.pos)
        if count > len(self.buf):
            raise MalformedColumnValue("a type descriptor is truncated")
        children = tuple(self.node(depth + 1) for _ in range(count))
        dictionary = self.node(depth + 1) if flags & _DICTIONARY_FOLLOWS else None
        return SchemaNode(fmt, name, metadata, flags & _ARROW_FLAGS, children, dictionary)


def _parse(descriptor: bytes) -> SchemaNode:
    if not descriptor:
        raise MalformedColumnValue("an empty type descriptor")
    if descriptor[0] != TREE:
        return SchemaNode(descriptor, b"", b"", FLAG_NULLABLE, (), None)
    reader = _Reader(descriptor)
    reader.pos = 1
    root = reader.node(0)
    if reader.pos != len(descriptor):
        raise MalformedColumnValue("a type descriptor has trailing bytes")
    if root.name or root.flags & FLAG_NULLABLE:
        raise MalformedColumnValue("a type descriptor's root has a name or a nullable flag")
    return root._replace(flags=root.flags | FLAG_NULLABLE)


_EXTENSION = b"ARROW:extension:name"


def type_from_descriptor(descriptor: bytes) -> Any:
    """The pyarrow type a descriptor names (see :func:`_type_from_descriptor`); cached, unless
    it holds an extension type, whose meaning follows the registry as it is now."""
    descriptor = bytes(descriptor)
    if _EXTENSION in descriptor:
        return _type_from_descriptor(descriptor)
    return _cached_type(descriptor)


@functools.lru_cache(maxsize=512)
def _cached_type(descriptor: bytes) -> Any:
    return _type_from_descriptor(descriptor)


def _type_from_descriptor(descriptor: bytes) -> Any:
    """The pyarrow type a descriptor names.

    Raises:
        MalformedColumnValue: the descriptor does not parse.
        UnknownColumnType: Arrow refuses it, or it names an extension type that is not registered
            in this process (pyarrow would give its storage type instead: the type would change).
    """
    node = _parse(descriptor)
    try:
        data_type = import_type(node)
    except (ValueError, NotImplementedError, TypeError):
        data_type = None
    # A descriptor that does not describe its own import exactly (an unregistered extension
    # type, a non-canonical spelling) would give a type other than the one recorded.
    if data_type is None or type_descriptor(data_type) != descriptor:
        raise UnknownColumnType("a value records a type this process cannot rebuild exactly "
                                "(an extension type that is not registered?)")
    return data_type
