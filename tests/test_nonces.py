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
