"""Re-encryption benchmark: the engine's job against the jobs it must be compared with, side by
side in one run (contenders interleaved round by round, medians; ratios are what carry over to
another machine, and nothing here is asserted).

    python -m bench.bench_reencrypt            # 1,000,000 rows; memory 1M vs 4M rows
    python -m bench.bench_reencrypt --quick    # 50,000 rows (CI smoke test)
    python -m bench.bench_reencrypt --json     # machine-readable

Cases, on 64-byte values stored as text tokens (``ef1:...``, format 1) under key version 1,
moved to version 2:
  1. SQLite (a file, WAL): the engine's job (``engine.reencrypt.reencrypt``, one process) vs
     a plain copy job (the same keyset-paginated reads and the same UPDATE ... WHERE key = ?
     AND v = ? writes, in the same batches and transactions, writing the same bytes with no
     cryptography: each batch's values rotated by one row, since SQLite skips the write of a
     value that did not change), goal <= 1.5x its time; and vs a straightforward loop (the
     same reads, then per row: base64, cryptography's AESGCM decrypt and encrypt, a new token;
     executemany), goal >= 10x faster.
  2. PostgreSQL (a throwaway server from engine.testing.postgres): the same three; the copy job
     writes like the engine (COPY into a temporary table, one UPDATE ... FROM per batch).
  3. Parquet (CPU-bound; SealedBatch.to_arrow()'s three columns plus a key version): the job
     on 2 worker processes vs 1, goal >= 1.7x, beside this machine's own two-process ceiling
     (the same pure-Python work in 1 process, then in 2 at once).
  4. Peak memory (the job's process, RSS) on 1M vs 4M rows of SQLite: goal within 10 %.
  5. The command as a user runs it, each a whole process timed from its start: ``crypto-engine
     reencrypt`` on SQLite (its own environment key, --workers 0, 1 and 2) vs the copy job of
     case 1 as a process of its own, goal <= 1.5x; beside it the ceiling that bounds the
     ratio: the copy plus a process that only loads what the command must load (the engine's
     re-encryption package and pyarrow, which loads pandas on its first array), as a multiple
     of the copy.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import Batch, EncryptionService, StaticKeyProvider, backend_info  # noqa: E402
from engine.formats.wire import token_header  # noqa: E402
from engine.reencrypt import Column, SealedLayout, open_store, reencrypt  # noqa: E402

K1, K2 = bytes(range(32)), bytes(range(32, 64))
VALUE_BYTES = 64


def services() -> tuple[EncryptionService, EncryptionService]:
    """(the application before the rotation: v1; after: v2 current, v1 kept)."""
    return (EncryptionService(StaticKeyProvider({1: K1}), metrics=False),
            EncryptionService(StaticKeyProvider({1: K1, 2: K2}), metrics=False))


def tokens(n: int, service: EncryptionService, seed: int = 1) -> list[str]:
    data = np.random.default_rng(seed).integers(0, 256, n * VALUE_BYTES, dtype=np.uint8)
    return service.encrypt_many(Batch(data, np.arange(n + 1) * VALUE_BYTES))


def chunks(n: int, size: int = 100_000):
    for start in range(0, n, size):
        yield start, min(n, start + size)


# ---------------------------------------------------------------- the two jobs to compare with


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def loop_reencrypt(values: list[str]) -> list[str]:
    """Tokens under v1 moved to v2 one at a time with cryptography's AESGCM (what a hand-written
    job does per row, without its reads and writes)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    old, new, header = AESGCM(K1), AESGCM(K2), token_header(2)
    return [_reseal_one(v, old, new, header) for v in values]


def _reseal_one(token: str, old: Any, new: Any, header: bytes) -> str:
    """One value, the straightforward way: parse, decrypt, encrypt, format."""
    raw = _b64url_decode(token[4:])
    plain = old.decrypt(raw[6:22], raw[22:], raw[:6])
    iv = os.urandom(16)
    return "ef1:" + base64.urlsafe_b64encode(header + iv + new.encrypt(iv, plain, header)) \
        .rstrip(b"=").decode()


