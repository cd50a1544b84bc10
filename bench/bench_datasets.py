"""A whole dataset through `crypto-engine encrypt-columns DIR OUT`: 16 Parquet files with
``--workers 2`` against ``--workers 1``, beside this machine's own two-process ceiling (the same
16 files as two independent ``--workers 1`` commands of 8 files each, started together: what two
processes give here with nothing shared). Each contender is a whole command-line process, timed
from start to exit, as a user runs it; contenders interleaved round by round, medians. Timings
are reported, never asserted.

    python -m bench.bench_datasets            # 16 files x 200,000 rows
    python -m bench.bench_datasets --quick    # 16 files x 20,000 rows (smoke test)
    python -m bench.bench_datasets --json

Ratios printed: the speed-up of ``--workers 2`` over ``--workers 1``, the ceiling's speed-up over
``--workers 1``, and the first as a share of the second (1.0: the job gets all two processes
can give on this machine right now). The job picks its own number of processes (fewer on a
busy machine: see docs/datasets.md); a fourth contender forces two on it, to show what that choice
saved or cost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from engine import backend_info  # noqa: E402

FILES = 16
COLUMNS = ["email", "name"]


def make_dataset(root: Path, rows: int) -> None:
    """16 files in two halves (``a/``, ``b/``: each half is one command of the ceiling)."""
    for i in range(FILES):
        start = i * rows
        ids = pa.array(range(start, start + rows), pa.int64())
        table = pa.table({
            "id": ids,
            "email": pa.array([f"user{j}@example.com" for j in range(start, start + rows)]),
            "name": pa.array([f"Name {j % 9973} Surname{j % 101}" for j in range(start,
                                                                                 start + rows)]),
            "score": pa.array([j / 7 for j in range(start, start + rows)]),
        })
        half = root / ("a" if i < FILES // 2 else "b")
        half.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, half / f"part-{i:02d}.parquet", row_group_size=rows // 2,
                       compression="zstd")


def command(src: Path, dst: Path, workers: int) -> list[str]:
    args = [sys.executable, "-m", "engine", "encrypt-columns", str(src), str(dst),
            "--workers", str(workers), "--json"]
    for c in COLUMNS:
        args += ["--column", c]
    return args


# The job with two processes whatever it would choose (through the Python API: the command line
# has no switch to overrule the job's choice), to show what its choice saved or cost.
FORCED_TWO = """import sys
from engine import datasets
datasets.SMALL_DATASET_BYTES = 0
datasets._cores_taken_by_others = lambda: 0.0
r = datasets.encrypt_dataset(sys.argv[1], sys.argv[2], sys.argv[3:], workers=2)
assert r.ok and r.workers == 2, r.to_dict()
"""


def forced_two(src: Path, dst: Path) -> list[str]:
    return [sys.executable, "-c", FORCED_TWO, str(src), str(dst), *COLUMNS]


def timed(commands: list[list[str]], env: dict[str, str]) -> float:
    """Seconds from starting ``commands`` together to the last one's exit."""
    start = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for c in commands]
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a contender failed: {err.decode()}")
    return time.perf_counter() - start


def workers_used(src: Path, dst: Path, env: dict[str, str]) -> int:
    out = subprocess.run(command(src, dst, 2), env=env, capture_output=True, check=True).stdout
    return json.loads(out)["workers"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=None, help="rows per file")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = args.rows or (20_000 if args.quick else 200_000)
    rounds = args.rounds or (1 if args.quick else 5)
    work = Path(tempfile.mkdtemp(prefix="bench-datasets-", dir=os.environ.get("BENCH_DIR")))
    env = {**os.environ, "ENCRYPTION_MASTER_KEY": "bench-datasets-master-key-0123456789",
           "VAULT_ENABLED": "false", "ENGINE_KEY_STATE_FILE": str(work / "keys.json"),
           "ENCRYPTION_KDF_ITERATIONS": "1000"}
    try:
        src = work / "in"
        make_dataset(src, rows)
        size = sum(p.stat().st_size for p in src.rglob("*.parquet"))
        cases = {
            "workers 1": lambda out: [command(src, out, 1)],
            "workers 2": lambda out: [command(src, out, 2)],
            "2 processes forced (Python API)": lambda out: [forced_two(src, out)],
            "ceiling: 2 processes x 8 files": lambda out: [
                command(src / "a", out / "a", 1), command(src / "b", out / "b", 1)],
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for r in range(rounds):
            for name, make in cases.items():
                out = work / f"out-{r}-{len(times[name])}-{name.split()[0]}"
                times[name].append(timed(make(out), env))
                shutil.rmtree(out)
        used = workers_used(src, work / "probe", env)
        median = {name: statistics.median(t) for name, t in times.items()}
        one, two, ceiling = (median["workers 1"], median["workers 2"],
                             median["ceiling: 2 processes x 8 files"])
        result = {
            "backend": backend_info()["backend"], "files": FILES, "rows_per_file": rows,
            "input_bytes": size, "rounds": rounds, "cores": len(os.sched_getaffinity(0)),
            "workers_used_by_workers_2": used,
            "seconds": median,
            "speedup_workers_2": one / two,
            "speedup_forced_two": one / median["2 processes forced (Python API)"],
            "speedup_ceiling": one / ceiling,
            "share_of_ceiling": (one / two) / (one / ceiling),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{FILES} files x {rows:,} rows ({size / 1e6:.1f} MB ZSTD Parquet), columns "
          f"{', '.join(COLUMNS)}; {result['cores']} cores; backend {result['backend']}; "
          f"median of {rounds} (whole processes, start to exit)")
    for name, t in median.items():
        print(f"  {name:34s} {t:7.2f} s   ({FILES * rows / t / 1e6:.2f} M rows/s)")
    print(f"  speed-up of --workers 2 over --workers 1: {result['speedup_workers_2']:.2f}x "
          f"(the job used {used} process{'es' if used > 1 else ''})")
    print(f"  two processes forced on the job:          {result['speedup_forced_two']:.2f}x")
    print(f"  ceiling (two independent processes):      {result['speedup_ceiling']:.2f}x")
    print(f"  --workers 2 as a share of the ceiling:    {result['share_of_ceiling']:.2f}")


if __name__ == "__main__":
    main()
