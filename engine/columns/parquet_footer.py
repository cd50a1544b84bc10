"""What a Parquet file's footer says about its Parquet Modular Encryption, read without any key:
the key metadata of the footer key and (when the footer is plaintext) of each column key.

The footer is Thrift in the compact protocol; this reader decodes only as much as the crypto
metadata needs, with bounds on every length, count and nesting level (the file is untrusted).
Layouts (Parquet's encryption specification)::

    encrypted footer: ... | FileCryptoMetaData | encrypted FileMetaData | length (4) | "PARE"
    plaintext footer: ... | FileMetaData | signature (28) | length (4) | "PAR1"
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..errors import EngineError

__all__ = ["FooterCrypto", "ParquetFooterError", "read_footer_crypto"]

MAGIC_PLAIN = b"PAR1"
MAGIC_ENCRYPTED = b"PARE"
MAX_FOOTER_BYTES = 256 << 20
_MAX_DEPTH = 32
_MAX_ITEMS = 1 << 24

# Thrift compact protocol types
_TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(1, 13)


class ParquetFooterError(EngineError, ValueError):
    """The file is not Parquet, or its footer does not parse (truncated, corrupted)."""


class _Compact:
    """A reader of Thrift's compact protocol over a bytes object."""

    __slots__ = ("buf", "pos", "items")

    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf, self.pos, self.items = buf, pos, 0

    def _byte(self) -> int:
        if self.pos >= len(self.buf):
            raise ParquetFooterError("the Parquet footer is truncated")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        value = shift = 0
        while True:
            b = self._byte()
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
            shift += 7
            if shift > 63:
                raise ParquetFooterError("a malformed varint in the Parquet footer")

    def zigzag(self) -> int:
        v = self.varint()
        return (v >> 1) ^ -(v & 1)

    def _count(self, n: int) -> int:
        self.items += n
        if n < 0 or self.items > _MAX_ITEMS:
            raise ParquetFooterError("the Parquet footer is too large")
        return n

    def binary(self) -> bytes:
        n = self._count(self.varint())
        if n > len(self.buf) - self.pos:
            raise ParquetFooterError("the Parquet footer is truncated")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def value(self, kind: int, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise ParquetFooterError("the Parquet footer is nested too deeply")
        if kind in (_TRUE, _FALSE):  # inside a list a bool is one byte of its own
            return self._byte() == _TRUE
        if kind == _BYTE:
            return self._byte()
        if kind in (_I16, _I32, _I64):
            return self.zigzag()
        if kind == _DOUBLE:
            if len(self.buf) - self.pos < 8:
                raise ParquetFooterError("the Parquet footer is truncated")
            self.pos += 8
            return None
        if kind == _BINARY:
            return self.binary()
        if kind in (_LIST, _SET):
            head = self._byte()
            size = head >> 4
            if size == 15:
                size = self.varint()
            self._count(size)
            return [self.value(head & 0x0F, depth + 1) for _ in range(size)]
        if kind == _MAP:
            size = self._count(self.varint())
            if not size:
                return {}
            types = self._byte()
            return {self.value(types >> 4, depth + 1): self.value(types & 0x0F, depth + 1)
                    for _ in range(size)}
        if kind == _STRUCT:
            return self.struct(depth + 1)
        raise ParquetFooterError("an unknown Thrift type in the Parquet footer")

    def struct(self, depth: int = 0) -> dict[int, Any]:
        """A struct as {field id: value} (unions too: one field)."""
        fields: dict[int, Any] = {}
        last = 0
        while True:
            head = self._byte()
            if head == 0:
                return fields
            kind, delta = head & 0x0F, head >> 4
            field = last + delta if delta else self.zigzag()
            if kind in (_TRUE, _FALSE):
                fields[field] = kind == _TRUE
            else:
                fields[field] = self.value(kind, depth)
            last = field


@dataclass(frozen=True)
class FooterCrypto:
    """The encryption facts of a Parquet footer.

    Attributes:
        encrypted: whether the file uses Parquet Modular Encryption at all.
        encrypted_footer: True for an encrypted footer ("PARE"), False for a plaintext one.
        algorithm: ``"AES_GCM_V1"`` or ``"AES_GCM_CTR_V1"`` (None when not encrypted).
        footer_key_metadata: the footer key's key metadata (bytes), or None.
        column_key_metadata: column path -> key metadata of the columns under column keys,
            visible only when the footer is plaintext.
    """

    encrypted: bool
    encrypted_footer: bool
    algorithm: str | None
    footer_key_metadata: bytes | None
    column_key_metadata: dict[str, bytes]


_ALGORITHMS = {1: "AES_GCM_V1", 2: "AES_GCM_CTR_V1"}


def _algorithm(union: Any) -> str | None:
    if not isinstance(union, dict) or len(union) != 1:
        raise ParquetFooterError("the Parquet footer names no encryption algorithm")
    return _ALGORITHMS.get(next(iter(union)), "unknown")


def read_footer_crypto(path: str | os.PathLike) -> FooterCrypto:
    """Reads the encryption facts of a Parquet file's footer (no key is needed).

    Raises:
        ParquetFooterError: not a Parquet file, or a footer that does not parse.
        OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size < 12:
            raise ParquetFooterError(f"{os.fspath(path)} is too short to be a Parquet file")
        f.seek(size - 8)
        tail = f.read(8)
        length = int.from_bytes(tail[:4], "little")
        magic = tail[4:]
        if magic not in (MAGIC_PLAIN, MAGIC_ENCRYPTED):
            raise ParquetFooterError(f"{os.fspath(path)} is not a Parquet file")
        if length > min(size - 12, MAX_FOOTER_BYTES):
            raise ParquetFooterError(f"{os.fspath(path)} has a footer length past its start")
        f.seek(size - 8 - length)
        footer = f.read(length)
    if magic == MAGIC_ENCRYPTED:
        crypto = _Compact(footer).struct()
        key = crypto.get(2)
        return FooterCrypto(True, True, _algorithm(crypto.get(1)),
                            key if isinstance(key, bytes) else None, {})
    meta = _Compact(footer).struct()
    if 8 not in meta:
        return FooterCrypto(False, False, None, None, {})
    columns: dict[str, bytes] = {}
    for group in meta.get(4) or []:
        for chunk in (group.get(1) or []) if isinstance(group, dict) else []:
            crypto = chunk.get(8) if isinstance(chunk, dict) else None
            with_key = crypto.get(2) if isinstance(crypto, dict) else None
            if isinstance(with_key, dict) and isinstance(with_key.get(2), bytes):
                path_parts = with_key.get(1) or []
                name = ".".join(p.decode("utf-8", "replace") for p in path_parts
                                if isinstance(p, bytes))
                columns.setdefault(name, with_key[2])
    key = meta.get(9)
    return FooterCrypto(True, False, _algorithm(meta.get(8)),
                        key if isinstance(key, bytes) else None, columns)