def _rotated(rows: list) -> tuple[list, list, list]:
    """(new values, keys, values read) for the copy job: each row gets the value of the next
    row of its batch. Writing a value back unchanged would not be a write at all: SQLite
    compares an overwritten cell with the old one and leaves the page clean when they are
    equal. These are the same bytes, of the same sizes, each in another row."""
    keys, values = (list(c) for c in zip(*rows))
    return values[1:] + values[:1], keys, values


def _pages(conn: Any, select: str, batch: int) -> Any:
    """The rows of ``users`` in key order, ``batch`` at a time (keyset pagination)."""
    last = -1
    while True:
        rows = conn.execute(select, (last, batch)).fetchall()
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def sqlite_job(path: str, batch: int, crypto: bool) -> None:
    """The copy job (``crypto=False``) or the loop (``crypto=True``) on SQLite."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for rows in _pages(conn, "SELECT id, v FROM users WHERE id > ? ORDER BY id LIMIT ?", batch):
        if crypto:
            keys, values = (list(c) for c in zip(*rows))
            out = list(zip(loop_reencrypt(values), keys, values))
        else:
            out = list(zip(*_rotated(rows)))
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("UPDATE users SET v = ? WHERE id = ? AND v = ?", out)
        conn.execute("COMMIT")
    conn.close()


def postgres_job(url: str, batch: int, crypto: bool) -> None:
    """The copy job (COPY + UPDATE ... FROM, as the engine writes) or the loop (executemany)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for rows in _pages(conn, "SELECT id, v FROM users WHERE id > %s ORDER BY id LIMIT %s",
                           batch):
            with conn.transaction():
                if crypto:
                    keys, values = (list(c) for c in zip(*rows))
                    with conn.cursor() as cur:
                        cur.executemany("UPDATE users SET v = %s WHERE id = %s AND v = %s",
                                        list(zip(loop_reencrypt(values), keys, values)))
                else:
                    conn.execute("CREATE TEMPORARY TABLE IF NOT EXISTS staging ON COMMIT DELETE "
                                 "ROWS AS SELECT id AS k, v AS old, v AS new FROM users WITH NO DATA")
                    new_values, keys, values = _rotated(rows)
                    with conn.cursor().copy("COPY staging (k, old, new) FROM STDIN") as copy:
                        for row in zip(keys, values, new_values):
                            copy.write_row(row)
                    conn.execute("UPDATE users AS t SET v = s.new FROM staging AS s WHERE "
                                 "t.id = s.k AND t.id BETWEEN %s AND %s AND t.v = s.old",
                                 (keys[0], keys[-1]))


# ---------------------------------------------------------------- timing


