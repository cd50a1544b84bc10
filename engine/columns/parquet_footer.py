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
from ..thrift_compact import BINARY, CompactReader, ListOf

__all__ = ["FooterCrypto", "ParquetFooterError", "chunk_encryption", "read_footer_crypto"]

MAGIC_PLAIN = b"PAR1"
MAGIC_ENCRYPTED = b"PARE"
MAX_FOOTER_BYTES = 256 << 20


class ParquetFooterError(EngineError, ValueError):
    """The file is not Parquet, or its footer does not parse (truncated, corrupted)."""


# The fields of parquet.thrift read here (every other one is skipped).
_ALGORITHM: dict[int, Any] = {1: {}, 2: {}}  # union EncryptionAlgorithm: AES_GCM_V1, AES_GCM_CTR_V1
_FILE_CRYPTO_METADATA = {1: _ALGORITHM, 2: BINARY}  # algorithm, footer key metadata
_COLUMN_CRYPTO = {1: {}, 2: {1: ListOf(BINARY), 2: BINARY}}  # with footer key | with column key
_FILE_METADATA = {4: ListOf({1: ListOf({8: _COLUMN_CRYPTO})}),  # row groups > column chunks
                  8: _ALGORITHM, 9: BINARY}  # encryption algorithm, footer signing key metadata


def _parse(footer: bytes, spec: dict[int, Any]) -> dict[int, Any]:
    return CompactReader(footer, error=ParquetFooterError, what="the Parquet footer").struct(spec)


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
        chunk_encryption: with a plaintext footer, how each column chunk of the first row
            group is encrypted (see :func:`chunk_encryption`); else empty.
    """

    encrypted: bool
    encrypted_footer: bool
    algorithm: str | None
    footer_key_metadata: bytes | None
    column_key_metadata: dict[str, bytes]
    chunk_encryption: tuple[str | None, ...] = ()


_ALGORITHMS = {1: "AES_GCM_V1", 2: "AES_GCM_CTR_V1"}


def _algorithm(union: dict[int, Any] | None) -> str | None:
    if union is None or len(union) != 1:
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
        crypto = _parse(footer, _FILE_CRYPTO_METADATA)
        return FooterCrypto(True, True, _algorithm(crypto.get(1)), crypto.get(2), {})
    meta = _parse(footer, _FILE_METADATA)
    if 8 not in meta:
        return FooterCrypto(False, False, None, None, {})
    columns: dict[str, bytes] = {}
    for group in meta.get(4) or []:
        for chunk in group.get(1) or []:
            with_key = chunk.get(8, {}).get(2)
            if with_key is not None and 2 in with_key:
                name = ".".join(p.decode("utf-8", "replace") for p in with_key.get(1) or [])
                columns.setdefault(name, with_key[2])
    return FooterCrypto(True, False, _algorithm(meta.get(8)), meta.get(9), columns,
                        tuple(_chunk_kinds(meta)))


def chunk_encryption(metadata_file: bytes) -> list[str | None]:
    """How each column chunk of the first row group is encrypted, in leaf order: None (not
    encrypted), ``"footer"`` (under the footer key) or ``"column"`` (under a column key of its
    own), from the bytes ``pyarrow.parquet.FileMetaData.write_metadata_file`` writes of a file
    with an encrypted footer opened with its keys (its crypto metadata, decrypted; pyarrow 26
    crashes writing that of a file with a plaintext footer, whose own footer says as much:
    :attr:`FooterCrypto.chunk_encryption`). Empty for a file without row groups.

    Raises:
        ParquetFooterError: the bytes are not a Parquet metadata file.
    """
    if len(metadata_file) < 12 or metadata_file[-4:] != MAGIC_PLAIN:
        raise ParquetFooterError("not a Parquet metadata file")
    length = int.from_bytes(metadata_file[-8:-4], "little")
    if length > len(metadata_file) - 12:
        raise ParquetFooterError("a Parquet metadata file with a footer length past its start")
    return _chunk_kinds(_parse(metadata_file[-8 - length:-8], _FILE_METADATA))


def _chunk_kinds(meta: dict[int, Any]) -> list[str | None]:
    groups = meta.get(4) or [{}]
    kinds: list[str | None] = []
    for chunk in groups[0].get(1) or []:
        crypto = chunk.get(8, {})
        kinds.append("column" if 2 in crypto else "footer" if 1 in crypto else None)
    return kinds
