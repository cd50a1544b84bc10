"""Thrift's compact protocol, read from untrusted bytes (Parquet footers and page headers).

A caller names the fields it wants as a *spec* (a struct is ``{field id: spec}``; leaves are
:data:`INT`, :data:`BOOL`, :data:`BINARY`; :class:`ListOf` a list); every other field is
skipped by its wire type, and a field whose wire type is not the one asked for is skipped
too. Every length, count and nesting level is bounded by the bytes that are there, so a
malformed input raises the caller's error class and nothing else, and takes time linear in
its size: never another exception, never a hang.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from .errors import EngineError

__all__ = ["BINARY", "BOOL", "INT", "CompactReader", "ListOf", "Spec", "ThriftFormatError"]

INT, BOOL, BINARY = "int", "bool", "binary"
_MAX_DEPTH = 32
_MAX_VARINT_BYTES = 10

# wire types of the compact protocol
_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, \
    _STRUCT = range(13)
_INTS = (_I16, _I32, _I64)


class ThriftFormatError(EngineError, ValueError):
    """Thrift compact bytes that do not parse (truncated, corrupted)."""


@dataclass(frozen=True)
class ListOf:
    """A list (or set) whose elements are read as ``element``."""

    element: "Spec"


Spec = Union[str, ListOf, dict]


class CompactReader:
    """Reads structs from ``buf`` starting at ``pos``; :attr:`pos` is where the last read
    ended.

    Args:
        error: the exception class raised for malformed bytes (called with a message).
        what: how messages name the data ("the Parquet footer").
    """

    __slots__ = ("buf", "pos", "_error", "_what")

    def __init__(self, buf: bytes, pos: int = 0, *, error: type[Exception] = ThriftFormatError,
                 what: str = "the Thrift data") -> None:
        self.buf, self.pos, self._error, self._what = buf, pos, error, what

    def _fail(self, problem: str) -> Exception:
        return self._error(f"{self._what} {problem}")

    def _byte(self) -> int:
        if self.pos >= len(self.buf):
            raise self._fail("is truncated")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def _advance(self, n: int) -> None:
        if n > len(self.buf) - self.pos:
            raise self._fail("is truncated")
        self.pos += n

    def _varint(self) -> int:
        value = 0
        for i in range(_MAX_VARINT_BYTES):
            b = self._byte()
            value |= (b & 0x7F) << (7 * i)
            if b < 0x80:
                return value
        raise self._fail("holds a varint longer than 10 bytes")

    def _zigzag(self) -> int:
        v = self._varint()
        return (v >> 1) ^ -(v & 1)

    def _count(self, n: int, least_bytes: int) -> int:
        """``n`` items of at least ``least_bytes`` each must fit in what is left."""
        if n * least_bytes > len(self.buf) - self.pos:
            raise self._fail("is truncated (a count past its end)")
        return n

    def struct(self, spec: dict[int, Spec], depth: int = 0) -> dict[int, Any]:
        """The wanted fields of the struct at :attr:`pos`, by field id (a union: one field).

        Raises:
            the reader's error class: the bytes do not parse.
        """
        if depth > _MAX_DEPTH:
            raise self._fail("is nested too deeply")
        fields: dict[int, Any] = {}
        last = 0
        while True:
            head = self._byte()
            if head == _STOP:
                return fields
            kind, delta = head & 0x0F, head >> 4
            field = last + delta if delta else self._zigzag()
            last = field
            want = spec.get(field)
            if kind in (_TRUE, _FALSE):  # a struct field's bool is in its type nibble
                if want == BOOL:
                    fields[field] = kind == _TRUE
            elif want is not None and _matches(want, kind):
                fields[field] = self._read(kind, want, depth)
            else:
                self._skip(kind, depth)

    def _read(self, kind: int, want: Spec, depth: int) -> Any:
        if kind == _STRUCT:
            return self.struct(want, depth + 1)  # type: ignore[arg-type]
        if kind in _INTS:
            return self._zigzag()
        if kind == _BINARY:
            n = self._count(self._varint(), 1)
            out = self.buf[self.pos:self.pos + n]
            self.pos += n
            return bytes(out)
        element, size = self._list_head(depth)  # a list: _matches said so
        if element in (_TRUE, _FALSE):
            values = [self._byte() == _TRUE for _ in range(size)]
            return values if want.element == BOOL else None  # type: ignore[union-attr]
        inner = want.element  # type: ignore[union-attr]
        if not _matches(inner, element):
            for _ in range(size):
                self._skip(element, depth + 1)
            return None
        return [self._read(element, inner, depth + 1) for _ in range(size)]

    def _list_head(self, depth: int) -> tuple[int, int]:
        if depth > _MAX_DEPTH:
            raise self._fail("is nested too deeply")
        head = self._byte()
        size, element = head >> 4, head & 0x0F
        if size == 15:
            size = self._varint()
        if not _TRUE <= element <= _STRUCT:
            raise self._fail(f"holds a list of unknown Thrift type {element}")
        return element, self._count(size, 1)

    def _skip(self, kind: int, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise self._fail("is nested too deeply")
        if kind in (_TRUE, _FALSE):  # only inside lists and maps: one byte of its own
            self._advance(1)
        elif kind == _BYTE:
            self._advance(1)
        elif kind in _INTS:
            self._varint()
        elif kind == _DOUBLE:
            self._advance(8)
        elif kind == _BINARY:
            self._advance(self._varint())
        elif kind in (_LIST, _SET):
            element, size = self._list_head(depth)
            for _ in range(size):
                self._skip(element, depth + 1)
        elif kind == _MAP:
            size = self._count(self._varint(), 2)
            if size:
                types = self._byte()
                key, value = types >> 4, types & 0x0F
                if not (_TRUE <= key <= _STRUCT and _TRUE <= value <= _STRUCT):
                    raise self._fail("holds a map of unknown Thrift types")
                for _ in range(size):
                    self._skip(key, depth + 1)
                    self._skip(value, depth + 1)
        elif kind == _STRUCT:
            self.struct({}, depth + 1)
        else:
            raise self._fail(f"holds an unknown Thrift type {kind}")


def _matches(want: Spec, kind: int) -> bool:
    if isinstance(want, dict):
        return kind == _STRUCT
    if isinstance(want, ListOf):
        return kind in (_LIST, _SET)
    if want == INT:
        return kind in _INTS
    if want == BINARY:
        return kind == _BINARY
    return want == BOOL and kind in (_TRUE, _FALSE)