def interleaved(contenders: dict[str, Callable[[], None]], reset: Callable[[], None],
                rounds: int) -> dict[str, float]:
    """Median seconds of each contender; every run starts from the same data (``reset``, not
    timed), and the order rotates each round so drift on the machine hits all alike. A first,
    untimed round pays the one-time costs (imports, caches) of each."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for name in names:
        reset()
        contenders[name]()
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            reset()
            t0 = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def check_moved(values: list[str], expect_version: int, new: EncryptionService) -> None:
    """The job did its work: the values open under the expected version."""
    parsed = [_b64url_decode(v[4:])[2:6] for v in values[:: max(1, len(values) // 1000)]]
    assert {int.from_bytes(p, "big") for p in parsed} == {expect_version}
    assert all(len(p) == VALUE_BYTES for p in new.decrypt_many(values[:1000]))


# ---------------------------------------------------------------- cases


def make_sqlite(path: str, n: int) -> None:
    """A SQLite file with ``users(id, v)``: n tokens of 64-byte values under version 1."""
    old, _ = services()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, v TEXT)")
    for a, b in chunks(n):
        conn.executemany("INSERT INTO users VALUES (?, ?)",
                         zip(range(a, b), tokens(b - a, old, seed=a)))
        conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def copy_sqlite(template: str, path: str) -> None:
    """``path`` becomes a fresh copy of ``template`` (its WAL files removed)."""
    for suffix in ("-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    shutil.copyfile(template, path)


def sqlite_case(n: int, rounds: int, batch: int, work: Path) -> dict[str, Any]:
    template, path = str(work / "template.db"), str(work / "users.db")
    make_sqlite(template, n)

    def reset() -> None:
        copy_sqlite(template, path)

    def values() -> list[str]:
        return [r[0] for r in sqlite3.connect(path).execute("SELECT v FROM users")]

    return compare_jobs("SQLite", n, open_store(f"sqlite:///{path}", "users", "id"),
                        lambda crypto: sqlite_job(path, batch, crypto), reset, values, rounds,
                        batch)


def postgres_case(n: int, rounds: int, batch: int, url: str | None) -> dict[str, Any]:
    import psycopg

    from engine.testing.postgres import PostgresServer

    server = None
    if url is None:
        server = PostgresServer().start()
        url = server.url
    old, _ = services()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS users_template")
            conn.execute("CREATE TABLE users_template (id BIGINT PRIMARY KEY, v TEXT)")
            for a, b in chunks(n):
                with conn.cursor().copy("COPY users_template FROM STDIN") as copy:
                    for row in zip(range(a, b), tokens(b - a, old, seed=a)):
                        copy.write_row(row)

        def reset() -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("DROP TABLE IF EXISTS users")
                conn.execute("DROP TABLE IF EXISTS engine_reencrypt_progress")
                conn.execute("CREATE TABLE users (LIKE users_template INCLUDING ALL)")
                conn.execute("INSERT INTO users SELECT * FROM users_template")
                conn.execute("VACUUM ANALYZE users")

        def values() -> list[str]:
            with psycopg.connect(url) as conn:
                return [r[0] for r in conn.execute("SELECT v FROM users")]

        return compare_jobs("PostgreSQL", n, open_store(url, "users", "id"),
                            lambda crypto: postgres_job(url, batch, crypto), reset, values,
                            rounds, batch)
    finally:
        if server is not None:
            server.stop()


def compare_jobs(name: str, n: int, store: Any, plain_job: Callable[[bool], None],
                 reset: Callable[[], None], values: Callable[[], list[str]], rounds: int,
                 batch: int) -> dict[str, Any]:
    """The engine's job, the copy job (``plain_job(False)``) and the loop (``plain_job(True)``)
    on one store; then one more run of the engine's job, checked."""
    new = services()[1]
    m = interleaved({
        "engine": lambda: reencrypt(store, ["v"], service=new, batch_size=batch),
        "copy": lambda: plain_job(False),
        "loop": lambda: plain_job(True),
    }, reset, rounds)
    reset()
    reencrypt(store, ["v"], service=new, batch_size=batch)
    check_moved(values(), 2, new)
    return {"store": name, "rows": n, "engine_s": m["engine"], "copy_s": m["copy"],
            "loop_s": m["loop"], "engine_vs_copy": m["engine"] / m["copy"],
            "loop_vs_engine": m["loop"] / m["engine"],
            "copy_vs_loop_ceiling": m["loop"] / m["copy"]}


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def two_process_ceiling(spins: int) -> float:
    """How much faster two processes finish two equal CPU-bound tasks than one process finishes
    one of them twice: 2.0 on two free cores."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        pool.map(_spin, [1000, 1000])  # both started
        t0 = time.perf_counter()
        pool.apply(_spin, (spins,))
        one = time.perf_counter() - t0
        t0 = time.perf_counter()
        pool.map(_spin, [spins, spins], chunksize=1)
        two = time.perf_counter() - t0
    return 2 * one / two


def parquet_case(files: int, rows: int, rounds: int, batch: int, work: Path) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    old, _ = services()
    template, dataset = work / "template", work / "dataset"
    template.mkdir()
    key = old.provider.get_current_key()
    for f in range(files):
        data = np.random.default_rng(f).integers(0, 256, rows * VALUE_BYTES, dtype=np.uint8)
        sealed = key.cipher.seal_batch(Batch(data, np.arange(rows + 1) * VALUE_BYTES)).to_arrow()
        pq.write_table(sealed.append_column("key_version", pa.array(np.ones(rows, np.int32))),
                       template / f"part-{f:03d}.parquet")

    def reset() -> None:
        shutil.rmtree(dataset, ignore_errors=True)
        shutil.copytree(template, dataset)

    store = open_store(f"parquet://{dataset}")
    column = [Column("v", sealed=SealedLayout())]
    factory = _bench_service  # picklable: worker processes build the same keys
    medians = interleaved({
        "1 worker": lambda: reencrypt(store, column, service_factory=factory, workers=1,
                                      batch_size=batch),
        "2 workers": lambda: reencrypt(store, column, service_factory=factory, workers=2,
                                       batch_size=batch),
    }, reset, rounds)
    ceiling = two_process_ceiling(3_000_000)
    return {"files": files, "rows": files * rows, "one_worker_s": medians["1 worker"],
            "two_workers_s": medians["2 workers"],
            "two_vs_one": medians["1 worker"] / medians["2 workers"],
            "machine_two_process_ceiling": ceiling}


COPY_PROCESS = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
last, batch = -1, int(sys.argv[2])
while True:
    rows = conn.execute("SELECT id, v FROM users WHERE id > ? ORDER BY id LIMIT ?",
                        (last, batch)).fetchall()
    if not rows:
        break
    keys, values = [r[0] for r in rows], [r[1] for r in rows]
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("UPDATE users SET v = ? WHERE id = ? AND v = ?",
                     zip(values[1:] + values[:1], keys, values))
    conn.execute("COMMIT")
    last = keys[-1]
conn.close()
"""
STARTUP_FLOOR = "import pyarrow as pa, engine.reencrypt; pa.array([0])"


