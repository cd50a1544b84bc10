"""Moving a message's chunks between streams and the buffers the native chunk calls work on.

A :class:`Window` holds a run of chunks twice: as plaintext (``plain``: chunk bodies back to
back) and in the message layout (``sealed``: each chunk's body followed by its tag). The native
calls seal from one into the other and open back, so a window goes to or from any file object
(files, pipes, stdin/stdout, in-memory streams) in one read or write of contiguous bytes.
"""

from __future__ import annotations

import errno
import io
import os
import select
import time
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
        self.plain = self._plain.data
        self.sealed = empty_bytes(chunks * SEALED).data

    def wipe(self) -> None:
        self._plain.fill(0)


class _Readiness:
    """Waits until a file object that would block can go on: ``poll`` on its descriptor, so a
    non-blocking pipe (a parent may leave ``O_NONBLOCK`` on stdin or stdout) is waited for
    like a blocking one, with no CPU spent; an object without a descriptor is retried after
    pauses that grow to 50 ms. A signal handler that raises (Ctrl-C) ends the wait."""

    __slots__ = ("_fd", "_events", "_pause")

    def __init__(self, obj: Any, events: int) -> None:
        self._fd = _descriptor(obj)
        self._events = events
        self._pause = 0.001

    @property
    def non_blocking(self) -> bool:
        """Whether the object has a descriptor in non-blocking mode."""
        fd = self._fd
        if fd is None:
            return False
        try:
            return not os.get_blocking(fd)
        except OSError:
            return False

    def wait(self) -> None:
        if self._fd is not None:
            poller = select.poll()
            poller.register(self._fd, self._events)
            poller.poll()  # any event: readable, writable, hung up or in error; the call says which
            return
        time.sleep(self._pause)
        self._pause = min(self._pause * 2, 0.05)


def _descriptor(obj: Any) -> int | None:
    fileno = getattr(obj, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation, or closed
        return None
    return fd if type(fd) is int and fd >= 0 else None


def _invalid_count(what: str, k: Any, limit: int) -> OSError:
    return OSError(errno.EIO, f"the stream's {what}() returned {k!r} for at most {limit} bytes")


class Source:
    """Where a message or a plaintext is read from."""

    __slots__ = ("obj", "_readinto", "_ready")

    def __init__(self, obj: Any) -> None:
        if not (hasattr(obj, "readinto") or hasattr(obj, "read")):
            raise InvalidArgumentType(f"expected a readable binary file object, not {type(obj).__name__}")
        self.obj = obj
        self._readinto = getattr(obj, "readinto", None)
        self._ready: _Readiness | None = None

    def read_into(self, view: memoryview) -> int:
        """Fills ``view`` until full or EOF (short reads, as pipes give, are resumed; a
        non-blocking source with nothing to give yet is waited for); returns the bytes read.

        Raises:
            OSError: the source failed, or claimed more bytes than it was asked for.
        """
        got, size = 0, len(view)
        readinto = self._readinto
        while got < size:
            want = size - got
            try:
                if readinto is not None:
                    k = readinto(view[got:])
                else:
                    part = self.obj.read(want)
                    k = None if part is None else len(part)
                    if k is not None and k <= want:
                        view[got:got + k] = part
            except BlockingIOError:  # a buffered reader over a non-blocking descriptor
                k = None
            if k is None:  # nothing yet from a non-blocking source
                self._wait()
                continue
            if type(k) is not int or not 0 <= k <= want:
                raise _invalid_count("readinto" if readinto is not None else "read", k, want)
            if k == 0:
                break
            got += k
        return got

    def _wait(self) -> None:
        if self._ready is None:
            self._ready = _Readiness(self.obj, select.POLLIN)
        self._ready.wait()

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

    __slots__ = ("obj", "_write", "_ready")

    def __init__(self, obj: Any) -> None:
        if not hasattr(obj, "write"):
            raise InvalidArgumentType(f"expected a writable binary file object, not {type(obj).__name__}")
        self.obj = obj
        self._write = obj.write
        self._ready: _Readiness | None = None

    def write(self, data: Any) -> None:
        """Writes all of ``data``: partial writes (pipes) are resumed, and a non-blocking
        destination that cannot take a byte yet (``write`` returns None, or a buffered writer
        raises ``BlockingIOError``) is waited for until it can.

        A ``write`` that returns None on an object with no non-blocking descriptor took it all
        (file-like objects that return nothing).

        Raises:
            OSError: the destination failed (``BrokenPipeError``: its reader went away), or
                claimed to take more bytes than it was given.
        """
        view = memoryview(data).cast("B")
        size, written = len(view), 0
        while written < size:
            left = size - written
            try:
                k = self._write(view[written:])
            except BlockingIOError as exc:
                taken = exc.characters_written
                if not 0 <= taken <= left:
                    raise _invalid_count("write", taken, left) from None
                written += taken
                self._wait()
                continue
            if k is None:
                if not self._readiness().non_blocking:
                    return  # a file-like object that returns nothing took everything
                self._wait()
                continue
            if type(k) is not int or not 0 <= k <= left:
                raise _invalid_count("write", k, left)
            if k == 0:
                self._wait()
            written += k

    def _readiness(self) -> _Readiness:
        if self._ready is None:
            self._ready = _Readiness(self.obj, select.POLLOUT)
        return self._ready

    def _wait(self) -> None:
        self._readiness().wait()

    def flush(self) -> None:
        """Flushes the destination, waiting while a buffered writer over a non-blocking
        descriptor cannot take its buffer yet."""
        flush = getattr(self.obj, "flush", None)
        if flush is None:
            return
        while True:
            try:
                flush()
            except BlockingIOError:
                self._wait()
                continue
            return
