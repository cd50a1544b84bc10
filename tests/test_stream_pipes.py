"""Streams over non-blocking pipes: a parent may leave ``O_NONBLOCK`` on stdin or stdout (Node.js,
CI runners, process managers do), so reads and writes return None or raise BlockingIOError
instead of waiting. Every byte must still arrive, in order, with a slow reader and a slow writer
on the other ends, and the stream must wait without spending CPU."""

from __future__ import annotations

import io
import os
import resource
import select
import subprocess
import sys
import threading
import time

import pytest

from engine import EncryptionService, StaticKeyProvider
from engine.stream import FileEncryption, cobblestone

KEY = bytes(range(32))
BIG = 8 * 2**20 + 12_345  # many windows, many pipe buffers, a short final chunk


def nonblocking_pipe() -> tuple[int, int]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    return r, w


class SlowWriter(threading.Thread):
    """Writes ``data`` into the (blocking, for this end) write side of a pipe in pieces, pausing
    now and then, and closes it."""

    def __init__(self, fd: int, data: bytes, *, piece: int = 262_144, pause: float = 0.005,
                 first_pause: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.fd, self.data, self.piece, self.pause, self.first_pause = fd, data, piece, pause, first_pause

    def run(self) -> None:
        os.set_blocking(self.fd, True)  # this end's own description: the other end stays non-blocking
        time.sleep(self.first_pause)
        with open(self.fd, "wb", buffering=0) as f:
            for at in range(0, len(self.data), self.piece):
                f.write(self.data[at:at + self.piece])
                time.sleep(self.pause)


class SlowReader(threading.Thread):
    """Reads a pipe to its end, pausing between reads, and keeps what it read."""

    def __init__(self, fd: int, *, pause: float = 0.003, first_pause: float = 0.3) -> None:
        super().__init__(daemon=True)
        self.fd, self.pause, self.first_pause = fd, pause, first_pause
        self.got = bytearray()

    def run(self) -> None:
        os.set_blocking(self.fd, True)
        time.sleep(self.first_pause)  # the writer finds the pipe full
        with open(self.fd, "rb", buffering=0) as f:
            while chunk := f.read(200_000):
                self.got += chunk
                time.sleep(self.pause)


def split_pipes() -> tuple[int, int, int, int]:
    """(stream's read end, test's write end, test's read end, stream's write end) of two pipes.
    The two ends of a pipe are separate open file descriptions: the stream's are non-blocking
    while the test's threads block on theirs."""
    src, feed = nonblocking_pipe()
    drain, dst = nonblocking_pipe()
    return src, feed, drain, dst


def read_waiting(f, n: int) -> bytes:
    while (piece := f.read(n)) is None:
        select.select([f], [], [])
    return piece


def write_waiting(f, data: bytes) -> None:
    view = memoryview(data)
    while view:
        k = f.write(view)
        if k is None:
            select.select([], [f], [])
            continue
        view = view[k:]


def through_pipes(run, data: bytes, *, buffered: bool) -> bytes:
    """Runs ``run(src, dst)`` with src and dst non-blocking pipes; returns what came out."""
    src_fd, feed_fd, drain_fd, dst_fd = split_pipes()
    assert not os.get_blocking(src_fd) and not os.get_blocking(dst_fd)
    writer = SlowWriter(feed_fd, data, first_pause=0.2)
    reader = SlowReader(drain_fd)
    writer.start()
    reader.start()
    mode = -1 if buffered else 0
    with open(src_fd, "rb", buffering=mode) as src, open(dst_fd, "wb", buffering=mode) as dst:
        run(src, dst)
    writer.join(60)
    reader.join(60)
    assert not writer.is_alive() and not reader.is_alive()
    return bytes(reader.got)


@pytest.mark.parametrize("buffered", [False, True], ids=["raw", "buffered"])
def test_cobblestone_streams_over_nonblocking_pipes(buffered):
    data = os.urandom(BIG)
    sealed = through_pipes(lambda s, d: cobblestone.encrypt_stream(KEY, s, d, b"ctx"), data,
                           buffered=buffered)
    assert len(sealed) == cobblestone.HEADER_BYTES + len(data) + (len(data) // 16384 + 1) * 16
    assert cobblestone.decrypt(KEY, sealed, b"ctx") == data
    opened = through_pipes(lambda s, d: cobblestone.decrypt_stream(KEY, s, d, b"ctx"), sealed,
                           buffered=buffered)
    assert opened == data


@pytest.mark.parametrize("buffered", [False, True], ids=["raw", "buffered"])
def test_engine_files_over_nonblocking_pipes(buffered):
    files = FileEncryption(EncryptionService(StaticKeyProvider({1: os.urandom(32)})))
    data = os.urandom(BIG)
    sealed = through_pipes(lambda s, d: files.encrypt_stream(s, d), data, buffered=buffered)
    assert files.decrypt(sealed) == data
    assert through_pipes(lambda s, d: files.decrypt_stream(s, d), sealed, buffered=buffered) == data
    # the streaming file objects share the path (the test's own side waits with select)
    def via_writer(s, d):
        with files.writer(d) as w:
            while piece := read_waiting(s, 70_000):
                w.write(piece)

    def via_reader(s, d):
        with files.reader(s) as r:
            while piece := r.read(70_000):
                write_waiting(d, piece)

    sealed = through_pipes(via_writer, data, buffered=False)
    assert files.decrypt(sealed) == data
    assert through_pipes(via_reader, sealed, buffered=False) == data


def test_waiting_on_a_nonblocking_pipe_costs_no_cpu():
    """A writer that pauses for 2 s: the stream waits in poll(), not in a loop."""
    src_fd, feed_fd, drain_fd, dst_fd = split_pipes()
    writer = SlowWriter(feed_fd, os.urandom(300_000), piece=100_000, pause=0.7)
    reader = SlowReader(drain_fd, first_pause=0.0)
    cpu: list[float] = []

    def run() -> None:
        start = time.thread_time()
        with open(src_fd, "rb", buffering=0) as s, open(dst_fd, "wb", buffering=0) as d:
            cobblestone.encrypt_stream(KEY, s, d, threads=1)
        cpu.append(time.thread_time() - start)

    writer.start()
    reader.start()
    t0 = time.monotonic()
    stream = threading.Thread(target=run)
    stream.start()
    stream.join(60)
    wall = time.monotonic() - t0
    writer.join(60)
    reader.join(60)
    assert wall >= 1.4 and cpu and cpu[0] < 0.25, (wall, cpu)
    assert len(reader.got) == cobblestone.HEADER_BYTES + 300_000 + (300_000 // 16384 + 1) * 16


class ReturnsNothing(io.RawIOBase):
    """A file-like object that takes everything and returns None (as many hand-written ones
    do): not a non-blocking stream."""

    def __init__(self) -> None:
        self.got = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b):
        self.got += bytes(b)


class Lies(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def write(self, b):
        return len(b) + 1

    def readinto(self, b):
        return len(b) + 5


def test_file_like_objects_that_return_nothing_or_lie():
    out = ReturnsNothing()
    data = os.urandom(100_000)
    cobblestone.encrypt_stream(KEY, io.BytesIO(data), out)
    assert cobblestone.decrypt(KEY, bytes(out.got)) == data
    with pytest.raises(OSError, match="returned"):
        cobblestone.encrypt_stream(KEY, io.BytesIO(data), Lies())
    with pytest.raises(OSError, match="returned"):
        cobblestone.encrypt_stream(KEY, Lies(), io.BytesIO())


# ---------------------------------------------------------------- the command line

@pytest.fixture
def env(tmp_path):
    (tmp_path / "keys").mkdir()
    return {**os.environ, "ENCRYPTION_MASTER_KEY": "pipes-master-key-0123456789-abcdefghi", "VAULT_ENABLED": "false",
            "ENGINE_KEY_STATE_FILE": str(tmp_path / "keys" / "keys.json"),
            "ENCRYPTION_KDF_ITERATIONS": "1000"}


def run_cli(args, env, *, stdin_data: bytes | None = None, stdin_file=None,
            writer_pause: float = 0.01, first_pause: float = 0.2, piece: int = 100_000):
    """Runs the CLI with a non-blocking stdout (a slow reader) and, when ``stdin_data`` is
    given, a non-blocking stdin (a slow writer); returns (exit code, stdout, stderr, CPU s)."""
    out_r, out_w = nonblocking_pipe()
    threads = []
    if stdin_data is not None:
        in_r, in_w = nonblocking_pipe()
        stdin = in_r
        threads.append(SlowWriter(in_w, stdin_data, piece=piece, pause=writer_pause,
                                  first_pause=first_pause))
    else:
        stdin = stdin_file
    reader = SlowReader(out_r)
    threads.append(reader)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen([sys.executable, "-m", "engine", *args], stdin=stdin, stdout=out_w,
                            stderr=subprocess.PIPE, env=env)
    os.close(out_w)
    if stdin_data is not None:
        os.close(in_r)
    for t in threads:
        t.start()
    err = proc.stderr.read()
    proc.wait(120)
    for t in threads:
        t.join(60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc.returncode, bytes(reader.got), err, cpu


def test_cli_streams_to_a_nonblocking_stdout(env, tmp_path):
    data = os.urandom(BIG)
    (tmp_path / "in.bin").write_bytes(data)
    code, sealed, err, _ = run_cli(["encrypt", str(tmp_path / "in.bin"), "-"], env)
    assert code == 0, err
    (tmp_path / "in.enc").write_bytes(sealed)
    code, plain, err, _ = run_cli(["decrypt", str(tmp_path / "in.enc"), "-"], env)
    assert code == 0 and plain == data, (code, len(plain), err)
    # both ends non-blocking: stdin from a slow writer, stdout to a slow reader
    code, sealed2, err, _ = run_cli(["encrypt", "-", "-"], env, stdin_data=data)
    assert code == 0, err
    code, plain, err, _ = run_cli(["decrypt", "-", "-"], env, stdin_data=sealed2)
    assert code == 0 and plain == data, (code, len(plain), err)


def test_cli_waits_on_an_idle_nonblocking_stdin_without_spinning(env, tmp_path):
    data = os.urandom(50_000)
    code, _, err, quick = run_cli(["encrypt", "-", "-"], env, stdin_data=data)
    assert code == 0, err
    # the same, with stdin idle for 2 s before and 2 s between its two pieces
    code, sealed, err, idle = run_cli(["encrypt", "-", "-"], env, stdin_data=data,
                                      writer_pause=2.0, first_pause=2.0, piece=25_000)
    assert code == 0, err
    code, plain, err, _ = run_cli(["decrypt", "-", "-"], env, stdin_data=sealed)
    assert plain == data
    assert idle - quick < 1.0, (quick, idle)
