"""C2SP chunked encryption (c2sp.org/chunked-encryption) instantiated as Cobblestone-256:
AES-256-GCM with HKDF-Expand-SHA512, byte-exact with the specification.

A message is ``salt (24) || commitment (32) || chunk 0 || chunk 1 || ...``: 16 KiB chunks, each
sealed as an independent GCM record (empty AAD, nonce = base nonce XOR the chunk number), the last
one always shorter than 16 KiB (possibly empty). Key, base nonce and commitment come from
``HKDF-Expand(SHA-512, input key, "c2sp.org/chunked-encryption@v1+AEAD_AES_256_GCM" || 0x00 ||
salt || context)``, computed natively from a key handle (:meth:`engine.AesGcm.derive`).

A window of chunks goes through one native call (nonces derived natively, straight between
plaintext and the message layout) with the GIL released: a stream is read and written on the
calling thread while a helper thread seals or opens the window before, so it runs in bounded
memory (two 1 MiB windows) whatever its length.

Decryption checks the commitment before any chunk, releases a chunk's plaintext only after it
authenticated, and after an error keeps failing.
"""

from __future__ import annotations

import hmac
import io
import operator
from typing import Any, Callable, NoReturn

from ..aead import CHUNK_NONCE_BYTES, AesGcm, random_bytes
from ..buffers import check_threads
from ..errors import InvalidArgument, InvalidArgumentType
from ._io import CHUNK, SEALED, TAG, Sink, Source, Window
from ._pipeline import run_windows
from .errors import ChunkInvalid, CommitmentMismatch, TruncatedMessage

__all__ = [
    "CHUNK_BYTES",
    "ChunkCipher",
    "Decryptor",
    "Encryptor",
    "HEADER_BYTES",
    "RandomAccessReader",
    "context_bytes",
    "decrypt",
    "decrypt_stream",
    "encrypt",
    "encrypt_stream",
    "open_message",
]

CHUNK_BYTES = CHUNK
SALT_BYTES = 24
COMMITMENT_BYTES = 32
HEADER_BYTES = SALT_BYTES + COMMITMENT_BYTES
NONCE_BYTES = CHUNK_NONCE_BYTES
INFO_PREFIX = b"c2sp.org/chunked-encryption@v1+AEAD_AES_256_GCM\x00"
# Chunks per native call (read at each call, so tests can make it small). 1 MiB: a window's
# plaintext and ciphertext stay in the core's cache between the read, the native call and the
# write (16 MiB windows ran at memory speed instead: measured 10-20% more CPU per byte), and the
# per-call cost (about 10 us) is still noise. Random access reads as much at a time.
WINDOW_CHUNKS = 64
RANDOM_ACCESS_CHUNKS = 64

Progress = Callable[[int], Any]


def _input_key(key: Any) -> AesGcm:
    """The input key as a native handle: an :class:`AesGcm`, or 32 bytes."""
    if isinstance(key, AesGcm):
        return key
    try:
        size = memoryview(key).nbytes
    except TypeError:
        raise InvalidArgumentType(
            f"key must be an engine.AesGcm or 32 bytes, not {type(key).__name__}") from None
    if size != 32:
        raise InvalidArgument(f"Cobblestone-256 input keys are 32 bytes, not {size}")
    return AesGcm(key)


def context_bytes(context: Any) -> bytes:
    """``context`` as bytes: bytes-like as is, str as UTF-8."""
    if isinstance(context, str):
        return context.encode("utf-8")
    try:
        return memoryview(context).tobytes()
    except TypeError:
        raise InvalidArgumentType(
            f"context must be bytes-like or str, not {type(context).__name__}") from None


def derive(key: Any, salt: bytes, context: Any = b"", *,
           threads: int | None = None) -> tuple["ChunkCipher", bytes]:
    """The per-message chunk cipher and commitment for ``salt`` and ``context``."""
    cipher, extra = _input_key(key).derive(INFO_PREFIX + salt + context_bytes(context),
                                            extra=NONCE_BYTES + COMMITMENT_BYTES)
    return ChunkCipher(cipher, extra[:NONCE_BYTES], threads=threads), extra[NONCE_BYTES:]


