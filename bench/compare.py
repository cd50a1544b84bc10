"""Side-by-side comparison: engine vs cryptography vs pycryptodome vs the native C driver vs memcpy.

Every figure of one table comes from the same run; contenders are timed in interleaved rounds and
each figure is the median of its rounds, so the ratios hold even on a noisy machine. Nothing here
asserts a timing: the goals are printed beside the ratios.

    python -m bench.compare                 # the full table (about a minute)
    python -m bench.compare --quick         # small sizes, a smoke test for CI
    python -m bench.compare --json out.json --chart out.png
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

import engine


@dataclass
class Row:
    name: str
    unit: str  # "GB/s" or "M rec/s" or "M calls/s"
    figures: dict[str, float] = field(default_factory=dict)
    goals: list[tuple[str, str, float]] = field(default_factory=list)  # (ours, theirs, min ratio)
    # (a, b): ratios that bound a goal, e.g. what the library reaches from C with no Python
    ceilings: list[tuple[str, str]] = field(default_factory=list)

    def ratio(self, a: str, b: str) -> float | None:
        if a in self.figures and b in self.figures and self.figures[b] > 0:
            return self.figures[a] / self.figures[b]
        return None


def interleaved(contenders: dict[str, Callable[[], object]], work: float, rounds: int) -> dict[str, float]:
    """Median throughput (work units per second) of each contender over interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():
        fn()  # warm up: page in buffers, build key schedules
    for _ in range(rounds):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: work / statistics.median(ts) for name, ts in times.items()}


