"""Parquet Modular Encryption: the engine as PME's key manager against pyarrow's own PME write
with an in-memory KMS, side by side in one run (contenders interleaved round by round,
medians), and the size of PME files against the plain file. Timings are reported, never
asserted.

    python -m bench.bench_pme             # 1,000,000 rows x 5 columns, ZSTD, 7 rounds
    python -m bench.bench_pme --quick     # 100,000 rows, 3 rounds (CI smoke test)
    python -m bench.bench_pme --json

Goals (issue 21): the engine's PME write at least 0.9x the speed of pyarrow's with an
in-memory KMS (the engine's KMS must cost nothing measurable), and a PME file within 2 % of
the plain file's size. Both KMSs wrap with AES-256-GCM in this process; both writers reuse
their crypto factory across rounds, so key-encryption keys are cached alike (one KMS call per
master key and cache lifetime). The plain write (no encryption) is printed beside them: the
ceiling, what PME itself costs. Files go to /dev/shm when it has room (writes stay in memory).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pyarrow.parquet.encryption as pe  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from engine import EncryptionService, StaticKeyProvider, backend_info  # noqa: E402
from engine.columns.pme import PmeKeys, write_pme  # noqa: E402

MASTER = bytes(range(32))
LIFETIME = datetime.timedelta(minutes=10)


class InMemoryKms(pe.KmsClient):
    """pyarrow's ``KmsClient`` over master keys held in memory, wrapping with AES-256-GCM
    (cryptography): what a pipeline without a key manager would write."""

    def __init__(self, master_keys: dict[str, bytes]) -> None:
        super().__init__()
        self.keys = {k: AESGCM(v) for k, v in master_keys.items()}

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        nonce = os.urandom(12)
        sealed = self.keys[master_key_identifier].encrypt(nonce, bytes(key_bytes), None)
        return base64.b64encode(nonce + sealed).decode()

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        raw = base64.b64decode(wrapped_key)
        return self.keys[master_key_identifier].decrypt(raw[:12], raw[12:], None)


def make_table(rows: int) -> pa.Table:
    """The size test's table: 5 columns of a customer file."""
    rng = np.random.default_rng(3)
    return pa.table({
        "id": pa.array(np.arange(rows)),
        "email": pa.array([f"person{int(i)}@mail{int(i) % 50}.example.org"
                           for i in rng.integers(0, 10**7, rows)]),
        "amount": pa.array(rng.gamma(2.0, 40.0, rows).round(2)),
        "created": pa.array(1_700_000_000_000_000 + np.sort(rng.integers(0, 10**13, rows)),
                            pa.timestamp("us", "UTC")),
        "country": pa.array(rng.choice(["DE", "FR", "US", "BR", "IN", "JP"], rows)),
    })


def pyarrow_writer(columns: list[str] | None) -> Callable[[pa.Table, str], None]:
    factory = pe.CryptoFactory(lambda config: InMemoryKms({"master": MASTER}))
    options: dict[str, Any] = {"double_wrapping": True, "cache_lifetime": LIFETIME,
                               "internal_key_material": True, "data_key_length_bits": 256,
                               "encryption_algorithm": "AES_GCM_V1"}
    if columns is None:
        config = pe.EncryptionConfiguration(footer_key="master", uniform_encryption=True,
                                            **options)
    else:
        config = pe.EncryptionConfiguration(footer_key="master",
                                            column_keys={"master": columns}, **options)
    connection = pe.KmsConnectionConfig()

    def run(table: pa.Table, path: str) -> None:
        props = factory.file_encryption_properties(connection, config)
        pq.write_table(table, path, compression="zstd", encryption_properties=props)

    return run


def engine_writer(columns: list[str] | None) -> Callable[[pa.Table, str], None]:
    keys = PmeKeys(EncryptionService(StaticKeyProvider({1: MASTER}), metrics=False),
                   cache_lifetime=LIFETIME)

    def run(table: pa.Table, path: str) -> None:
        write_pme(table, path, columns=columns, keys=keys, compression="zstd")

    return run


def plain_writer(table: pa.Table, path: str) -> None:
    pq.write_table(table, path, compression="zstd")


def _directory() -> str:
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.statvfs(shm).f_bavail * os.statvfs(shm).f_frsize > 1 << 30:
        return shm
    return os.environ.get("BENCH_DIR") or tempfile.gettempdir()


def run(rows: int, rounds: int) -> dict[str, Any]:
    table = make_table(rows)
    cases: dict[str, Callable[[pa.Table, str], None]] = {
        "plain (no encryption)": plain_writer,
        "pyarrow PME, uniform": pyarrow_writer(None),
        "engine PME, uniform": engine_writer(None),
        "pyarrow PME, email": pyarrow_writer(["email"]),
        "engine PME, email": engine_writer(["email"]),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(dir=_directory()) as where:
        for write in cases.values():  # warm-up: imports, first KEK wraps
            write(table, os.path.join(where, "warm.parquet"))
        for _ in range(rounds):
            for i, (name, write) in enumerate(cases.items()):
                path = os.path.join(where, f"{i}.parquet")
                start = time.perf_counter()
                write(table, path)
                times[name].append(time.perf_counter() - start)
                sizes[name] = os.path.getsize(path)
    median = {name: statistics.median(t) for name, t in times.items()}
    modes = ("uniform", "email")

    def paired(a: str, b: str) -> float:  # the median of the rounds' ratios: load moves both
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    speed = {mode: paired(f"pyarrow PME, {mode}", f"engine PME, {mode}") for mode in modes}
    ceiling = {mode: paired("plain (no encryption)", f"pyarrow PME, {mode}") for mode in modes}
    size = {mode: sizes[f"engine PME, {mode}"] / sizes["plain (no encryption)"]
            for mode in modes}
    return {"rows": rows, "rounds": rounds, "backend": backend_info()["backend"],
            "seconds": {k: round(v, 4) for k, v in median.items()}, "bytes": sizes,
            "engine_vs_pyarrow_speed": speed, "plain_vs_pyarrow_pme_speed": ceiling,
            "pme_size_vs_plain": size}


def report(r: dict[str, Any]) -> None:
    print(f"PME write, {r['rows']:,} rows x 5 columns, ZSTD, median of {r['rounds']} rounds "
          f"({r['backend']})")
    for name, seconds in r["seconds"].items():
        print(f"  {name:24} {seconds * 1000:9.1f} ms  {r['bytes'][name] / 1e6:8.3f} MB")
    print("  speed: the median of the rounds' ratios of times; size: PME file / plain file")
    for mode in ("uniform", "email"):
        print(f"  {mode:8} engine vs pyarrow PME speed {r['engine_vs_pyarrow_speed'][mode]:.3f}x "
              f"(goal >= 0.9x; the ceiling, pyarrow PME vs the plain write: "
              f"{r['plain_vs_pyarrow_pme_speed'][mode]:.3f}x)   size vs plain "
              f"{r['pme_size_vs_plain'][mode]:.4f} (goal <= 1.02)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="100,000 rows, 3 rounds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows, rounds = (100_000, 3) if args.quick else (args.rows, args.rounds)
    result = run(rows, rounds)
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
