"""asv benchmarks, for history and pictures (``make bench-history``): the regression gate's cases
(``bench/cases.py``, the same set-up as the pytest-benchmark cases), seal/open of batches at
64 B, 1 KiB, 16 KiB and 1 MiB records on one thread and all, and the re-encryption job on a
SQLite table with its time over a plain copy job's (bench/bench_reencrypt.py has the whole
comparison).

Every value here is lower-is-better, as asv assumes: times, and ``track_time_vs_reference``,
the engine's time per unit of work over its reference's, measured in interleaved rounds in the
same process (the inverse of the gate's ratio), which moves far less between runs on a shared
machine than either time alone.

    asv run --quick HEAD^!                 # one commit, in asv's own environment
    make bench-history                     # the last 20 commits on main, then asv publish
    asv continuous --factor 3 main HEAD    # the factor this machine needs: bench/README.md
"""

from __future__ import annotations

import os

import numpy as np

import engine
from bench.cases import CASES, Settings, median_ratio, paired_seconds, records

SIZES = [64, 1024, 16384, 1 << 20]
BATCH_BYTES = 16 << 20  # each batch covers 16 MiB (at least one record)


class Cases:
    """Each gate case: the engine side, the reference side, and their ratio."""

    params = [list(CASES)]
    param_names = ["case"]
    number = 1
    repeat = (3, 9, 10.0)
    warmup_time = 0.0
    timeout = 120

    def setup(self, name):
        self.pair = CASES[name].build(Settings())
        self.pair.engine()
        self.pair.reference()

    def teardown(self, name):
        self.pair.cleanup()

    def time_engine(self, name):
        self.pair.engine()

    def time_reference(self, name):
        self.pair.reference()

    def track_time_vs_reference(self, name):
        engine_s, reference_s = paired_seconds(self.pair, 11)
        return 1 / median_ratio(self.pair, engine_s, reference_s)

    track_time_vs_reference.unit = "engine time / reference time"


class Batch:
    """seal_batch_into / open_batch_into over 16 MiB of records of each size."""

    params = (SIZES, ["1", "all"])
    param_names = ["record_size", "threads"]
    number = 1
    repeat = (3, 9, 10.0)
    warmup_time = 0.0

    def setup(self, size, threads):
        self.threads = 1 if threads == "1" else None
        self.aead = engine.AesGcm(engine.AesGcm.generate_key())
        self.batch = records(max(1, BATCH_BYTES // size), size)
        self.out = np.empty(self.batch.data.size, np.uint8)
        self.sealed = self.aead.seal_batch(self.batch)

    def time_seal(self, size, threads):
        self.aead.seal_batch_into(self.batch, self.out, threads=self.threads)

    def time_open(self, size, threads):
        self.aead.open_batch_into(self.sealed, self.out, threads=self.threads)


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