@functools.cache
def c_driver() -> str | None:
    """Path of the C benchmark driver engine-cbench, built from this checkout into build/cbench.

    A developer tool, so no wheel installs it: cmake builds it on first use in a process and again
    after a C file changed (a no-op otherwise), against the same system libraries as the developer
    install. ``$ENGINE_CBENCH`` names another driver. None outside a checkout or without cmake.
    """
    if os.environ.get("ENGINE_CBENCH"):
        return os.environ["ENGINE_CBENCH"]
    root = pathlib.Path(__file__).resolve().parents[1]
    if not (root / "CMakeLists.txt").exists() or shutil.which("cmake") is None:
        return None
    build = root / "build" / "cbench"
    for step in (
        ["-S", root, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DENGINE_BUILD_PYTHON=OFF", "-DBUILD_TESTING=OFF"],
        ["--build", build, "--target", "engine-cbench"],
    ):
        subprocess.run(["cmake", *map(str, step)], check=True, stdout=subprocess.DEVNULL)
    return str(build / "engine-cbench")


def run_c(size: int, count: int, threads: int, backend: str, repeats: int, nonce: int = 16) -> float | None:
    """Records per second of the C driver sealing count records of size bytes."""
    exe = c_driver()
    if exe is None:
        return None
    out = subprocess.run(
        [exe, str(size), str(count), str(threads), backend, str(repeats), str(nonce)],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)["records_per_s"]


def repeat(fn: Callable[[], object], times: int) -> Callable[[], None]:
    """Calls fn `times` times, dropping each result as a consumer would (no pile-up of outputs)."""

    def run() -> None:
        for _ in range(times):
            fn()

    return run


def crypto_loop(aesgcm, values: list[bytes], nonces: list[bytes]) -> Callable[[], object]:
    enc = aesgcm.encrypt
    return lambda: [enc(n, v, None) for n, v in zip(nonces, values)]


def measure(quick: bool, backend: str) -> tuple[list[Row], dict]:
    from Crypto.Cipher import AES
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    rounds = 3 if quick else 9
    key = engine.AesGcm.generate_key()
    ours = engine.AesGcm(key, backend=backend)
    theirs = AESGCM(key)
    nonce = os.urandom(16)
    rows: list[Row] = []
    threads = engine.backend_info()["threads"]

    # 1. One 1 MiB message, one thread.
    size = 1 << 20
    big = os.urandom(size)
    dst = np.empty(size, np.uint8)
    src = np.frombuffer(big, np.uint8)

    def dome_big():
        c = AES.new(key, AES.MODE_GCM, nonce=nonce)
        return c.encrypt_and_digest(big)

    reps = 20
    row = Row("1 MiB message, 1 thread", "GB/s")
    row.figures = interleaved(
        {
            "engine": repeat(lambda: ours.encrypt(nonce, big), reps),
            "cryptography": repeat(lambda: theirs.encrypt(nonce, big, None), reps),
            "pycryptodome": repeat(dome_big, 2),
            "memcpy": repeat(lambda: np.copyto(dst, src), reps),
        },
        size * reps / 1e9,
        rounds,
    )
    row.figures["pycryptodome"] /= reps / 2
    c = run_c(size, 1, 1, backend, 21)
    if c:
        row.figures["C driver"] = c * size / 1e9
    row.goals = [("engine", "cryptography", 1.25), ("engine", "C driver", 0.9)]
    row.ceilings = [("C driver", "cryptography")]
    rows.append(row)

    # 2. 1 MiB records in a batch: all threads vs one, and cryptography on a thread pool.
    count = 8 if quick else 32
    batch = engine.Batch(np.frombuffer(os.urandom(size * count), np.uint8),
                         np.arange(count + 1, dtype=np.int64) * size)
    out = np.empty(size * count, np.uint8)
    pieces = [bytes(batch[i]) for i in range(count)]
    pool = ThreadPoolExecutor(threads)
    row = Row(f"1 MiB records x {count}, batch", "GB/s")
    row.figures = interleaved(
        {
            "engine 1 thread": lambda: ours.seal_batch_into(batch, out, threads=1),
            f"engine {threads} threads": lambda: ours.seal_batch_into(batch, out, threads=threads),
            "cryptography 1 thread": lambda: [len(theirs.encrypt(nonce, p, None)) for p in pieces],
            f"cryptography pool {threads}": lambda: list(
                pool.map(lambda p: len(theirs.encrypt(nonce, p, None)), pieces)
            ),
        },
        size * count / 1e9,
        rounds,
    )
    for t in (1, threads):
        c = run_c(size, count, t, backend, 11)
        if c:
            row.figures[f"C driver {t} thread{'s' if t > 1 else ''}"] = c * size / 1e9
    row.goals = [(f"engine {threads} threads", "engine 1 thread", 1.7)]
    row.ceilings = [(f"C driver {threads} threads", "C driver 1 thread")]
    rows.append(row)
    pool.shutdown()

    # 2b. A Python list of 1 MiB records in and out, as a user with big objects has them.
    listed = [os.urandom(size) for _ in range(count)]
    list_nonces = [os.urandom(16) for _ in range(count)]
    sealed_list = ours.seal_batch(listed)
    their_cts = [theirs.encrypt(nn, p, None) for nn, p in zip(list_nonces, listed)]
    row = Row(f"list of 1 MiB records x {count}", "GB/s")
    row.figures = interleaved(
        {
            "engine seal_batch(list)": lambda: ours.seal_batch(listed),
            "engine seal_batch(list), 1 thread": lambda: ours.seal_batch(listed, threads=1),
            "cryptography encrypt loop": crypto_loop(theirs, listed, list_nonces),
            "engine open_list": lambda: ours.open_list(sealed_list),
            "engine open_batch().to_list()": lambda: ours.open_batch(sealed_list).to_list(),
            "cryptography decrypt loop": lambda: [theirs.decrypt(nn, ct, None)
                                                  for nn, ct in zip(list_nonces, their_cts)],
        },
        size * count / 1e9,
        rounds,
    )
    row.goals = [("engine seal_batch(list)", "cryptography encrypt loop", 1.1),
                 ("engine seal_batch(list)", "engine seal_batch(list), 1 thread", 1.0),
                 ("engine open_list", "cryptography decrypt loop", 1.0)]
    rows.append(row)

    # 3. 64-byte records: packed batch, Python list, and cryptography's per-call loop.
    n = 100_000 if quick else 1_000_000
    small = [os.urandom(64) for _ in range(n)]
    packed = engine.Batch.from_list(small)
    nonces = [os.urandom(16) for _ in range(n)]
    row = Row(f"64 B records x {n:,}", "M rec/s")
    row.figures = interleaved(
        {
            "engine packed Batch": lambda: ours.seal_batch(packed, threads=1),
            f"engine packed Batch {threads} threads": lambda: ours.seal_batch(packed, threads=threads),
            "engine from list": lambda: ours.seal_batch(engine.Batch.from_list(small), threads=1),
            "cryptography loop": crypto_loop(theirs, small, nonces),
        },
        n / 1e6,
        max(3, rounds // 2),
    )
    c = run_c(64, n, 1, backend, 11)
    if c:
        row.figures["C driver"] = c / 1e6
    dome_n = 5_000 if quick else 20_000

    def dome_loop():
        for v, nn in zip(small[:dome_n], nonces):
            AES.new(key, AES.MODE_GCM, nonce=nn).encrypt_and_digest(v)

    row.figures["pycryptodome loop"] = interleaved({"d": dome_loop}, dome_n / 1e6, 3)["d"]
    row.goals = [
        (f"engine packed Batch {threads} threads", "cryptography loop", 10.0),
        ("engine packed Batch", "C driver", 0.7),
        ("engine from list", "cryptography loop", 4.0),
    ]
    rows.append(row)

    # 4. One call on 64 bytes.
    calls = 20_000 if quick else 200_000
    msg = os.urandom(64)
    enc_ours, enc_theirs = ours.encrypt, theirs.encrypt
    row = Row("single call encrypt, 64 B", "M calls/s")
    row.figures = interleaved(
        {
            "engine": repeat(lambda: enc_ours(nonce, msg), calls),
            "cryptography": repeat(lambda: enc_theirs(nonce, msg, None), calls),
        },
        calls / 1e6,
        rounds,
    )
    row.goals = [("engine", "cryptography", 1.0)]
    rows.append(row)

    rows += xaes_rows(quick, backend, key, rounds, threads, small, packed)
    memory = in_place_peak(64 << 20 if quick else 1 << 30)
    return rows, memory


def xaes_by_hand(key: bytes) -> Callable[[bytes, bytes], bytes]:
    """XAES-256-GCM written with cryptography, as a user would without the engine: the subkey
    once per key, one reused AES-ECB context for the derivation, then AESGCM per message."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    k1 = int.from_bytes(ecb.update(bytes(16)), "big") << 1
    k1 = (k1 ^ 0x87 if k1 >> 128 else k1) & ((1 << 128) - 1)
    pads = [int.from_bytes(prefix + bytes(12), "big") ^ k1 for prefix in (b"\0\1X\0", b"\0\2X\0")]

    def seal(nonce: bytes, data: bytes) -> bytes:
        n = int.from_bytes(nonce[:12], "big")
        blocks = b"".join(((p ^ n).to_bytes(16, "big")) for p in pads)
        return AESGCM(ecb.update(blocks)).encrypt(nonce[12:], data, None)

    return seal


def xaes_rows(quick: bool, backend: str, key: bytes, rounds: int, threads: int,
              small: list[bytes], packed: engine.Batch) -> list[Row]:
    """XAES-256-GCM against AES-256-GCM on the same batches, and against a cryptography loop."""
    aes = engine.AesGcm(key, backend=backend)
    xaes = engine.XAesGcm(key, backend=backend)
    n = len(small)
    row = Row(f"XAES-256-GCM, 64 B records x {n:,}", "M rec/s")
    row.figures = interleaved(
        {
            f"engine XAES Batch {threads} threads": lambda: xaes.seal_batch(packed, threads=threads),
            f"engine AES-GCM Batch {threads} threads": lambda: aes.seal_batch(packed, threads=threads),
            "engine XAES Batch 1 thread": lambda: xaes.seal_batch(packed, threads=1),
            "engine AES-GCM Batch 1 thread": lambda: aes.seal_batch(packed, threads=1),
        },
        n / 1e6,
        max(3, rounds // 2),
    )
    by_hand = xaes_by_hand(key)
    loop_n = 5_000 if quick else 50_000
    nonces = [os.urandom(24) for _ in range(loop_n)]
    row.figures["cryptography XAES loop"] = interleaved(
        {"loop": lambda: [by_hand(nn, v) for nn, v in zip(nonces, small)]}, loop_n / 1e6, 3)["loop"]
    row.goals = [
        (f"engine XAES Batch {threads} threads", f"engine AES-GCM Batch {threads} threads", 0.6),
        ("engine XAES Batch 1 thread", "engine AES-GCM Batch 1 thread", 0.6),
        (f"engine XAES Batch {threads} threads", "cryptography XAES loop", 8.0),
    ]
    rows = [row]

    size, count = 1 << 20, 8 if quick else 32
    batch = engine.Batch(np.frombuffer(os.urandom(size * count), np.uint8),
                         np.arange(count + 1, dtype=np.int64) * size)
    out = np.empty(size * count, np.uint8)
    row = Row(f"XAES-256-GCM, 1 MiB records x {count}", "GB/s")
    row.figures = interleaved(
        {
            f"engine XAES {threads} threads": lambda: xaes.seal_batch_into(batch, out, threads=threads),
            f"engine AES-GCM {threads} threads": lambda: aes.seal_batch_into(batch, out, threads=threads),
        },
        size * count / 1e9,
        rounds,
    )
    row.goals = [(f"engine XAES {threads} threads", f"engine AES-GCM {threads} threads", 0.95)]
    rows.append(row)
    return rows


IN_PLACE = r"""
import json, resource, sys, numpy as np, engine
n = int(sys.argv[1])
buf = np.zeros(n, dtype=np.uint8); buf[::4096] = 1
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
a = engine.AesGcm(engine.AesGcm.generate_key())
a.seal_batch_into(engine.Batch(buf, np.arange(0, n + 1, 1 << 20, dtype=np.int64)), buf)
print(json.dumps({"bytes": n, "peak_extra_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base}))
"""


def in_place_peak(n: int) -> dict:
    """Extra peak RSS of sealing n bytes in place (measured in a fresh process)."""
    out = subprocess.run([sys.executable, "-c", IN_PLACE, str(n)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def render(rows: list[Row], memory: dict, info: dict) -> str:
    lines = [f"backend: {info['backend']} {info['version']} ({info['isa']}), {info['threads']} threads", ""]
    for row in rows:
        lines.append(f"{row.name} [{row.unit}]")
        best = max(row.figures.values())
        for name, value in row.figures.items():
            lines.append(f"  {name:<34} {value:10.3f}  {value / best:6.2f} of best")
        for a, b, goal in row.goals:
            r = row.ratio(a, b)
            status = "n/a" if r is None else ("met" if r >= goal else "NOT met")
            shown = "   -  " if r is None else f"{r:6.2f}x"
            lines.append(f"  ratio {a} / {b}: {shown} (goal >= {goal}x: {status})")
        for a, b in row.ceilings:
            r = row.ratio(a, b)
            if r is not None:
                lines.append(f"  ceiling {a} / {b}: {r:6.2f}x (the library from C, no Python)")
        lines.append("")
    lines.append(
        f"in-place seal of {memory['bytes'] / 2**20:.0f} MiB: peak extra memory "
        f"{memory['peak_extra_bytes'] / 2**20:.1f} MiB"
    )
    return "\n".join(lines)


def chart(rows: list[Row], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 3.2 * len(rows)))
    for ax, row in zip(axes, rows):
        names = list(row.figures)
        colours = ["#2b6cb0" if n.startswith("engine") else "#a0aec0" for n in names]
        ax.barh(names, [row.figures[n] for n in names], color=colours)
        ax.set_title(row.name)
        ax.set_xlabel(row.unit)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (a CI smoke test)")
    p.add_argument("--backend", default=None, help="ipsec-mb or openssl (default: $ENGINE_BACKEND or the fastest)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON ('-' for stdout)")
    p.add_argument("--chart", metavar="PATH", help="also draw a PNG chart")
    args = p.parse_args(argv)
    info = engine.backend_info(args.backend)
    rows, memory = measure(args.quick, info["backend"])
    print(render(rows, memory, info))
    if args.json:
        def ratios(r: Row) -> dict[str, float]:
            return {f"{a} / {b}": r.ratio(a, b) for a, b in [g[:2] for g in r.goals] + r.ceilings}

        doc = {"backend": info, "rows": [asdict(r) | {"ratios": ratios(r)} for r in rows], "in_place": memory}
        text = json.dumps(doc, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text)
    if args.chart:
        chart(rows, args.chart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