class ChunkCipher:
    """The chunk layer alone: the specification's *raw mode* (key and base nonce given, no salt
    and no commitment). A hazardous primitive for protocols and known-answer tests: a key and
    base nonce must never seal two messages. Applications use :func:`encrypt` and friends.

    Args:
        key: the chunk key, an :class:`~engine.AesGcm` or 32 bytes.
        base_nonce: 12 bytes.
        threads: threads to use (None: all cores). A stream is read and written on the calling
            thread while another seals or opens the window before; one native call uses them all.
    """

    __slots__ = ("_cipher", "_base", "_threads")

    def __init__(self, key: Any, base_nonce: Any, *, threads: int | None = None) -> None:
        self._cipher = _input_key(key)
        try:
            base = memoryview(base_nonce).tobytes()
        except TypeError:
            raise InvalidArgumentType(
                f"the base nonce must be bytes-like, not {type(base_nonce).__name__}") from None
        if len(base) != NONCE_BYTES:
            raise InvalidArgument(f"the base nonce is {NONCE_BYTES} bytes, not {len(base)}")
        self._base = base
        self._threads = check_threads(threads)

    def __repr__(self) -> str:
        return "<ChunkCipher>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("chunk ciphers hold key material and cannot be pickled")

    @property
    def threads(self) -> int:
        return self._threads

    def seal_run(self, win: Window, first: int, size: int, final: bool, threads: int) -> int:
        """Seals the first ``size`` bytes of ``win.plain`` as chunks ``first..`` (``final``: the
        message ends with them) into ``win.sealed``; returns the sealed bytes."""
        return self._cipher.seal_chunks_into(self._base, first, win.plain[:size], win.sealed,
                                             final=final, threads=threads)

    def open_run(self, win: Window, first: int, size: int, final: bool, threads: int) -> int:
        """Opens the first ``size`` bytes of ``win.sealed`` as chunks ``first..`` into
        ``win.plain``; returns how many leading chunks authenticated (their plaintext only is
        in ``win.plain``)."""
        return self._cipher.open_chunks_into(self._base, first, win.sealed[:size], win.plain,
                                             final=final, threads=threads)

    def seal(self, data: Any) -> bytes:
        """Raw mode: the chunks of ``data`` (no salt, no commitment)."""
        out = io.BytesIO()
        _seal_stream(self, Source(io.BytesIO(memoryview(data).tobytes())), Sink(out), None)
        return out.getvalue()

    def open(self, chunks: Any) -> bytes:
        """Raw mode: the plaintext of ``chunks``.

        Raises:
            ChunkInvalid, TruncatedMessage: see :func:`decrypt`.
        """
        out = io.BytesIO()
        _open_stream(self, Source(io.BytesIO(memoryview(chunks).tobytes())), Sink(out), None)
        return out.getvalue()


# ---------------------------------------------------------------- whole streams

def _helpers(chunks: ChunkCipher) -> int:
    """Helper threads for a stream: one per core beyond the calling thread's, none on one core.

    The calling thread's reads and writes are copies that take a core's share too: on two
    cores, one helper sealing while the caller reads and writes ran 1.4-1.6x the serial loop
    and two helpers less than one (``bench/README.md``)."""
    return chunks.threads - 1


def _seal_stream(chunks: ChunkCipher, src: Source, dst: Sink, progress: Progress | None) -> int:
    full = WINDOW_CHUNKS * CHUNK
    state = {"first": 0, "total": 0}

    def read(win: Window) -> tuple[tuple[int, int, bool], bool]:
        got = src.read_into(win.plain[:full])
        final = got < full  # full chunks are never the last one
        first = state["first"]
        state["first"] = first + WINDOW_CHUNKS
        state["total"] += got
        return (first, got, final), final

    def work(win: Window, job: tuple[int, int, bool]) -> int:
        first, got, final = job
        return chunks.seal_run(win, first, got, final, 1)

    def emit(win: Window, job: tuple[int, int, bool], sealed: int) -> None:
        dst.write(win.sealed[:sealed])
        if progress is not None:
            progress(job[1])

    run_windows(WINDOW_CHUNKS, read, work, emit, helpers=_helpers(chunks))
    return state["total"]


