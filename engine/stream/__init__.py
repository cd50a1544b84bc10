"""Files and streams in C2SP chunked encryption (c2sp.org/chunked-encryption), Cobblestone-256.

Two levels:

* the plain format, for interoperability: :func:`encrypt` / :func:`decrypt` (whole bytes),
  :func:`encrypt_stream` / :func:`decrypt_stream` (file objects, pipes), :class:`Encryptor` and
  :class:`Decryptor` (streaming file objects), :class:`RandomAccessReader` (seekable), each
  taking a raw 32-byte input key and a context (the raw mode, a key and base nonce given, is
  :class:`engine.hazmat.ChunkCipher`);
* engine files (:class:`FileEncryption`): a 9-byte header naming the key version, then a
  Cobblestone-256 message under that version of the service's keys.
"""

from .cobblestone import (
    CHUNK_BYTES,
    HEADER_BYTES,
    Decryptor,
    Encryptor,
    RandomAccessReader,
    decrypt,
    decrypt_stream,
    encrypt,
    encrypt_stream,
    open_message,
)
from .errors import (
    ChunkInvalid,
    CommitmentMismatch,
    MessageInvalid,
    NotAnEngineFile,
    StreamError,
    TruncatedMessage,
)
from .files import FILE_HEADER_BYTES, FileEncryption, FileResult, atomic_output, file_header, read_file_header

__all__ = [
    "CHUNK_BYTES",
    "FILE_HEADER_BYTES",
    "HEADER_BYTES",
    "ChunkInvalid",
    "CommitmentMismatch",
    "Decryptor",
    "Encryptor",
    "FileEncryption",
    "FileResult",
    "MessageInvalid",
    "NotAnEngineFile",
    "RandomAccessReader",
    "StreamError",
    "TruncatedMessage",
    "atomic_output",
    "decrypt",
    "decrypt_stream",
    "encrypt",
    "encrypt_stream",
    "file_header",
    "open_message",
    "read_file_header",
]
