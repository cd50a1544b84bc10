"""Moving chunks between streams and the buffers the batch cipher works on, without copies where
the operating system allows.

A :class:`Window` holds up to ``chunks`` chunks in the batch layout: chunk bodies back to back in
``data`` (plaintext or ciphertext, sealed and opened in place) and their tags in ``tags``. A
message has them interleaved (body || tag per chunk). On a raw file descriptor (files, pipes,
stdin/stdout) ``readv``/``writev`` scatter and gather between the two layouts in the kernel's own
copy; any other file object goes through a staging buffer and one numpy copy.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from ..buffers import empty_bytes
from ..errors import InvalidArgumentType

CHUNK = 16384
TAG = 16
SEALED = CHUNK + TAG
IOV_MAX = 1024  # Linux's UIO_MAXIOV

_HAVE_VECTORED = hasattr(os, "readv") and hasattr(os, "writev")


class Window:
    """Reusable buffers for ``chunks`` chunks; ``data`` holds plaintext at times (wiped by
    :meth:`wipe`)."""

    __slots__ = ("chunks", "data", "tags", "offsets", "iov", "_staging")

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.data = empty_bytes(chunks * CHUNK, secret=True)
        self.tags = np.zeros((chunks, TAG), dtype=np.uint8)
        self.offsets = np.arange(0, chunks * CHUNK + 1, CHUNK, dtype=np.int64)
        self._staging: np.ndarray | None = None
        data, tags = memoryview(self.data), memoryview(self.tags).cast("B")
        # The message layout of a full window, built once: body 0, tag 0, body 1, tag 1, ...
        self.iov = [part for j in range(chunks)
                    for part in (data[j * CHUNK:(j + 1) * CHUNK], tags[j * TAG:(j + 1) * TAG])]

    def staging(self) -> np.ndarray:
        if self._staging is None:
            self._staging = empty_bytes(self.chunks * SEALED, secret=True)
        return self._staging

    def message_iov(self, n: int, last_len: int) -> list:
        """The interleaved layout of chunks 0..n-1, chunk n-1 having a ``last_len``-byte body."""
        iov = self.iov[:2 * n]
        if n and last_len != CHUNK:
            j = n - 1
            if last_len:
                iov[2 * j] = iov[2 * j][:last_len]
            else:  # an empty final chunk is its tag alone (no empty buffer: writev would stall)
                del iov[2 * j]
        return iov

    def offsets_for(self, n: int, last_len: int) -> np.ndarray:
        if last_len == CHUNK:
            return self.offsets[:n + 1]
        off = self.offsets[:n + 1].copy()
        off[n] = off[n - 1] + last_len
        return off

    def place_tail(self, full: int, rest: int) -> None:
        """Chunk ``full`` arrived short, ``rest`` bytes (16 to 16399) laid out as if it were
        whole: the last 16 of them are its tag. Moves that tag into ``tags[full]``."""
        start = full * CHUNK
        if rest <= CHUNK:
            tag = self.data[start + rest - TAG:start + rest].copy()
        else:
            over = rest - CHUNK
            tag = np.concatenate((self.data[start + rest - TAG:start + CHUNK], self.tags[full, :over]))
        self.tags[full] = tag

    def wipe(self) -> None:
        self.data.fill(0)
        if self._staging is not None:
            self._staging.fill(0)


def _fd_of(obj: Any, *, reading: bool) -> int | None:
    """The descriptor to use instead of ``obj``'s methods, when that is exact: a raw
    ``FileIO``, or (writing) a buffered writer once flushed. ``None``: use the object's methods."""
    if not _HAVE_VECTORED:
        return None
    if isinstance(obj, io.FileIO):
        return obj.fileno()
    if not reading and isinstance(obj, io.BufferedWriter):
        obj.flush()
        return obj.fileno()
    return None


def _advance(iov: list, i: int, head: Any, k: int) -> tuple[int, Any]:
    while k > 0:
        cur = head if head is not None else iov[i]
        if k >= len(cur):
            k -= len(cur)
            i += 1
            head = None
        else:
            head = cur[k:]
            k = 0
    return i, head


def readv_full(fd: int, iov: list) -> int:
    """Fills the buffers of ``iov`` in order from ``fd`` until they are full or EOF; returns the
    bytes read (short reads, as pipes give, are resumed)."""
    total = sum(len(v) for v in iov)
    got, i, head = 0, 0, None
    while got < total:
        window = iov[i:i + IOV_MAX] if head is None else [head, *iov[i + 1:i + IOV_MAX]]
        k = os.readv(fd, window)
        if k == 0:
            break
        got += k
        i, head = _advance(iov, i, head, k)
    return got


