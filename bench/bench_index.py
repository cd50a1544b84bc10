"""Blind-index benchmark: indexing 1,000,000 emails with engine.BlindIndex against a Python
``hmac`` loop doing the same work, side by side in one run (interleaved rounds, medians; timings
are reported, never asserted).

    python -m bench.bench_index            # 1,000,000 emails
    python -m bench.bench_index --quick    # 100,000 (CI smoke test)
    python -m bench.bench_index --json

Both sides start from a list of str and end with the same hex strings (checked): the loop
trims, lower-cases and encodes each email, runs ``hmac.new(key, value, sha256)`` and keeps the
index's hex digits; the engine normalises the packed batch with array operations and runs one
native HMAC pass on all threads. A second row starts from a pyarrow column and returns one
(no Python object per email), against the same loop over the column's values.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402

from bench.compare import interleaved  # noqa: E402
from engine import BlindIndex, StaticKeyProvider, backend_info  # noqa: E402

GOAL = 10.0
WHITESPACE = " \t\n\v\f\r"


def emails(n: int) -> list[str]:
    return [f" User{i:07d}.{i % 97}@Example{i % 13}.com" for i in range(n)]


def python_loop(key: bytes, values: list[str], chars: int, bits: int) -> list[str]:
    """What a user writes without the engine (same normalisation and output)."""
    shift = 4 * chars - bits
    out = []
    for v in values:
        normal = v.strip(WHITESPACE).lower().encode()
        digest = hmac.new(key, normal, hashlib.sha256).hexdigest()[:chars]
        out.append(format(int(digest, 16) >> shift << shift, f"0{chars}x"))
    return out


def run(n: int, rounds: int) -> dict:
    provider = StaticKeyProvider({1: os.urandom(32)}, index_key=os.urandom(32))
    index = BlindIndex(provider, "users", "email", normalizer="email", expected_rows=n)
    key = provider.index_key("users", "email", 1)
    values = emails(n)
    column = pa.array(values, type=pa.large_string())
    assert index.compute(values[:1000]) == python_loop(key, values[:1000], index.hex_chars,
                                                       index.bits)
    figures = interleaved(
        {
            "engine, list of str": lambda: index.compute(values),
            "engine, pyarrow column": lambda: index.compute(column, arrow=True),
            "Python hmac loop": lambda: python_loop(key, values, index.hex_chars, index.bits),
        },
        n / 1e6,
        rounds,
    )
    return {"emails": n, "bits": index.bits, "M emails/s": figures,
            "ratios": {name: figures[name] / figures["Python hmac loop"]
                       for name in figures if name.startswith("engine")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 emails (smoke test)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    report = run(100_000 if args.quick else 1_000_000, 3 if args.quick else 5)
    report["backend"] = backend_info()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    info = report["backend"]
    print(f"backend: {info['backend']} ({info['isa']}), {info['threads']} threads; "
          f"{report['emails']:,} emails, {report['bits']} bits")
    for name, value in report["M emails/s"].items():
        print(f"  {name:<24} {value:8.3f} M emails/s")
    for name, ratio in report["ratios"].items():
        status = "met" if ratio >= GOAL else "NOT met"
        print(f"  ratio {name} / Python hmac loop: {ratio:6.2f}x (goal >= {GOAL}x: {status})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