def command_case(n: int, rounds: int, batch: int, work: Path) -> dict[str, Any]:
    """Case 5: whole processes, the command against the copy job and its start-up floor."""
    env = {**os.environ, "ENCRYPTION_MASTER_KEY": "bench-reencrypt-master-key-0123456789-abcd",
           "ENCRYPTION_KDF_ITERATIONS": "1000", "ENGINE_KEY_STATE_FILE": str(work / "keys.json"),
           "ENGINE_STATE_DIR": str(work), "VAULT_ENABLED": "false"}
    template, path = str(work / "template.db"), str(work / "users.db")
    fill = ("import os, sqlite3, sys\nfrom engine import get_encryption_service\n"
            "service, n = get_encryption_service(), int(sys.argv[2])\n"
            "db = sqlite3.connect(sys.argv[1])\ndb.execute('PRAGMA journal_mode=WAL')\n"
            "db.execute('CREATE TABLE users (id INTEGER PRIMARY KEY, v TEXT)')\n"
            "for a in range(0, n, 100000):\n"
            "    values = [os.urandom(%d) for _ in range(min(n - a, 100000))]\n"
            "    db.executemany('INSERT INTO users VALUES (?, ?)',\n"
            "                   zip(range(a, a + len(values)), service.encrypt_many(values)))\n"
            "    db.commit()\n"
            "db.execute('PRAGMA wal_checkpoint(TRUNCATE)')\n" % VALUE_BYTES)
    subprocess.run([sys.executable, "-c", fill, template, str(n)], env=env, check=True)
    cli = [sys.executable, "-m", "engine"]
    subprocess.run([*cli, "rotate"], env=env, check=True, capture_output=True)  # v1 -> v2
    keys_v2 = (work / "keys.json").read_bytes()

    def reset() -> None:
        copy_sqlite(template, path)
        (work / "keys.json").write_bytes(keys_v2)

    def process(*args: str) -> Callable[[], None]:
        def run() -> None:
            done = subprocess.run(list(args), env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{args[:4]} exited {done.returncode}: {done.stderr[-2000:]}")
        return run

    job = [*cli, "reencrypt", "--store", f"sqlite:///{path}", "--table", "users", "--key", "id",
           "--column", "v", "--batch-size", str(batch)]
    m = interleaved({
        "copy": process(sys.executable, "-c", COPY_PROCESS, path, str(batch)),
        "floor": process(sys.executable, "-c", STARTUP_FLOOR),
        **{f"workers {w}": process(*job, "--workers", str(w)) for w in (0, 1, 2)},
    }, reset, rounds)
    reset()
    done = subprocess.run([*job, "--json"], env=env, capture_output=True, text=True, check=True)
    moved = json.loads(done.stdout)
    assert moved["reencrypted"] == n and moved["complete"] and not moved["failed"], moved
    best = min(m[f"workers {w}"] for w in (0, 1, 2))
    return {"rows": n, "copy_s": m["copy"], "startup_floor_s": m["floor"],
            **{f"workers_{w}_s": m[f"workers {w}"] for w in (0, 1, 2)},
            "command_vs_copy": m["workers 0"] / m["copy"],
            "best_vs_copy": best / m["copy"],
            "ceiling_vs_copy": (m["copy"] + m["floor"]) / m["copy"]}


def _bench_service() -> EncryptionService:
    return services()[1]


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child started by a big parent
# would report the parent's peak; VmHWM belongs to the new process's own address space.
_MEMORY_CHILD = """
import sys
sys.path.insert(0, {root!r})
from bench.bench_reencrypt import services
from engine.reencrypt import open_store, reencrypt

def peak_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

before = peak_kib()
report = reencrypt(open_store("sqlite:///" + {path!r}, "users", "id"), ["v"],
                   service=services()[1], batch_size={batch})
print(before, peak_kib(), report.reencrypted)
"""


def memory_case(small: int, batch: int, work: Path) -> dict[str, Any]:
    """Peak RSS of a process that runs the job on ``small`` and on 4 x ``small`` rows."""
    old, _ = services()
    peaks = {}
    for n in (small, 4 * small):
        path = str(work / f"memory-{n}.db")
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, v TEXT)")
        for a, b in chunks(n):
            conn.executemany("INSERT INTO users VALUES (?, ?)",
                             zip(range(a, b), tokens(b - a, old, seed=a)))
            conn.commit()
        conn.close()
        code = _MEMORY_CHILD.format(root=str(Path(__file__).resolve().parents[1]), path=path,
                                    batch=batch)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout.split()
        before, peak, moved = (int(x) for x in out)
        assert moved == n
        peaks[str(n)] = {"after_imports_kib": before, "peak_kib": peak}
        os.unlink(path)
    a, b = peaks[str(small)]["peak_kib"], peaks[str(4 * small)]["peak_kib"]
    return {"rows": [small, 4 * small], "peaks": peaks, "ratio": b / a}