def _open_stream(chunks: ChunkCipher, src: Source, dst: Sink, progress: Progress | None) -> int:
    state = {"first": 0, "total": 0}

    def read(win: Window) -> tuple[_Run, bool]:
        run = _read_run(src, win, WINDOW_CHUNKS, state["first"])
        state["first"] += run.n
        return run, run.final or run.error is not None

    def work(win: Window, run: _Run) -> int:
        return run.open(chunks, win, 1)

    def emit(win: Window, run: _Run, opened: int) -> None:
        size = run.plaintext_bytes(opened)
        dst.write(win.plain[:size])
        state["total"] += size
        if progress is not None and size:
            progress(size)
        error = run.failure(opened)
        if error is not None:
            raise error

    run_windows(WINDOW_CHUNKS, read, work, emit, helpers=_helpers(chunks))
    return state["total"]


class _Run:
    """A window's worth of a message as read: ``n`` chunks from chunk ``first`` (the last of
    them the message's final chunk when ``final``), ``size`` sealed bytes, and ``error`` when the
    message ended where no message can end (after the chunks that may still be released)."""

    __slots__ = ("first", "n", "size", "final", "error")

    def __init__(self, first: int, n: int, size: int, final: bool,
                 error: Exception | None) -> None:
        self.first, self.n, self.size, self.final, self.error = first, n, size, final, error

    def open(self, chunks: ChunkCipher, win: Window, threads: int) -> int:
        if not self.n:
            return 0
        return chunks.open_run(win, self.first, self.size, self.final, threads)

    def plaintext_bytes(self, opened: int) -> int:
        """The plaintext bytes of the first ``opened`` chunks."""
        if opened < self.n or not self.final:
            return opened * CHUNK
        return self.size - self.n * TAG

    def failure(self, opened: int) -> Exception | None:
        """The error to raise once the authenticated chunks are out, if any."""
        if opened < self.n:
            return ChunkInvalid(self.first + opened)
        return self.error


def _read_run(src: Source, win: Window, count: int, first: int) -> _Run:
    """Reads up to ``count`` sealed chunks of a message into ``win.sealed``."""
    limit = count * SEALED
    got = src.read_into(win.sealed[:limit])
    if got == limit:  # whole chunks, none of them the final one
        return _Run(first, count, got, False, None)
    full, rest = divmod(got, SEALED)
    if rest < TAG:  # no short final chunk: the message ends at a chunk boundary or inside a tag
        return _Run(first, full, full * SEALED, False, TruncatedMessage())
    return _Run(first, full + 1, got, True, None)


class _ChunkReader:
    """Reads and opens a window of chunks at a time, handing out only authenticated plaintext;
    after a failure it hands out the authenticated prefix, then raises, then raises again."""

    __slots__ = ("_chunks", "_src", "_win", "_first", "_done", "_error")

    def __init__(self, chunks: ChunkCipher, src: Source, window: int) -> None:
        self._chunks, self._src = chunks, src
        self._win = Window(window)
        self._first = 0
        self._done = False
        self._error: Exception | None = None

    def next_plaintext(self) -> memoryview | None:
        """The next run of authenticated plaintext (valid until the next call), None at the end."""
        if self._error is not None:
            raise _again(self._error)
        if self._done:
            return None
        win = self._win
        run = _read_run(self._src, win, win.chunks, self._first)
        opened = run.open(self._chunks, win, self._chunks.threads)
        self._first += opened
        self._done = run.final
        error = run.failure(opened)
        size = run.plaintext_bytes(opened)
        if error is not None:
            self._error = error
            if size == 0:
                raise _again(error)
        return win.plain[:size]

    def close(self) -> None:
        self._win.wipe()


