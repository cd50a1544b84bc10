"""Nonces never repeat: in bulk, per record of every batch and token path, and across os.fork()."""

from __future__ import annotations

import base64
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import engine
from engine.formats.wire import token_header
from engine.keys import StaticKeyProvider
from engine.service import EncryptionService


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


@pytest.mark.forks_with_threads
def test_children_forked_while_threads_seal_never_hang_and_never_repeat_a_nonce():
    """Hundreds of forks while two threads draw nonces without pause (batches and single
    messages): every child finishes its own draws, and no nonce appears twice anywhere.

    The batches are built before the threads start: a Python module imported for the first time
    in one thread while another forks can leave the child waiting on that module's import lock
    (a CPython hazard, not the engine's); the batch path never makes pyarrow's first import
    for that reason (:func:`engine.buffers.loaded_pyarrow`)."""
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


# ---- every record gets its own nonce: read back from the outputs themselves ----
# Batches of a few thousand records of mixed sizes: enough work for the native code to split
# them across threads, so a nonce reused within a thread's range, across ranges or across calls
# shows up as a repeated row. Each nonce is also checked to be the one the record was sealed
# under (cryptography's AESGCM opens the record with it), so a token that carries one nonce
# while its ciphertext used another cannot pass either.

SPLIT_RECORDS = [os.urandom(n % 257) for n in range(3000)]  # about 3 MB of work: many ranges


def token_parts(token: bytes, header_len: int, nonce_len: int = 16):
    return token[:header_len], token[header_len:header_len + nonce_len], token[header_len + nonce_len:]


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_seal_batch_gives_every_record_its_own_nonce(threads):
    key = engine.AesGcm.generate_key()
    aead, ref = engine.AesGcm(key), AESGCM(key)
    first = aead.seal_batch(SPLIT_RECORDS, threads=threads)
    second = aead.seal_batch(SPLIT_RECORDS, threads=threads)
    assert distinct_rows(np.concatenate([first.nonces, second.nonces]))
    for i in range(0, len(SPLIT_RECORDS), 97):
        sealed = first.ciphertexts[i].tobytes() + first.tags[i].tobytes()
        assert ref.decrypt(first.nonces[i].tobytes(), sealed, None) == SPLIT_RECORDS[i]


@pytest.mark.parametrize("threads", [1, 2, 5])
@pytest.mark.parametrize("nonce_size", [12, 16])
def test_seal_tokens_gives_every_token_its_own_nonce(threads, nonce_size):
    key = engine.AesGcm.generate_key()
    aead, ref = engine.AesGcm(key), AESGCM(key)
    header = b"hdr:"
    tokens = [aead.seal_tokens(SPLIT_RECORDS, header, nonce_size=nonce_size, threads=threads)
              for _ in range(2)]
    nonces = [token_parts(t, len(header), nonce_size)[1] for batch in tokens for t in batch.to_list()]
    rows = np.frombuffer(b"".join(nonces), np.uint8).reshape(-1, nonce_size)
    assert rows.shape[0] == 2 * len(SPLIT_RECORDS) and distinct_rows(rows)
    for i in range(0, len(SPLIT_RECORDS), 97):
        head, nonce, sealed = token_parts(tokens[0][i].tobytes(), len(header), nonce_size)
        assert head == header and ref.decrypt(nonce, sealed, header) == SPLIT_RECORDS[i]


@pytest.mark.parametrize("threads", [1, 2])
def test_encrypt_many_gives_every_token_its_own_nonce(threads):
    key = os.urandom(32)
    service = EncryptionService(StaticKeyProvider({1: key}), threads=threads, metrics=False)
    header = token_header(1)
    texts = service.encrypt_many(SPLIT_RECORDS) + service.encrypt_many(SPLIT_RECORDS)
    raw = [base64.urlsafe_b64decode(t[len("ef1:"):] + "=" * (-len(t) % 4)) for t in texts]
    parts = [token_parts(r, len(header)) for r in raw]
    rows = np.frombuffer(b"".join(nonce for _, nonce, _ in parts), np.uint8).reshape(-1, 16)
    assert rows.shape[0] == 2 * len(SPLIT_RECORDS) and distinct_rows(rows)
    ref = AESGCM(key)
    for i in range(0, len(SPLIT_RECORDS), 97):
        head, nonce, sealed = parts[i]
        assert head == header and ref.decrypt(nonce, sealed, header) == SPLIT_RECORDS[i]


def test_one_value_at_a_time_never_repeats_a_nonce():
    """Per-value calls (which may draw nonces from a buffer refilled in bulk) across many
    calls, both shapes of output."""
    key = os.urandom(32)
    service = EncryptionService(StaticKeyProvider({1: key}), metrics=False)
    ivs = [service.encrypt(b"v").iv for _ in range(3000)]
    header = token_header(1)
    for _ in range(3000):
        token = service.encrypt_token(b"v")
        raw = base64.urlsafe_b64decode(token[4:] + "=" * (-len(token) % 4))
        ivs.append(token_parts(raw, len(header))[1])
    assert len(set(ivs)) == len(ivs) == 6000
