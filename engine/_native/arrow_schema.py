"""Arrow types through the Arrow C data interface (``struct ArrowSchema``): the one place where the
engine reads and builds those structures, with pyarrow's own cffi definitions.

A type is exported to a tree of :class:`SchemaNode` (format string, name, metadata, flags,
children, dictionary: exactly what the C data interface says about a type, extension types and
their serialised parameters included) and a tree is imported back into a pyarrow type. The column
format (:mod:`engine.columns.types`) writes these trees as its type descriptors.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["FLAG_DICTIONARY_ORDERED", "FLAG_MAP_KEYS_SORTED", "FLAG_NULLABLE", "SchemaNode",
           "export_type", "import_type"]

# ArrowSchema.flags (the C data interface's ARROW_FLAG_*)
FLAG_DICTIONARY_ORDERED = 1
FLAG_NULLABLE = 2
FLAG_MAP_KEYS_SORTED = 4
_MAX_DEPTH = 64


class SchemaNode(NamedTuple):
    """One ``struct ArrowSchema``: ``format``, ``name`` and ``metadata`` as the bytes the C data
    interface holds (metadata in its binary encoding, ``b""`` for none), ``flags``, children and
    the dictionary's value node (``None`` unless dictionary-encoded)."""

    format: bytes
    name: bytes
    metadata: bytes
    flags: int
    children: tuple["SchemaNode", ...]
    dictionary: "SchemaNode | None"


_FFI: Any = None
_RELEASE: Any = None


def _ffi() -> Any:
    global _FFI, _RELEASE
    if _FFI is None:
        from pyarrow.cffi import ffi

        @ffi.callback("void(struct ArrowSchema*)")
        def release(schema: Any) -> None:  # the memory is Python's, freed with its owners
            schema.release = ffi.NULL

        _FFI, _RELEASE = ffi, release
    return _FFI


def _metadata_size(ffi: Any, ptr: Any) -> int:
    """Bytes of a C data interface metadata block (int32 count, then length-prefixed keys and
    values, little-endian on every platform Arrow ships for)."""
    if ptr == ffi.NULL:
        return 0
    raw = ffi.cast("int32_t *", ptr)
    count, pos = raw[0], 4
    for _ in range(2 * count):
        pos += 4 + ffi.cast("int32_t *", ptr + pos)[0]
    return pos


def _read(ffi: Any, node: Any, depth: int) -> SchemaNode:
    if depth > _MAX_DEPTH:
        raise ValueError("type nested too deeply")
    size = _metadata_size(ffi, node.metadata)
    return SchemaNode(
        ffi.string(node.format),
        ffi.string(node.name) if node.name != ffi.NULL else b"",
        bytes(ffi.buffer(node.metadata, size)) if size else b"",
        int(node.flags),
        tuple(_read(ffi, node.children[i], depth + 1) for i in range(node.n_children)),
        _read(ffi, node.dictionary, depth + 1) if node.dictionary != ffi.NULL else None,
    )


def export_type(data_type: Any) -> SchemaNode:
    """The C data interface's description of a pyarrow type, as a tree of :class:`SchemaNode`."""
    ffi = _ffi()
    c_schema = ffi.new("struct ArrowSchema *")
    data_type._export_to_c(int(ffi.cast("uintptr_t", c_schema)))
    try:
        return _read(ffi, c_schema, 0)
    finally:
        c_schema.release(c_schema)


def _build(ffi: Any, node: SchemaNode, keep: list[Any], depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise ValueError("type nested too deeply")
    c = ffi.new("struct ArrowSchema *")
    keep.append(c)
    for field, value in (("format", node.format), ("name", node.name)):
        buf = ffi.new("char[]", value)
        keep.append(buf)
        setattr(c, field, buf)
    if node.metadata:
        meta = ffi.new("char[]", node.metadata)
        keep.append(meta)
        c.metadata = meta
    c.flags = node.flags
    c.n_children = len(node.children)
    if node.children:
        children = ffi.new("struct ArrowSchema *[]", len(node.children))
        keep.append(children)
        for i, child in enumerate(node.children):
            children[i] = _build(ffi, child, keep, depth + 1)
        c.children = children
    if node.dictionary is not None:
        c.dictionary = _build(ffi, node.dictionary, keep, depth + 1)
    c.release = _RELEASE
    return c


def import_type(node: SchemaNode) -> Any:
    """The pyarrow type a :class:`SchemaNode` tree describes (Arrow validates the format strings
    and the shape of the tree while importing it).

    Raises:
        ValueError: Arrow refuses the description (pyarrow's ``ArrowInvalid`` is a ValueError),
            or the tree is nested more than 64 levels deep.
    """
    import pyarrow as pa

    ffi = _ffi()
    keep: list[Any] = []
    root = _build(ffi, node, keep, 0)
    try:
        return pa.DataType._import_from_c(int(ffi.cast("uintptr_t", root)))
    finally:
        del keep  # the importer has copied what it needs and released the root