def _again(error: Exception) -> Exception:
    """A fresh exception like ``error`` (no traceback or context carried from the first raise)."""
    return ChunkInvalid(error.index) if isinstance(error, ChunkInvalid) else type(error)()


def _read_header(key: Any, src: Source, context: Any, threads: int | None) -> ChunkCipher:
    header = src.read_exact_or_less(HEADER_BYTES)
    if len(header) < HEADER_BYTES:
        raise TruncatedMessage()
    chunks, commitment = derive(key, header[:SALT_BYTES], context, threads=threads)
    if not hmac.compare_digest(commitment, header[SALT_BYTES:]):
        raise CommitmentMismatch()
    return chunks


def encrypt_stream(key: Any, src: Any, dst: Any, context: Any = b"", *,
                   progress: Progress | None = None, threads: int | None = None,
                   salt: bytes | None = None) -> int:
    """Encrypts everything ``src`` yields into one message written to ``dst``.

    Args:
        key: the input key: 32 uniformly random bytes, or an :class:`~engine.AesGcm`.
        src: a readable binary file object (a raw file or pipe is read with no extra copy).
        dst: a writable binary file object.
        context: bound into the key derivation (bytes, or str as UTF-8); decryption must repeat it.
        progress: called with the plaintext bytes done after each window.
        threads: threads to use, this one included (None: all cores): this thread reads and
            writes the windows while the other threads seal them (one thread: all in turn on
            this one).
        salt: 24 bytes, for known-answer tests only (default: random; a salt must never repeat
            under one key).

    Returns:
        The plaintext length.

    Raises:
        InvalidArgument: a key of the wrong size, or a salt of the wrong size.
    """
    if salt is None:
        salt = random_bytes(SALT_BYTES)
    elif len(salt) != SALT_BYTES:
        raise InvalidArgument(f"the salt is {SALT_BYTES} bytes")
    source, sink = Source(src), Sink(dst)
    chunks, commitment = derive(key, bytes(salt), context, threads=threads)
    sink.write(bytes(salt) + commitment)
    total = _seal_stream(chunks, source, sink, progress)
    sink.flush()
    return total


def decrypt_stream(key: Any, src: Any, dst: Any, context: Any = b"", *,
                   progress: Progress | None = None, threads: int | None = None) -> int:
    """Decrypts one message from ``src`` into ``dst``, writing only authenticated plaintext.

    On failure, ``dst`` has received the plaintext of the chunks before the bad one and nothing
    else (write to a temporary file and rename it afterwards to keep none of it).

    Returns:
        The plaintext length.

    Raises:
        CommitmentMismatch: wrong key or context (nothing was decrypted).
        TruncatedMessage: the message ends too early.
        ChunkInvalid: a chunk failed authentication (modified, reordered, duplicated,
            trailing data).
        InvalidArgument: a key of the wrong size.
    """
    source, sink = Source(src), Sink(dst)
    chunks = _read_header(key, source, context, threads)
    total = _open_stream(chunks, source, sink, progress)
    sink.flush()
    return total


def encrypt(key: Any, data: Any, context: Any = b"", *, salt: bytes | None = None) -> bytes:
    """One message from ``data`` (bytes-like). See :func:`encrypt_stream`."""
    out = io.BytesIO()
    encrypt_stream(key, io.BytesIO(memoryview(data).tobytes()), out, context, salt=salt)
    return out.getvalue()


def decrypt(key: Any, message: Any, context: Any = b"") -> bytes:
    """The plaintext of one whole message. See :func:`decrypt_stream` for the errors."""
    out = io.BytesIO()
    decrypt_stream(key, io.BytesIO(memoryview(message).tobytes()), out, context)
    return out.getvalue()


# ---------------------------------------------------------------- file objects

