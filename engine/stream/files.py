"""Engine files: Cobblestone-256 messages under the service's versioned keys.

An engine file is ``header || message``. The 9-byte header names the format and the key version
(``b"EFCB"``, format 1, the key version as a big-endian uint32) and holds no secret; the message
is a standard Cobblestone-256 message whose input key is that version's key and whose context is
``header || the caller's context``, so an edited header fails the key commitment. Files decrypt
under any version the provider still holds, after any number of rotations.

The input key never leaves native memory: the per-file key is derived from the provider's key
handle (:meth:`engine.AesGcm.derive`).
"""

from __future__ import annotations

import errno
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..atomic_file import atomic_output
from ..keys.base import KeyState, KeyVersionNotUsable, VersionedKey
from ..refusals import count_refusal, counts_refusals, metrics_of_service
from ..service import EncryptionService, get_encryption_service
from . import cobblestone
from ._io import Sink, Source
from .errors import NotAnEngineFile

__all__ = ["FILE_HEADER_BYTES", "FileEncryption", "FileResult", "atomic_output", "file_header",
           "read_file_header"]

FILE_MAGIC = b"EFCB"
FILE_FORMAT = 1
FILE_HEADER_BYTES = 9
STDIO = "-"


def file_header(key_version: int) -> bytes:
    """The 9-byte header of an engine file under ``key_version``."""
    return FILE_MAGIC + bytes([FILE_FORMAT]) + key_version.to_bytes(4, "big")


def read_file_header(header: bytes) -> int:
    """The key version a header names.

    Raises:
        NotAnEngineFile: not an engine file header, or a format this version does not know.
    """
    if len(header) < FILE_HEADER_BYTES or header[:4] != FILE_MAGIC:
        raise NotAnEngineFile("not an engine encrypted file (no EFCB header)")
    if header[4] != FILE_FORMAT:
        raise NotAnEngineFile(f"unknown engine file format {header[4]}")
    version = int.from_bytes(header[5:9], "big")
    if version < 1:
        raise NotAnEngineFile("the file header names key version 0")
    return version


# Every error a public method raises is counted once in engine_encryption_errors_total.
_KINDS = ((NotAnEngineFile, "malformed"),)
_counted = counts_refusals(lambda self, *args, **kwargs: metrics_of_service(self._service),
                           kinds=_KINDS)


class _CountedReads:
    """A streaming reader whose first failed read or seek is counted (the readers raise a
    failure again at every later read: one refusal)."""

    def __init__(self, *args: Any, metrics: Any = None, **kwargs: Any) -> None:
        self._metrics = metrics
        super().__init__(*args, **kwargs)

    def _count_once(self, exc: Exception) -> None:
        metrics, self._metrics = self._metrics, None
        if metrics is not None:
            count_refusal(metrics, exc, _KINDS)

    def readinto(self, buffer: Any) -> int:
        try:
            return super().readinto(buffer)  # type: ignore[misc]
        except Exception as exc:
            self._count_once(exc)
            raise


class _Decryptor(_CountedReads, cobblestone.Decryptor):
    pass


class _RandomAccessReader(_CountedReads, cobblestone.RandomAccessReader):
    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        try:
            return super().seek(offset, whence)
        except Exception as exc:
            self._count_once(exc)
            raise


def _context(header: bytes, context: Any) -> bytes:
    return header + cobblestone.context_bytes(context)


@dataclass(frozen=True)
class FileResult:
    """What one file operation did."""

    operation: str
    key_version: int
    plaintext_bytes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"operation": self.operation, "key_version": self.key_version,
                "plaintext_bytes": self.plaintext_bytes, "seconds": self.seconds}


