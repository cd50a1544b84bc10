"""Moving a message's chunks between streams and the buffers the native chunk calls work on.

A :class:`Window` holds a run of chunks twice: as plaintext (``plain``: chunk bodies back to
back) and in the message layout (``sealed``: each chunk's body followed by its tag). The native
calls seal from one into the other and open back, so a window goes to or from any file object
(files, pipes, stdin/stdout, in-memory streams) in one read or write of contiguous bytes.
"""

from __future__ import annotations

import io
from typing import Any

from ..aead import CHUNK_BYTES, CHUNK_SEALED_BYTES
from ..buffers import empty_bytes
from ..errors import InvalidArgumentType

CHUNK = CHUNK_BYTES
SEALED = CHUNK_SEALED_BYTES
TAG = SEALED - CHUNK


class Window:
    """Reusable buffers for up to ``chunks`` chunks; ``plain`` holds plaintext at times (wiped
    by :meth:`wipe`)."""

    __slots__ = ("chunks", "plain", "sealed", "_plain")

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self._plain = empty_bytes(chunks * CHUNK, secret=True)
        self.plain = memoryview(self._plain)
        self.sealed = memoryview(empty_bytes(chunks * SEALED))

    def wipe(self) -> None:
        self._plain.fill(0)


class Source:
    """Where a message or a plaintext is read from."""

    __slots__ = ("obj", "_readinto")

    def __init__(self, obj: Any) -> None:
        if not (hasattr(obj, "readinto") or hasattr(obj, "read")):
            raise InvalidArgumentType(f"expected a readable binary file object, not {type(obj).__name__}")
        self.obj = obj
        self._readinto = getattr(obj, "readinto", None)

    def read_into(self, view: memoryview) -> int:
        """Fills ``view`` until full or EOF (short reads, as pipes give, are resumed); returns
        the bytes read."""
        got, size = 0, len(view)
        readinto = self._readinto
        while got < size:
            if readinto is not None:
                k = readinto(view[got:])
            else:
                part = self.obj.read(size - got)
                k = len(part)
                view[got:got + k] = part
            if k is None:  # a non-blocking stream with nothing yet: wait for it like a blocking one
                continue
            if k == 0:
                break
            got += k
        return got

    def read_exact_or_less(self, n: int) -> bytes:
        buf = bytearray(n)
        got = self.read_into(memoryview(buf))
        return bytes(buf[:got])

    def seek(self, pos: int) -> None:
        self.obj.seek(pos)

    def size(self) -> int:
        """The total size of a seekable source."""
        return self.obj.seek(0, io.SEEK_END)


class Sink:
    """Where a message or a plaintext is written to."""

    __slots__ = ("obj", "_write")

    def __init__(self, obj: Any) -> None:
        if not hasattr(obj, "write"):
            raise InvalidArgumentType(f"expected a writable binary file object, not {type(obj).__name__}")
        self.obj = obj
        self._write = obj.write

    def write(self, data: Any) -> None:
        """Writes all of ``data`` (partial writes, as pipes allow, are resumed)."""
        view = memoryview(data).cast("B")
        size, written = len(view), 0
        while written < size:
            k = self._write(view[written:])
            written += size - written if k is None else k

    def flush(self) -> None:
        flush = getattr(self.obj, "flush", None)
        if flush is not None:
            flush()
