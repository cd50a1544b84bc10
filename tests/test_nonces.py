"""Nonces never repeat: in bulk, and across os.fork()."""

from __future__ import annotations

import os

import numpy as np

import engine


def distinct_rows(rows: np.ndarray) -> bool:
    as_void = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.shape[1]))).ravel()
    return np.unique(as_void).shape[0] == rows.shape[0]


def test_ten_million_batch_nonces_are_distinct(aead):
    batch = engine.Batch(np.empty(0, np.uint8), np.zeros(10_000_001, dtype=np.int64))
    sealed = aead.seal_batch(batch)
    assert sealed.nonces.shape == (10_000_000, 16)
    # The first 8 bytes alone are already distinct (a 64-bit collision among 10^7 random values
    # has probability ~3e-6); fall back to the full 16 bytes if they are not.
    prefix = sealed.nonces[:, :8].copy().view(np.uint64).ravel()
    assert np.unique(prefix).shape[0] == prefix.shape[0] or distinct_rows(sealed.nonces)


def test_nonces_after_fork_never_coincide(aead):
    before = aead.seal_batch([b""] * 1000).nonces
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: same key object, same CSPRNG state copied by fork
        try:
            os.close(read_end)
            child = aead.seal_batch([b""] * 100_000).nonces.tobytes()
            with os.fdopen(write_end, "wb") as w:
                w.write(child)
        finally:
            os._exit(0)
    os.close(write_end)
    parent = aead.seal_batch([b""] * 100_000).nonces
    with os.fdopen(read_end, "rb") as r:
        child = np.frombuffer(r.read(), np.uint8).reshape(-1, 16)
    os.waitpid(pid, 0)
    assert child.shape == (100_000, 16)
    assert distinct_rows(np.concatenate([before, parent, child]))


def test_single_random_calls_differ_across_fork():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write_end, engine.random_bytes(32))
        finally:
            os._exit(0)
    mine = engine.random_bytes(32)
    theirs = os.read(read_end, 32)
    os.waitpid(pid, 0)
    assert len(theirs) == 32 and mine != theirs


def test_children_forked_while_threads_seal_never_hang_and_never_repeat_a_nonce():
    """Hundreds of forks while two threads draw nonces without pause (batches and single
    messages): every child finishes its own draws, and no nonce appears twice anywhere.

    The batches are built before the threads start: a Python module imported for the first time
    in one thread while another forks can leave the child waiting on that module's import lock
    (a CPython hazard, not the engine's); the engine imports pyarrow eagerly for that reason."""
    import threading
    import time

    aead = engine.AesGcm(engine.AesGcm.generate_key())
    small = engine.Batch.from_list([b"x" * 16] * 8)
    stop = threading.Event()

    def seal_batches():
        while not stop.is_set():
            aead.seal_batch(small, threads=1)

    def seal_messages():
        while not stop.is_set():
            aead.encrypt(engine.random_bytes(16), b"y")

    workers = [threading.Thread(target=seal_batches), threading.Thread(target=seal_messages)]
    for t in workers:
        t.start()
    seen = []
    hung = 0
    try:
        for _ in range(300):
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    os.close(read_end)
                    nonces = aead.seal_batch(small, threads=1).nonces.tobytes()
                    os.write(write_end, nonces + engine.random_bytes(16))
                finally:
                    os._exit(0)
            os.close(write_end)
            deadline = time.monotonic() + 20
            while True:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    hung += 1
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.001)
            with os.fdopen(read_end, "rb") as r:
                seen.append(r.read())
    finally:
        stop.set()
        for t in workers:
            t.join()
    assert hung == 0
    rows = np.frombuffer(b"".join(seen), np.uint8).reshape(-1, 16)
    assert rows.shape == (300 * 9, 16)
    parent = np.concatenate([aead.seal_batch(small).nonces for _ in range(10)])
    assert distinct_rows(np.concatenate([rows, parent]))
