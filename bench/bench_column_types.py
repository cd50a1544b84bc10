"""One column of each common type encrypted in a Parquet file, side by side in one run (medians
of interleaved rounds): the engine's ``encrypt_columns_file`` against

* the ceiling: pyarrow reading and writing the same file with no encryption (goal: the engine
  at least 0.6x its speed), and
* a pyarrow + ``cryptography`` loop that reads the file, seals each value in the column format
  (docs/column-format.md: the same header, nonce, ciphertext and tag, checked by decrypting its
  output with the engine) and writes the file (goal: the engine at least 10x its speed).

    python -m bench.bench_column_types                 # 1,000,000 rows, ZSTD, 3 rounds
    python -m bench.bench_column_types --rows 20000 --rounds 1 --json   # smoke test

Each case encrypts one column (string: 22-byte addresses; int64; timestamp[us, UTC]) of a
three-column file; timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

from engine import EncryptionService, StaticKeyProvider

KEY = bytes(range(32))
COLUMNS = ("email", "amount", "created")


def make_file(path: str, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    ids = np.arange(rows)
    table = pa.table({
        "email": pa.array([f"user{i:07d}@example.com" for i in ids]),
        "amount": pa.array(rng.integers(-10**12, 10**12, rows), pa.int64()),
        "created": pa.array(1_700_000_000_000_000 + rng.integers(0, 10**12, rows),
                            pa.timestamp("us", tz="UTC")),
    })
    pq.write_table(table, path, compression="zstd")


def plaintexts(array: Any) -> list[bytes]:
    """Each value's bytes in the column format: UTF-8 text, little-endian 64-bit numbers."""
    import pyarrow as pa

    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return [v.encode() for v in array.to_pylist()]
    return [int(v).to_bytes(8, "little", signed=True) for v in array.cast(pa.int64()).to_numpy()]


def loop_encrypt_file(src: str, dst: str, name: str) -> None:
    """The reference: pyarrow, and cryptography's AESGCM value by value, making the values
    ``encrypt_columns_file`` makes (key version 1 of ``KEY``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from engine.columns import type_descriptor
    from engine.columns.format import column_aad

    table = pq.read_table(src)
    column = table.column(name).combine_chunks()
    descriptor = type_descriptor(column.type)
    header = bytes([0xC0, 1, len(descriptor)]) + descriptor
    aad = column_aad(0, 1, name, descriptor)
    enc, urandom = AESGCM(KEY).encrypt, os.urandom
    sealed = []
    for value in plaintexts(column):
        nonce = urandom(12)
        sealed.append(header + nonce + enc(nonce, value, aad))
    table = table.set_column(table.schema.get_field_index(name), name,
                             pa.array(sealed, pa.large_binary()))
    pq.write_table(table, dst, compression="zstd")


def run(rows: int, rounds: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from bench.bench_files import _time_rounds
    from engine import tables

    service = EncryptionService(StaticKeyProvider({1: KEY}), metrics=False)
    results: dict[str, Any] = {"rows": rows, "rounds": rounds, "columns": {}}
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "in.parquet")
        make_file(src, rows)
        for name in COLUMNS:
            out = {k: os.path.join(tmp, f"{name}-{k}.parquet") for k in ("engine", "copy", "loop")}
            cases = {
                "engine": lambda out=out, name=name: tables.encrypt_columns_file(
                    src, out["engine"], [name], service=service),
                "pyarrow copy": lambda out=out: pq.write_table(pq.read_table(src), out["copy"],
                                                               compression="zstd"),
                "pyarrow + cryptography loop": lambda out=out, name=name: loop_encrypt_file(
                    src, out["loop"], name),
            }
            medians = _time_rounds(cases, rounds)
            tables.decrypt_columns_file(out["loop"], os.path.join(tmp, "back.parquet"), [name],
                                        service=service)
            same = pq.read_table(os.path.join(tmp, "back.parquet")).equals(pq.read_table(src))
            results["columns"][name] = {
                "type": str(pq.read_schema(src).field(name).type), "seconds": medians,
                "vs ceiling": medians["pyarrow copy"] / medians["engine"],
                "vs loop": medians["pyarrow + cryptography loop"] / medians["engine"],
                "loop output decrypts with the engine": same,
            }
    return results


def render(r: dict[str, Any]) -> str:
    lines = [f"one column encrypted in a {r['rows']:,}-row ZSTD Parquet file, medians of "
             f"{r['rounds']} interleaved rounds; speed ratios (higher: the engine faster)",
             f"{'column':<10} {'type':<24} {'engine s':>9} {'vs pyarrow copy':>16} "
             f"{'goal':>6} {'vs loop':>8} {'goal':>6}"]
    for name, c in r["columns"].items():
        lines.append(f"{name:<10} {c['type']:<24} {c['seconds']['engine']:>9.3f} "
                     f"{c['vs ceiling']:>15.2f}x {'0.6x':>6} {c['vs loop']:>7.1f}x {'10x':>6}")
        if not c["loop output decrypts with the engine"]:
            lines.append(f"  *** the loop's output for {name} does not decrypt to the input ***")
    lines.append("the pyarrow copy is the ceiling: the same reads and writes with no encryption")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_column_types", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="20,000 rows, one round (a smoke test)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows, rounds = (20_000, 1) if args.quick else (args.rows, args.rounds)
    if rows < 1 or rounds < 1:
        p.error("--rows and --rounds must be positive")
    result = run(rows, rounds)
    print(json.dumps(result, indent=1) if args.json else render(result))
    ok = all(c["loop output decrypts with the engine"] for c in result["columns"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