# ---------------------------------------------------------------- report


def table(report: dict[str, Any]) -> str:
    lines = [f"engine re-encryption, {report['backend']}, batches of {report['batch']:,} rows; "
             "medians of interleaved rounds", "",
             "| case | engine | reference | ratio | goal |", "| --- | --- | --- | --- | --- |"]
    for case in report["jobs"]:
        s, n = case["store"], case["rows"]
        lines.append(f"| {s}, {n:,} rows: job vs plain copy job | {case['engine_s']:.2f} s | "
                     f"copy {case['copy_s']:.2f} s | {case['engine_vs_copy']:.2f}x | <= 1.5x: "
                     f"{'met' if case['engine_vs_copy'] <= 1.5 else '**not met**'} |")
        lines.append(f"| {s}, {n:,} rows: job vs loop (cryptography per row, executemany) | "
                     f"{case['engine_s']:.2f} s | loop {case['loop_s']:.2f} s | "
                     f"{case['loop_vs_engine']:.1f}x | >= 10x: "
                     f"{'met' if case['loop_vs_engine'] >= 10 else '**not met**'} |")
        lines.append(f"| ceiling: the copy job vs the loop, same I/O | {case['copy_s']:.2f} s | "
                     f"loop {case['loop_s']:.2f} s | {case['copy_vs_loop_ceiling']:.1f}x | — |")
    p = report.get("parquet")
    if p:
        lines.append(f"| Parquet, {p['files']} files, {p['rows']:,} rows: 2 workers vs 1 | "
                     f"{p['two_workers_s']:.2f} s | 1 worker {p['one_worker_s']:.2f} s | "
                     f"{p['two_vs_one']:.2f}x | >= 1.7x: "
                     f"{'met' if p['two_vs_one'] >= 1.7 else '**not met**'} |")
        lines.append(f"| ceiling: this machine, 2 processes vs 1 (pure Python) | — | — | "
                     f"{p['machine_two_process_ceiling']:.2f}x | — |")
    c = report.get("command")
    if c:
        lines.append(f"| the command, SQLite, {c['rows']:,} rows, whole processes: "
                     f"`crypto-engine reencrypt` vs the copy job | {c['workers_0_s']:.2f} s | "
                     f"copy {c['copy_s']:.2f} s | {c['command_vs_copy']:.2f}x | <= 1.5x: "
                     f"{'met' if c['command_vs_copy'] <= 1.5 else '**not met**'} |")
        for w in (1, 2):
            lines.append(f"| the command with --workers {w} vs --workers 0 | "
                         f"{c[f'workers_{w}_s']:.2f} s | {c['workers_0_s']:.2f} s | "
                         f"{c[f'workers_{w}_s'] / c['workers_0_s']:.2f}x | — |")
        lines.append(f"| ceiling: the copy plus loading what the command must load "
                     f"({c['startup_floor_s']:.2f} s) | — | copy {c['copy_s']:.2f} s | "
                     f"{c['ceiling_vs_copy']:.2f}x | — |")
    m = report.get("memory")
    if m:
        a, b = m["rows"]
        pa_, pb = m["peaks"][str(a)]["peak_kib"], m["peaks"][str(b)]["peak_kib"]
        lines.append(f"| peak RSS, SQLite job, {b:,} vs {a:,} rows | {pb / 1024:.0f} MiB | "
                     f"{pa_ / 1024:.0f} MiB | {m['ratio']:.3f}x | within 10 %: "
                     f"{'met' if abs(m['ratio'] - 1) <= 0.10 else '**not met**'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50,000 rows (smoke test)")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--postgres-url", default=None,
                        help="an existing database (default: a throwaway server)")
    parser.add_argument("--skip", action="append", default=[],
                        choices=["sqlite", "postgres", "parquet", "memory", "command"])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    n = args.rows or (50_000 if args.quick else 1_000_000)
    rounds = args.rounds or (1 if args.quick else 3)
    info = backend_info()
    report: dict[str, Any] = {"backend": f"{info['backend']} {info['version']}",
                              "batch": args.batch, "jobs": []}
    with tempfile.TemporaryDirectory(prefix="bench-reencrypt-") as tmp:
        work = Path(tmp)
        if "sqlite" not in args.skip:
            (work / "sqlite").mkdir()
            report["jobs"].append(sqlite_case(n, rounds, args.batch, work / "sqlite"))
        if "postgres" not in args.skip:
            report["jobs"].append(postgres_case(n, rounds, args.batch, args.postgres_url))
        if "parquet" not in args.skip:
            (work / "parquet").mkdir()
            files = 4 if args.quick else 8
            report["parquet"] = parquet_case(files, max(n // 4, 1000), rounds, args.batch,
                                             work / "parquet")
        if "command" not in args.skip:
            (work / "command").mkdir()
            report["command"] = command_case(n if not args.quick else 50_000, rounds,
                                             args.batch, work / "command")
        if "memory" not in args.skip:
            (work / "memory").mkdir()
            report["memory"] = memory_case(n if not args.quick else 100_000, args.batch,
                                           work / "memory")
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