class Encryptor(io.RawIOBase):
    """A writable file object that encrypts what is written to it into one message on ``dst``.

    Full windows of chunks are sealed and written as they fill; :meth:`close` seals the final
    short chunk, so a message is complete only once closed. Leaving a ``with`` block through an
    exception, :meth:`abort`, or garbage collection without ``close`` never write the final
    chunk: what was written then fails to decrypt as truncated instead of passing for a shorter
    message. ``dst`` is not closed.

    Args:
        key, context, threads: as for :func:`encrypt_stream`.
        dst: a writable binary file object.
    """

    def __init__(self, key: Any, dst: Any, context: Any = b"", *,
                 threads: int | None = None) -> None:
        super().__init__()
        self._sink = Sink(dst)
        salt = random_bytes(SALT_BYTES)
        self._chunks, commitment = derive(key, salt, context, threads=threads)
        self._sink.write(salt + commitment)
        self._win = Window(WINDOW_CHUNKS)
        self._fill = 0
        self._first = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed Encryptor")
        view = memoryview(data).cast("B")
        win, done = self._win, 0
        capacity = len(win.plain)
        while done < len(view):
            take = min(capacity - self._fill, len(view) - done)
            win.plain[self._fill:self._fill + take] = view[done:done + take]
            self._fill += take
            done += take
            if self._fill == capacity:  # full chunks are never the last one
                self._seal(final=False)
                self._first += win.chunks
                self._fill = 0
        return len(view)

    def _seal(self, *, final: bool) -> None:
        chunks = self._chunks
        sealed = chunks.seal_run(self._win, self._first, self._fill, final, chunks.threads)
        self._sink.write(self._win.sealed[:sealed])

    def abort(self) -> None:
        """Closes without writing the final chunk (the output stays an incomplete message)."""
        if not self.closed:
            win = getattr(self, "_win", None)  # None: __init__ failed, nothing to finish
            if win is not None:
                win.wipe()
            super().close()

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self) -> None:
        self.abort()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._seal(final=True)
            self._sink.flush()
        finally:
            self._win.wipe()
            super().close()


class Decryptor(io.RawIOBase):
    """A readable file object over one message read from ``src``: it hands out a chunk's
    plaintext only after that chunk authenticated; after an error every further read raises
    again (never a clean end of file).

    Args:
        key, context, threads: as for :func:`decrypt_stream`.
        src: a readable binary file object, positioned at the start of the message.

    Raises:
        CommitmentMismatch, TruncatedMessage: while reading the header (here), before any chunk.
    """

    def __init__(self, key: Any, src: Any, context: Any = b"", *,
                 threads: int | None = None) -> None:
        super().__init__()
        source = Source(src)
        self._reader = _ChunkReader(_read_header(key, source, context, threads), source,
                                    WINDOW_CHUNKS)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        while not len(self._pending):
            view = self._reader.next_plaintext()
            if view is None:
                return 0
            self._pending = view
        k = min(len(out), len(self._pending))
        out[:k] = self._pending[:k]
        self._pending = self._pending[k:]
        return k

    def close(self) -> None:
        if not self.closed:
            self._pending = memoryview(b"")
            self._reader.close()
        super().close()


