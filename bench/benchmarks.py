"""asv benchmarks: seal/open at 64 B, 1 KiB, 16 KiB and 1 MiB, single call and batch, one thread
and all threads, with cryptography's AESGCM timed beside them for reference; and the service
layer (encrypt_many, decrypt_many_text, FieldEncryption over dicts and over a pyarrow column) on
100,000 short strings; and the re-encryption job on a SQLite table, with its ratio to a plain
copy job (bench/bench_reencrypt.py has the whole comparison).

    asv run --python=same --quick          # against the installed package
    asv continuous main HEAD               # regression check between two commits
"""

from __future__ import annotations

import os

import numpy as np

import engine

SIZES = [64, 1024, 16384, 1 << 20]
BATCH_BYTES = 16 << 20  # each batch covers 16 MiB (at least one record)


class Batch:
    params = (SIZES, ["1", "all"])
    param_names = ["record_size", "threads"]

    def setup(self, size, threads):
        count = max(1, BATCH_BYTES // size)
        self.threads = 1 if threads == "1" else None
        self.aead = engine.AesGcm(engine.AesGcm.generate_key())
        self.batch = engine.Batch(np.frombuffer(os.urandom(size * count), np.uint8),
                                  np.arange(count + 1, dtype=np.int64) * size)
        self.out = np.empty(size * count, np.uint8)
        self.sealed = self.aead.seal_batch(self.batch)

    def time_seal(self, size, threads):
        self.aead.seal_batch_into(self.batch, self.out, threads=self.threads)

    def time_open(self, size, threads):
        self.aead.open_batch_into(self.sealed, self.out, threads=self.threads)

    def track_seal_records_per_second(self, size, threads):
        import time

        t0 = time.perf_counter()
        self.aead.seal_batch_into(self.batch, self.out, threads=self.threads)
        return len(self.batch) / (time.perf_counter() - t0)

    track_seal_records_per_second.unit = "records/s"


class SingleCall:
    params = [SIZES]
    param_names = ["size"]

    def setup(self, size):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key = engine.AesGcm.generate_key()
        self.aead = engine.AesGcm(key)
        self.reference = AESGCM(key)
        self.nonce = os.urandom(16)
        self.data = os.urandom(size)
        self.sealed = self.aead.encrypt(self.nonce, self.data)

    def time_encrypt(self, size):
        self.aead.encrypt(self.nonce, self.data)

    def time_decrypt(self, size):
        self.aead.decrypt(self.nonce, self.sealed)

    def time_cryptography_encrypt(self, size):
        self.reference.encrypt(self.nonce, self.data, None)


class FromList:
    """64-byte records arriving as a Python list of bytes (packing included)."""

    def setup(self):
        self.aead = engine.AesGcm(engine.AesGcm.generate_key())
        self.values = [os.urandom(64) for _ in range(100_000)]

    def time_seal_from_list(self):
        self.aead.seal_batch(self.values)


class Service:
    """The service layer on 100,000 strings of 16-64 characters (tokens out, and back)."""

    def setup(self):
        import pyarrow as pa

        from bench.bench_service import KEY, make_values

        self.service = engine.EncryptionService(engine.StaticKeyProvider({1: KEY}))
        self.fields = engine.FieldEncryption(self.service)
        self.values = make_values(100_000)
        self.tokens = self.service.encrypt_many(self.values)
        self.records = [{"id": i, "ssn": v} for i, v in enumerate(self.values)]
        self.column = pa.array(self.values, type=pa.large_string())

    def time_encrypt_many(self):
        self.service.encrypt_many(self.values)

    def time_decrypt_many_text(self):
        self.service.decrypt_many_text(self.tokens)

    def time_encrypt_column_dicts(self):
        self.fields.encrypt_column(self.records, "ssn")

    def time_encrypt_column_arrow(self):
        self.fields.encrypt_column(self.column, "ssn")


class Files:
    """Chunked encryption of 64 MiB between in-memory streams and /dev/null (engine.stream), and
    encrypt-columns on 100,000 rows of two string columns (engine.tables)."""

    def setup(self):
        import io

        import pyarrow as pa

        from engine.stream import FileEncryption

        service = engine.EncryptionService(engine.StaticKeyProvider({1: bytes(32)}), metrics=False)
        self.files = FileEncryption(service)
        self.service = service
        self.plain = os.urandom(64 << 20)
        self.sealed = self.files.encrypt(self.plain)
        self.io = io
        self.table = pa.table({"email": [f"user{i}@example.com" for i in range(100_000)],
                               "ssn": [f"{i:09d}" for i in range(100_000)]})

    def time_encrypt_stream(self):
        with open(os.devnull, "wb", buffering=0) as sink:
            self.files.encrypt_stream(self.io.BytesIO(self.plain), sink)

    def time_decrypt_stream(self):
        with open(os.devnull, "wb", buffering=0) as sink:
            self.files.decrypt_stream(self.io.BytesIO(self.sealed), sink)

    def time_encrypt_columns(self):
        from engine import tables

        tables.encrypt_columns(self.table, ["email", "ssn"], service=self.service)


class Reencryption:
    """The re-encryption job on 50,000 rows of 64-byte values in SQLite (tokens under v1 moved
    to v2), and its time over the plain copy job's (same reads and writes, no cryptography).
    Each measurement starts from a fresh copy of the table; the copy is not timed."""

    timeout = 300
    rows = 50_000

    def setup(self):
        import tempfile

        from bench.bench_reencrypt import make_sqlite

        self.dir = tempfile.mkdtemp(prefix="asv-reencrypt-")
        self.template = os.path.join(self.dir, "template.db")
        self.path = os.path.join(self.dir, "users.db")
        make_sqlite(self.template, self.rows)

    def teardown(self):
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)

    def _job_seconds(self) -> float:
        import time

        from bench.bench_reencrypt import copy_sqlite, services
        from engine.reencrypt import open_store, reencrypt

        copy_sqlite(self.template, self.path)
        store = open_store(f"sqlite:///{self.path}", "users", "id")
        t0 = time.perf_counter()
        reencrypt(store, ["v"], service=services()[1])
        return time.perf_counter() - t0

    def track_reencrypt_seconds(self):
        return self._job_seconds()

    track_reencrypt_seconds.unit = "seconds"

    def track_ratio_to_copy_job(self):
        import time

        from bench.bench_reencrypt import copy_sqlite, sqlite_job

        copy_sqlite(self.template, self.path)
        t0 = time.perf_counter()
        sqlite_job(self.path, 10_000, crypto=False)
        copy = time.perf_counter() - t0
        return self._job_seconds() / copy

    track_ratio_to_copy_job.unit = "ratio"