def writev_full(fd: int, iov: list) -> None:
    """Writes every buffer of ``iov`` in order to ``fd`` (partial writes are resumed)."""
    i, head, n = 0, None, len(iov)
    while i < n:
        window = iov[i:i + IOV_MAX] if head is None else [head, *iov[i + 1:i + IOV_MAX]]
        k = os.writev(fd, window)
        i, head = _advance(iov, i, head, k)


class Source:
    """Where a message or a plaintext is read from."""

    __slots__ = ("obj", "fd")

    def __init__(self, obj: Any) -> None:
        if not (hasattr(obj, "readinto") or hasattr(obj, "read")):
            raise InvalidArgumentType(f"expected a readable binary file object, not {type(obj).__name__}")
        self.obj = obj
        self.fd = _fd_of(obj, reading=True)

    def read_into(self, view: memoryview) -> int:
        """Fills ``view`` until full or EOF; returns the bytes read."""
        got, size = 0, len(view)
        readinto = getattr(self.obj, "readinto", None)
        while got < size:
            if self.fd is not None:
                k = os.readv(self.fd, [view[got:]])
            elif readinto is not None:
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

    def read_sealed(self, win: Window, limit: int) -> int:
        """Reads up to ``limit`` message bytes (at most a full window), scattering them into the
        window as whole chunks would lie: bodies into ``data``, tags into ``tags``. A short last
        chunk is left as it fell (see :meth:`Window.place_tail`). Returns the bytes read."""
        if self.fd is not None:
            full, rest = divmod(limit, SEALED)
            iov = win.iov[:2 * full]
            if rest:
                body = win.iov[2 * full]
                iov = iov + ([body[:rest]] if rest <= CHUNK else [body, win.iov[2 * full + 1][:rest - CHUNK]])
            return readv_full(self.fd, iov)
        st = win.staging()
        got = self.read_into(memoryview(st)[:limit])
        full, rest = divmod(got, SEALED)
        if full:
            rows = st[:full * SEALED].reshape(full, SEALED)
            win.data[:full * CHUNK].reshape(full, CHUNK)[:] = rows[:, :CHUNK]
            win.tags[:full] = rows[:, CHUNK:]
        if rest:
            tail = st[full * SEALED:got]
            body = min(rest, CHUNK)
            win.data[full * CHUNK:full * CHUNK + body] = tail[:body]
            if rest > CHUNK:
                win.tags[full, :rest - CHUNK] = tail[CHUNK:]
        return got

    def seek(self, pos: int) -> None:
        if self.fd is not None:
            os.lseek(self.fd, pos, os.SEEK_SET)
        else:
            self.obj.seek(pos)

    def size(self) -> int:
        """The total size of a seekable source."""
        if self.fd is not None:
            return os.fstat(self.fd).st_size if _is_regular(self.fd) else os.lseek(self.fd, 0, os.SEEK_END)
        return self.obj.seek(0, io.SEEK_END)


def _is_regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


class Sink:
    """Where a message or a plaintext is written to."""

    __slots__ = ("obj", "fd")

    def __init__(self, obj: Any) -> None:
        if not hasattr(obj, "write"):
            raise InvalidArgumentType(f"expected a writable binary file object, not {type(obj).__name__}")
        self.obj = obj
        self.fd = _fd_of(obj, reading=False)

    def write(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        if not len(view):
            return
        if self.fd is not None:
            writev_full(self.fd, [view])
            return
        written = 0
        while written < len(view):
            k = self.obj.write(view[written:])
            written += len(view) - written if k is None else k

    def write_sealed(self, win: Window, n: int, last_len: int) -> None:
        """Writes chunks 0..n-1 of the window in the message layout (chunk n-1's body is
        ``last_len`` bytes)."""
        if self.fd is not None:
            writev_full(self.fd, win.message_iov(n, last_len))
            return
        st = win.staging()
        full = n if last_len == CHUNK else n - 1
        if full:
            rows = st[:full * SEALED].reshape(full, SEALED)
            rows[:, :CHUNK] = win.data[:full * CHUNK].reshape(full, CHUNK)
            rows[:, CHUNK:] = win.tags[:full]
        end = full * SEALED
        if full < n:
            st[end:end + last_len] = win.data[full * CHUNK:full * CHUNK + last_len]
            st[end + last_len:end + last_len + TAG] = win.tags[full]
            end += last_len + TAG
        self.write(st[:end])

    def flush(self) -> None:
        flush = getattr(self.obj, "flush", None)
        if flush is not None:
            flush()