class RandomAccessReader(io.RawIOBase):
    """A readable, seekable file object over a message in a seekable ``src``: a ``read``
    decrypts only the chunks it touches (a window of them per native call).

    The plaintext size follows from the message's length; it is authenticated (by opening the
    final chunk) before a seek relative to the end and before end of file is reported.

    Args:
        key, context, threads: as for :func:`decrypt_stream`.
        src: a readable, seekable binary file object holding the message at ``offset``.
        offset: where the message starts in ``src`` (after an outer header, say).
        close_source: close ``src`` when this reader is closed.

    Raises:
        CommitmentMismatch: wrong key or context (checked here, before any chunk).
        TruncatedMessage: the length cannot be that of a message (checked here).
        ChunkInvalid: from ``read``/``seek``, for a chunk that does not authenticate.
    """

    def __init__(self, key: Any, src: Any, context: Any = b"", *, offset: int = 0,
                 threads: int | None = None, close_source: bool = False) -> None:
        super().__init__()
        self._owned = src if close_source else None
        self._src = Source(src)
        self._base = offset
        self._src.seek(offset)
        self._chunks = _read_header(key, self._src, context, threads)
        body = self._src.size() - offset - HEADER_BYTES
        full, rest = divmod(body, SEALED)
        if rest < TAG:
            raise TruncatedMessage()
        self._last = full  # index of the final chunk
        self._last_len = rest - TAG
        self._size = full * CHUNK + self._last_len
        self._win = Window(RANDOM_ACCESS_CHUNKS)
        self._cached: tuple[int, int] | None = None  # (first chunk, count) held in the window
        self._length_ok = False
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Moves to ``offset`` (an int, as for any binary file) from ``whence``.

        Raises:
            InvalidArgumentType: ``offset`` or ``whence`` is not an integer (1.5, say).
            InvalidArgument: an unknown ``whence``, or a position before the start.
            ChunkInvalid: from the end, the final chunk does not authenticate.
        """
        offset, whence = _integer(offset, "offset"), _integer(whence, "whence")
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            self._authenticate_length()
            pos = self._size + offset
        else:
            raise InvalidArgument(f"invalid whence {whence!r}")
        if pos < 0:
            raise InvalidArgument("negative seek position")
        self._pos = pos
        return pos

    @property
    def size(self) -> int:
        """The plaintext size (authenticated first: the final chunk is opened)."""
        self._authenticate_length()
        return self._size

    def _authenticate_length(self) -> None:
        if not self._length_ok:
            self._load(self._last, 1)

    def _load(self, first: int, count: int) -> tuple[int, int]:
        """Opens chunks ``first .. first+count-1`` into the window (or raises ChunkInvalid)."""
        if self._cached == (first, count):
            return first, count
        self._cached = None
        win = self._win
        includes_last = first + count - 1 == self._last
        length = (count - 1) * SEALED + (self._last_len + TAG if includes_last else SEALED)
        self._src.seek(self._base + HEADER_BYTES + first * SEALED)
        got = self._src.read_into(win.sealed[:length])
        if got != length:  # the source shrank under us
            raise TruncatedMessage()
        chunks = self._chunks
        opened = chunks.open_run(win, first, length, includes_last, chunks.threads)
        if opened < count:
            win.wipe()  # the chunks before the bad one authenticated, but are not what was asked
            raise ChunkInvalid(first + opened)
        if includes_last:
            self._length_ok = True
        self._cached = (first, count)
        return first, count

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        if self._pos >= self._size:
            self._authenticate_length()
            return 0
        want = min(len(out), self._size - self._pos)
        done = 0
        while done < want:
            pos = self._pos + done
            chunk = pos // CHUNK
            cached = self._cached
            if cached is None or not cached[0] <= chunk < cached[0] + cached[1]:
                last_needed = (self._pos + want - 1) // CHUNK
                count = min(self._win.chunks, last_needed - chunk + 1)
                cached = self._load(chunk, count)
            start = pos - cached[0] * CHUNK
            end = min((cached[0] + cached[1]) * CHUNK, self._size) - cached[0] * CHUNK
            k = min(want - done, end - start)
            out[done:done + k] = self._win.plain[start:start + k]
            done += k
        self._pos += done
        return done

    def close(self) -> None:
        if not self.closed:
            win = getattr(self, "_win", None)  # None: __init__ failed early
            if win is not None:
                win.wipe()
            self._cached = None
            owned = getattr(self, "_owned", None)
            if owned is not None:
                owned.close()
        super().close()


def _integer(value: Any, name: str) -> int:
    """``value`` as an int if it is one (anything with ``__index__``, as file objects take)."""
    try:
        return operator.index(value)
    except TypeError:
        pass
    raise InvalidArgumentType(f"{name} must be an integer, not {type(value).__name__}")


def open_message(key: Any, src: Any, context: Any = b"", **kwargs: Any) -> RandomAccessReader:
    """A :class:`RandomAccessReader` over the message in ``src`` (a seekable file object)."""
    return RandomAccessReader(key, src, context, **kwargs)