class FileEncryption:
    """Encrypts and decrypts files and streams with the service's versioned keys.

    Args:
        service: the :class:`~engine.EncryptionService` whose provider holds the keys (default:
            the process-wide one, :func:`engine.get_encryption_service`).
        threads: threads for the cryptography (None: all cores; see :func:`.cobblestone.encrypt_stream`).
    """

    __slots__ = ("_service", "_threads")

    def __init__(self, service: EncryptionService | None = None, *,
                 threads: int | None = None) -> None:
        self._service = service
        self._threads = threads

    def __repr__(self) -> str:
        return "<FileEncryption>"

    @property
    def service(self) -> EncryptionService:
        return self._service if self._service is not None else get_encryption_service()

    def _current_key(self) -> VersionedKey:
        key = self.service.provider.get_current_key()
        if key.state is not KeyState.ACTIVE:
            raise KeyVersionNotUsable(
                f"key version {key.version} is {key.state.value}; it cannot encrypt")
        return key

    def _audit(self, version: int, operation: str) -> None:
        audit = self.service.audit
        if audit is not None:
            audit.key_access(version, operation, 1)

    # ---- streams ----

    @_counted
    def encrypt_stream(self, src: Any, dst: Any, context: Any = b"", *,
                       progress: cobblestone.Progress | None = None) -> FileResult:
        """Encrypts everything ``src`` yields into an engine file written to ``dst``.

        Args:
            src, dst: binary file objects (raw files and pipes go without extra copies).
            context: bytes or str, bound into the file; decryption must repeat it.
            progress: called with the plaintext bytes done after each window.

        Raises:
            KeyVersionNotUsable: the current key version may not encrypt.
        """
        start = time.perf_counter()
        key = self._current_key()
        header = file_header(key.version)
        Sink(dst).write(header)
        total = cobblestone.encrypt_stream(key.cipher, src, dst, _context(header, context),
                                           progress=progress, threads=self._threads)
        self._audit(key.version, "encrypt-file")
        return FileResult("encrypt", key.version, total, time.perf_counter() - start)

    @_counted
    def decrypt_stream(self, src: Any, dst: Any, context: Any = b"", *,
                       progress: cobblestone.Progress | None = None) -> FileResult:
        """Decrypts an engine file from ``src`` into ``dst``, writing only authenticated
        plaintext (on failure, ``dst`` holds the plaintext of the chunks before the bad one).

        Raises:
            NotAnEngineFile: ``src`` does not start with an engine file header.
            UnknownKeyVersion: the provider has no key of that version (never made, or purged).
            CommitmentMismatch: wrong context, or the header was edited.
            TruncatedMessage, ChunkInvalid: the file is truncated or was modified.
        """
        start = time.perf_counter()
        source = Source(src)
        header = source.read_exact_or_less(FILE_HEADER_BYTES)
        key = self.service.provider.get_key(read_file_header(header))
        total = cobblestone.decrypt_stream(key.cipher, src, dst, _context(header, context),
                                           progress=progress, threads=self._threads)
        self._audit(key.version, "decrypt-file")
        return FileResult("decrypt", key.version, total, time.perf_counter() - start)

    @_counted
    def encrypt(self, data: Any, context: Any = b"") -> bytes:
        """An engine file's bytes from ``data`` (bytes-like)."""
        import io

        out = io.BytesIO()
        self.encrypt_stream(io.BytesIO(memoryview(data).tobytes()), out, context)
        return out.getvalue()

    @_counted
    def decrypt(self, data: Any, context: Any = b"") -> bytes:
        """The plaintext of an engine file's bytes (see :meth:`decrypt_stream` for errors)."""
        import io

        out = io.BytesIO()
        self.decrypt_stream(io.BytesIO(memoryview(data).tobytes()), out, context)
        return out.getvalue()

    @_counted
    def writer(self, dst: Any, context: Any = b"") -> cobblestone.Encryptor:
        """A writable file object encrypting into an engine file on ``dst`` (complete once
        closed; see :class:`~engine.stream.Encryptor`)."""
        key = self._current_key()
        header = file_header(key.version)
        Sink(dst).write(header)
        self._audit(key.version, "encrypt-file")
        return cobblestone.Encryptor(key.cipher, dst, _context(header, context),
                                     threads=self._threads)

    @_counted
    def reader(self, src: Any, context: Any = b"") -> cobblestone.Decryptor:
        """A readable file object over the engine file in ``src`` (streaming)."""
        header = Source(src).read_exact_or_less(FILE_HEADER_BYTES)
        key = self.service.provider.get_key(read_file_header(header))
        self._audit(key.version, "decrypt-file")
        return _Decryptor(key.cipher, src, _context(header, context), threads=self._threads,
                          metrics=metrics_of_service(self._service))

    @_counted
    def open(self, src: Any, context: Any = b"") -> cobblestone.RandomAccessReader:
        """A readable, seekable file object over the engine file in ``src`` (a path or a
        seekable binary file object); reads decrypt only the chunks they touch."""
        owned = isinstance(src, (str, os.PathLike))
        if owned:
            src = open(src, "rb", buffering=0)  # noqa: SIM115 (closed with the reader)
        try:
            src.seek(0)
            header = Source(src).read_exact_or_less(FILE_HEADER_BYTES)
            key = self.service.provider.get_key(read_file_header(header))
            reader = _RandomAccessReader(key.cipher, src, _context(header, context),
                                         offset=FILE_HEADER_BYTES,
                                         threads=self._threads, close_source=owned,
                                         metrics=metrics_of_service(self._service))
        except BaseException:
            if owned:
                src.close()
            raise
        self._audit(key.version, "decrypt-file")
        return reader

    # ---- paths (what `crypto-engine encrypt/decrypt` run) ----

    @_counted
    def encrypt_file(self, src: str, dst: str, context: Any = b"", *,
                     progress: cobblestone.Progress | None = None,
                     fsync: bool = False,
                     before_commit: Callable[[], Any] | None = None) -> FileResult:
        """Encrypts the file ``src`` into ``dst`` (either may be ``"-"``: stdin/stdout).

        ``dst`` appears only once complete: it is written under a temporary name in its
        directory (unnamed where Linux allows, so even SIGKILL leaves nothing) and renamed at the
        end. ``fsync`` also flushes it to disk before the rename. ``before_commit`` is called
        just before that rename (on stdout: after the last byte), and what it raises cancels it
        (see :func:`engine.atomic_file.atomic_output`).
        """
        with _input(src) as fin, _output(dst, fsync, before_commit) as fout:
            return self.encrypt_stream(fin, fout, context, progress=progress)

    @_counted
    def decrypt_file(self, src: str, dst: str, context: Any = b"", *,
                     progress: cobblestone.Progress | None = None,
                     fsync: bool = False,
                     before_commit: Callable[[], Any] | None = None) -> FileResult:
        """Decrypts the engine file ``src`` into ``dst`` (either may be ``"-"``).

        A file ``dst`` appears only after the last chunk authenticated (temporary name, then
        rename); on failure nothing is left. On stdout, nothing past the last authenticated
        chunk is ever written. ``before_commit``: as for :meth:`encrypt_file`.
        """
        with _input(src) as fin, _output(dst, fsync, before_commit) as fout:
            return self.decrypt_stream(fin, fout, context, progress=progress)


def _standard(stream: Any, name: str) -> int:
    """The descriptor of stdin or stdout (None when the process was started with it closed)."""
    if stream is None:
        raise OSError(errno.EBADF, f"{name} is closed")
    return stream.fileno()


@contextmanager
def _input(path: str) -> Iterator[Any]:
    if path == STDIO:
        yield open(_standard(sys.stdin, "stdin"), "rb", buffering=0, closefd=False)
        return
    with open(path, "rb", buffering=0) as f:
        yield f


@contextmanager
def _output(path: str, fsync: bool, before_commit: Callable[[], Any] | None) -> Iterator[Any]:
    if path == STDIO:
        fd = _standard(sys.stdout, "stdout")
        sys.stdout.flush()
        yield open(fd, "wb", buffering=0, closefd=False)
        if before_commit is not None:
            before_commit()
        return
    with atomic_output(path, fsync=fsync, before_commit=before_commit) as f:
        yield f
