"""The regression gate's cases: each one an engine operation and a reference doing the same work
with code that is not the engine's (pyca/cryptography, pyarrow; for the all-thread cases, SHA-256
of the same bytes on all cores), built from one registry that the pytest-benchmark cases
(``bench/ratios``) and the asv benchmarks (``bench/benchmarks.py``) share.

A case's figure is the ratio ``reference time per unit / engine time per unit`` from rounds that
run the two in turn, so that load on a shared machine slows both sides of a pair alike: higher
is better, and a regression is a ratio that falls. Absolute times are not compared anywhere.

Adding a case is one decorated function that builds a :class:`Pair`::

    @case("reencrypt-sqlite", engine="reencrypt(), 20,000 rows", reference="the copy job")
    def _reencrypt_sqlite(settings: Settings) -> Pair:
        ...                                   # set-up, outside the timing
        return Pair(engine=lambda: ..., reference=lambda: ...)

then ``python -m bench.gate --calibrate --case reencrypt-sqlite`` records its baseline entry.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

import engine


@dataclass(frozen=True)
class Settings:
    """What a gate run may vary without changing a case's work.

    Attributes:
        threads: threads for the engine in the cases that use all cores (None: all of them).
            ``--threads 1`` against baselines recorded with all threads is a real slowdown.
    """

    threads: int | None = None


@dataclass
class Pair:
    """An engine operation and its reference, ready to time (set-up done).

    Attributes:
        engine, reference: callables doing one round's work each.
        engine_units, reference_units: the work each call does, in the same unit (records,
            bytes), so that the two sides may run different amounts and still compare per unit.
        cleanup: called once when the pair is no longer needed.
    """

    engine: Callable[[], Any]
    reference: Callable[[], Any]
    engine_units: float = 1.0
    reference_units: float = 1.0
    cleanup: Callable[[], None] = field(default=lambda: None)

    def ratio(self, engine_seconds: float, reference_seconds: float) -> float:
        """Reference time per unit over engine time per unit (higher: the engine is faster)."""
        return (reference_seconds / self.reference_units) / (engine_seconds / self.engine_units)

    def round_ratios(self, engine_s: list[float], reference_s: list[float]) -> list[float]:
        """The ratio of each timed round, given the seconds of the last rounds of each side."""
        return [self.ratio(e, r) for e, r in zip(engine_s, reference_s)]

    def extra_info(self, rounds: int) -> dict[str, Any]:
        """What else the last ``rounds`` rounds measured, for the benchmark JSON."""
        return {}


@dataclass
class ScalingPair(Pair):
    """A thread-scaling case: each side does its work on one thread, then on all threads, and
    records both times; a round's ratio is the engine's speed-up from its threads over the
    reference's speed-up from its pool in the same round. Whatever share of the second core the
    machine gives that round, it gives to both, so the ratio stays put while the engine keeps
    using its threads, and falls by the reference's speed-up when it stops. With no core to
    spare, both speed-ups are about 1 and no thread regression can show: ``spare_capacity`` (the
    reference's median speed-up) says how much room the run had.

    Attributes:
        engine_times, reference_times: (one thread, all threads) seconds of every call.
    """

    engine_times: list[tuple[float, float]] = field(default_factory=list)
    reference_times: list[tuple[float, float]] = field(default_factory=list)

    def round_ratios(self, engine_s: list[float], reference_s: list[float]) -> list[float]:
        n = len(engine_s)
        return [(e_one / e_all) / (r_one / r_all)
                for (e_one, e_all), (r_one, r_all) in zip(self.engine_times[-n:], self.reference_times[-n:])]

    def extra_info(self, rounds: int) -> dict[str, Any]:
        return {"spare_capacity": statistics.median(one / every for one, every in self.reference_times[-rounds:])}


def scaling_pair(engine_one: Callable[[], Any], engine_all: Callable[[], Any], reference_one: Callable[[], Any],
                 reference_all: Callable[[], Any], cleanup: Callable[[], None]) -> ScalingPair:
    """A :class:`ScalingPair` from each side's one-thread and all-thread work."""
    engine_times: list[tuple[float, float]] = []
    reference_times: list[tuple[float, float]] = []

    def timed(one: Callable[[], Any], every: Callable[[], Any], log: list[tuple[float, float]]) -> Callable[[], None]:
        def run() -> None:
            t0 = time.perf_counter()
            one()
            t1 = time.perf_counter()
            every()
            log.append((t1 - t0, time.perf_counter() - t1))

        return run

    return ScalingPair(engine=timed(engine_one, engine_all, engine_times),
                       reference=timed(reference_one, reference_all, reference_times), cleanup=cleanup,
                       engine_times=engine_times, reference_times=reference_times)


@dataclass(frozen=True)
class Case:
    """One registered case.

    Attributes:
        name: the id used in the baseline file, the pytest ids and asv's parameters.
        engine, reference: what each side does, for the gate's table.
        build: makes the :class:`Pair` for a :class:`Settings`.
        short: part of the short gate that ``make test`` runs.
    """

    name: str
    engine: str
    reference: str
    build: Callable[[Settings], Pair]
    short: bool = False


CASES: dict[str, Case] = {}


def case(name: str, *, engine: str, reference: str,
         short: bool = False) -> Callable[[Callable[[Settings], Pair]], Callable[[Settings], Pair]]:
    """Registers a pair builder under ``name`` (see the module docstring)."""

    def register(build: Callable[[Settings], Pair]) -> Callable[[Settings], Pair]:
        if name in CASES:
            raise ValueError(f"case {name!r} is registered twice")
        CASES[name] = Case(name, engine, reference, build, short)
        return build

    return register


def paired_seconds(pair: Pair, rounds: int) -> tuple[list[float], list[float]]:
    """(engine, reference) seconds of each round; one warm-up call of each first, then the two
    in turn, so that whatever the machine does to one round it does to both sides."""
    pair.engine()
    pair.reference()
    engine_s: list[float] = []
    reference_s: list[float] = []
    clock = time.perf_counter
    for _ in range(rounds):
        t0 = clock()
        pair.reference()
        t1 = clock()
        pair.engine()
        t2 = clock()
        reference_s.append(t1 - t0)
        engine_s.append(t2 - t1)
    return engine_s, reference_s


def median_ratio(pair: Pair, engine_s: list[float], reference_s: list[float]) -> float:
    """The median of the rounds' own ratios (each round's two sides saw the same load)."""
    return statistics.median(pair.round_ratios(engine_s, reference_s))


def _repeat(fn: Callable[[], Any], times: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(times):
            fn()

    return run


# ---- single messages: AesGcm.encrypt against cryptography's AESGCM.encrypt ----

def _single_call(size: int, calls: int, reference_calls: int) -> Callable[[Settings], Pair]:
    def build(settings: Settings) -> Pair:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key = engine.AesGcm.generate_key()
        ours, theirs = engine.AesGcm(key).encrypt, AESGCM(key).encrypt
        nonce, data = os.urandom(16), os.urandom(size)
        return Pair(engine=_repeat(lambda: ours(nonce, data), calls),
                    reference=_repeat(lambda: theirs(nonce, data, None), reference_calls),
                    engine_units=calls, reference_units=reference_calls)

    return build


case("encrypt 64 B", engine="AesGcm.encrypt, 64 B x 50,000 calls",
     reference="cryptography AESGCM.encrypt x 10,000")(_single_call(64, 50_000, 10_000))
case("encrypt 16 KiB", engine="AesGcm.encrypt, 16 KiB x 5,000 calls",
     reference="cryptography AESGCM.encrypt x 5,000", short=True)(_single_call(16 << 10, 5_000, 5_000))
case("encrypt 1 MiB", engine="AesGcm.encrypt, 1 MiB x 100 calls",
     reference="cryptography AESGCM.encrypt x 100", short=True)(_single_call(1 << 20, 100, 100))


# ---- packed batches of 64-byte records ----

def records(n: int, size: int = 64) -> engine.Batch:
    """n random records of size bytes in one packed Batch."""
    return engine.Batch(np.frombuffer(os.urandom(n * size), np.uint8),
                        np.arange(n + 1, dtype=np.int64) * size)


def _cryptography_loop(values: list[bytes]) -> Callable[[], Any]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    enc = AESGCM(engine.AesGcm.generate_key()).encrypt
    nonces = [os.urandom(16) for _ in values]
    return lambda: [enc(n, v, None) for n, v in zip(nonces, values)]


@case("seal_batch 64 B, 1 thread", engine="seal_batch, packed Batch of 200,000 x 64 B, threads=1",
      reference="cryptography loop over 20,000 of the records", short=True)
def _batch_one_thread(settings: Settings) -> Pair:
    aead, batch = engine.AesGcm(engine.AesGcm.generate_key()), records(200_000)
    return Pair(engine=lambda: aead.seal_batch(batch, threads=1),
                reference=_cryptography_loop([batch[i] for i in range(20_000)]),
                engine_units=200_000, reference_units=20_000)


def _mib_pieces(batch: engine.Batch) -> list[memoryview]:
    """The bytes of ``batch`` in 1 MiB pieces, the SHA-256 references' unit of work."""
    data = memoryview(batch.data)
    return [data[i:i + (1 << 20)] for i in range(0, len(data), 1 << 20)]


def _sha256_pool(pieces: list[Any]) -> tuple[Callable[[], Any], Callable[[], None]]:
    """SHA-256 of ``pieces`` (hashlib, which releases the GIL on large inputs) on a pool of all
    cores: the reference of the engine's all-thread cases. It is not the engine's code, and it
    gains from a free core as the engine's threads should, so the ratio holds whether the machine
    has a core to spare or not, and falls when the engine stops using it. (A pool of
    cryptography's AESGCM calls ran no faster than one thread here.) Returns (run, shutdown)."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(engine.backend_info()["threads"])
    return (lambda: list(pool.map(lambda p: hashlib.sha256(p).digest(), pieces))), pool.shutdown


@case("seal_batch 64 B, all threads",
      engine="seal_batch, packed Batch of 200,000 x 64 B, all threads",
      reference="SHA-256 of the same bytes in 1 MiB pieces on all threads, 4 times", short=True)
def _batch_all_threads(settings: Settings) -> Pair:
    aead, batch = engine.AesGcm(engine.AesGcm.generate_key()), records(200_000)
    run, shutdown = _sha256_pool(_mib_pieces(batch))
    return Pair(engine=lambda: aead.seal_batch(batch, threads=settings.threads),
                reference=_repeat(run, 4), reference_units=4, cleanup=shutdown)


@case("thread scaling, seal_batch 64 B",
      engine="seal_batch, packed Batch of 200,000 x 64 B, 4 times: all threads' speed-up over one thread",
      reference="SHA-256 of the same bytes in 1 MiB pieces, 8 times: a pool of all threads' speed-up "
                "over one thread")
def _thread_scaling(settings: Settings) -> Pair:
    import hashlib

    aead, batch = engine.AesGcm(engine.AesGcm.generate_key()), records(200_000)
    pieces = _mib_pieces(batch)
    run, shutdown = _sha256_pool(pieces)

    def one_thread() -> None:
        for piece in pieces:
            hashlib.sha256(piece).digest()

    return scaling_pair(engine_one=_repeat(lambda: aead.seal_batch(batch, threads=1), 4),
                        engine_all=_repeat(lambda: aead.seal_batch(batch, threads=settings.threads), 4),
                        reference_one=_repeat(one_thread, 8), reference_all=_repeat(run, 8), cleanup=shutdown)


@case("seal_batch_into 1 MiB x 32, all threads",
      engine="seal_batch_into, 32 records of 1 MiB, all threads, 3 times",
      reference="SHA-256 of the same records on all threads")
def _big_records_all_threads(settings: Settings) -> Pair:
    aead, batch = engine.AesGcm(engine.AesGcm.generate_key()), records(32, 1 << 20)
    out = np.empty(32 << 20, np.uint8)
    run, shutdown = _sha256_pool([batch[i] for i in range(32)])
    return Pair(engine=_repeat(lambda: aead.seal_batch_into(batch, out, threads=settings.threads), 3),
                reference=run, cleanup=shutdown)


@case("seal_batch 64 B from a list", engine="seal_batch(list of 100,000 x 64 B bytes), packing included",
      reference="cryptography loop over 20,000 of the values")
def _batch_from_list(settings: Settings) -> Pair:
    aead = engine.AesGcm(engine.AesGcm.generate_key())
    values = [os.urandom(64) for _ in range(100_000)]
    return Pair(engine=lambda: aead.seal_batch(values, threads=settings.threads),
                reference=_cryptography_loop(values[:20_000]),
                engine_units=100_000, reference_units=20_000)


# ---- the service: text tokens, FieldEncryption ----

SERVICE_VALUES = 50_000


def _service(settings: Settings) -> engine.EncryptionService:
    from bench.bench_service import KEY

    return engine.EncryptionService(engine.StaticKeyProvider({1: KEY}), metrics=False,
                                    threads=settings.threads)


@case("encrypt_many", engine="EncryptionService.encrypt_many, 50,000 strings -> tokens",
      reference="cryptography loop making the same tokens (10,000)")
def _encrypt_many(settings: Settings) -> Pair:
    from bench.bench_service import loop_encrypt, make_values

    service, values = _service(settings), make_values(SERVICE_VALUES)
    few = values[:10_000]
    return Pair(engine=lambda: service.encrypt_many(values), reference=lambda: loop_encrypt(few, 1),
                engine_units=len(values), reference_units=len(few))


@case("decrypt_many_text", engine="EncryptionService.decrypt_many_text, 50,000 tokens",
      reference="cryptography loop reading the same tokens (10,000)")
def _decrypt_many_text(settings: Settings) -> Pair:
    from bench.bench_service import loop_decrypt, make_values

    service = _service(settings)
    tokens = service.encrypt_many(make_values(SERVICE_VALUES))
    few = tokens[:10_000]
    return Pair(engine=lambda: service.decrypt_many_text(tokens), reference=lambda: loop_decrypt(few),
                engine_units=len(tokens), reference_units=len(few))


@case("FieldEncryption dicts", engine="FieldEncryption.encrypt_column, 50,000 dicts",
      reference="cryptography loop building the same new dicts (10,000)")
def _field_dicts(settings: Settings) -> Pair:
    from bench.bench_service import loop_fields, make_values

    fields = engine.FieldEncryption(_service(settings))
    records = [{"id": i, "ssn": v, "email": "user@example.com"}
               for i, v in enumerate(make_values(SERVICE_VALUES))]
    few = records[:10_000]
    return Pair(engine=lambda: fields.encrypt_column(records, "ssn"),
                reference=lambda: loop_fields(few, "ssn", 1),
                engine_units=len(records), reference_units=len(few))


@case("FieldEncryption arrow", engine="FieldEncryption.encrypt_column, pyarrow column of 200,000",
      reference="cryptography loop over 10,000 of its values")
def _field_arrow(settings: Settings) -> Pair:
    import pyarrow as pa

    from bench.bench_service import loop_encrypt, make_values

    fields = engine.FieldEncryption(_service(settings))
    values = make_values(200_000)
    column = pa.array(values, type=pa.large_string())
    few = values[:10_000]
    return Pair(engine=lambda: fields.encrypt_column(column, "ssn"),
                reference=lambda: loop_encrypt(few, 1),
                engine_units=len(values), reference_units=len(few))


@case("reencrypt_many", engine="EncryptionService.reencrypt_many, 50,000 tokens from v1 to v2",
      reference="cryptography loop opening and sealing the same tokens (10,000)")
def _reencrypt_many(settings: Settings) -> Pair:
    from bench.bench_reencrypt import K1, K2, loop_reencrypt, tokens

    old = engine.EncryptionService(engine.StaticKeyProvider({1: K1}), metrics=False)
    new = engine.EncryptionService(engine.StaticKeyProvider({1: K1, 2: K2}), metrics=False,
                                   threads=settings.threads)
    values = tokens(SERVICE_VALUES, old)
    few = values[:10_000]
    return Pair(engine=lambda: new.reencrypt_many(values), reference=lambda: loop_reencrypt(few),
                engine_units=len(values), reference_units=len(few))


# ---- files and tables ----

@case("encrypt file", engine="FileEncryption.encrypt_stream, 32 MiB file to file (tmpfs)",
      reference="cryptography's incremental AES-GCM, same files")
def _encrypt_file(settings: Settings) -> Pair:
    from bench.bench_files import cryptography_file_job, engine_file_job
    from bench.bench_service import KEY
    from engine.stream import FileEncryption

    workdir = tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    plain, sealed = os.path.join(workdir.name, "plain"), os.path.join(workdir.name, "sealed")
    with open(plain, "wb") as f:
        f.write(os.urandom(32 << 20))
    files = FileEncryption(engine.EncryptionService(engine.StaticKeyProvider({1: KEY}), metrics=False),
                           threads=settings.threads)
    ours, theirs = engine_file_job(files, True), cryptography_file_job(True)
    return Pair(engine=lambda: ours(plain, sealed), reference=lambda: theirs(plain, sealed),
                cleanup=workdir.cleanup)


@case("encrypt_columns", engine="tables.encrypt_columns, 50,000 rows x 2 string columns",
      reference="pyarrow + cryptography loop making the same table (10,000 rows)")
def _encrypt_columns(settings: Settings) -> Pair:
    import pyarrow as pa

    from bench.bench_files import loop_encrypt_columns
    from bench.bench_service import make_values
    from engine import tables

    service = _service(settings)
    rows = SERVICE_VALUES
    table = pa.table({"id": pa.array(range(rows), pa.int64()), "email": make_values(rows),
                      "ssn": [f"{i:03d}-{i % 97:02d}-{i % 9973:04d}" for i in range(rows)]})
    few = table.slice(0, 10_000)
    return Pair(engine=lambda: tables.encrypt_columns(table, ["email", "ssn"], service=service),
                reference=lambda: loop_encrypt_columns(few, ["email", "ssn"]),
                engine_units=rows, reference_units=few.num_rows)
