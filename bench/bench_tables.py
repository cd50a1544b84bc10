"""Parquet column encryption: the size of the output against its bound, and the time against
pyarrow reading and writing the same file with no encryption (the ceiling), side by side in one
run (medians of interleaved rounds). Timings and sizes are reported, never asserted.

    python -m bench.bench_tables              # issue 21's file: 300,000 rows x 5 columns, ZSTD
    python -m bench.bench_tables --rows 20000 --rounds 1    # smoke test
    python -m bench.bench_tables --json

The size goal (issue 21): output <= input + the encrypted values' plaintext bytes + 40 bytes
per encrypted value + 1 %. Only ``email`` (22-byte addresses) is encrypted; the other columns
keep their codec, level, dictionaries and statistics (engine.parquet_rewrite), so they cost
what they cost in the input. The floor printed beside it: ciphertexts are random, so no codec
shrinks them, and the output is at least the other columns plus every value's nonce, ciphertext
and tag (50 bytes for a 22-byte address): an output near the input's size is out of reach.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

KEY = bytes(range(32))
OVERHEAD_PER_VALUE = 40


def make_table(rows: int) -> Any:
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(21)
    names = np.array(["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken"])
    countries = np.array(["DE", "FR", "NL", "IT", "ES", "PL", "SE", "AT"])
    return pa.table({
        "id": pa.array(np.arange(rows, dtype=np.int64)),
        "email": pa.array([f"user{i:06d}@example.com" for i in range(rows)]),  # 22 bytes
        "name": pa.array(names[rng.integers(0, len(names), rows)]),
        "country": pa.array(countries[rng.integers(0, len(countries), rows)]),
        "amount": pa.array(np.round(rng.gamma(2.0, 50.0, rows), 2)),
    })


def run(rows: int, rounds: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from engine import EncryptionService, StaticKeyProvider, tables

    service = EncryptionService(StaticKeyProvider({1: KEY}), metrics=False)
    table = make_table(rows)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        src, enc, back, copy = (os.path.join(d, n) for n in
                                ("in.parquet", "enc.parquet", "back.parquet", "copy.parquet"))
        pq.write_table(table, src, compression="zstd", row_group_size=75_000)

        def engine_encrypt() -> None:
            tables.encrypt_columns_file(src, enc, ["email"], service=service)

        def pyarrow_copy() -> None:  # the ceiling: the same reads and writes, no encryption
            reader = pq.ParquetFile(src)
            with pq.ParquetWriter(copy, reader.schema_arrow, compression="zstd") as w:
                for i in range(reader.num_row_groups):
                    w.write_table(reader.read_row_group(i))

        times: dict[str, list[float]] = {"engine": [], "pyarrow copy": []}
        for _ in range(rounds):
            for name, call in (("engine", engine_encrypt), ("pyarrow copy", pyarrow_copy)):
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
        tables.decrypt_columns_file(enc, back, ["email"], service=service)
        same = pq.read_table(back).equals(pq.read_table(src))
        emails = table.column("email")
        present = len(emails) - emails.null_count
        plain_bytes = sum(len(v) for v in emails.combine_chunks().to_numpy(zero_copy_only=False)
                          if v is not None)
        size_in, size_out = os.path.getsize(src), os.path.getsize(enc)
        # Nonces, ciphertexts and tags are random: no codec shrinks them, so the smallest
        # possible output is the input without its email column plus those bytes.
        meta = pq.ParquetFile(src).metadata
        email_in = sum(meta.row_group(g).column(1).total_compressed_size
                       for g in range(meta.num_row_groups))
        floor = size_in - email_in + plain_bytes + (12 + 16) * present
        bound = (size_in + plain_bytes + OVERHEAD_PER_VALUE * present) * 1.01
        engine_s = statistics.median(times["engine"])
        copy_s = statistics.median(times["pyarrow copy"])
        return {"rows": rows, "input bytes": size_in, "output bytes": size_out,
                "bound bytes": int(bound), "output / bound": size_out / bound,
                "output / input": size_out / size_in, "floor bytes": floor,
                "encrypted values": present, "plaintext bytes": plain_bytes,
                "engine s": engine_s, "pyarrow copy s": copy_s,
                "engine speed / ceiling": copy_s / engine_s, "round trip equal": same}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.rows, args.rounds)
    if args.json:
        print(json.dumps(result))
        return 0
    mb = 1e6
    print(f"{result['rows']:,} rows x 5 columns, ZSTD, 'email' encrypted")
    print(f"  size: input {result['input bytes'] / mb:.2f} MB, output "
          f"{result['output bytes'] / mb:.2f} MB, bound {result['bound bytes'] / mb:.2f} MB "
          f"(output/bound {result['output / bound']:.3f}; output/input "
          f"{result['output / input']:.2f})")
    print(f"  floor (sealed values are incompressible): {result['floor bytes'] / mb:.2f} MB; "
          f"an output the size of the input is unreachable once a column is encrypted")
    print(f"  time: engine {result['engine s']:.3f} s, pyarrow read+write with no encryption "
          f"{result['pyarrow copy s']:.3f} s (the ceiling): engine at "
          f"{result['engine speed / ceiling']:.2f}x the ceiling's speed")
    print(f"  decrypted file equals the input: {result['round trip equal']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
