"""Files, streams and table columns: the engine's chunked encryption (C2SP Cobblestone-256) against
the plain copy loop (the ceiling: the same reads and writes, no cryptography), `cat`, Tink's
StreamingAead, the AWS Encryption SDK and a pyca/cryptography incremental-GCM loop, side by side
in one run (contenders interleaved round by round, medians). Timings are reported, never asserted.

    python -m bench.bench_files            # 1 GiB file, 1M-row table, 4 GiB memory check
    python -m bench.bench_files --quick    # 64 MiB, 100k rows, 512 MiB (CI smoke test)
    python -m bench.bench_files --json

Page cache warm (the input is read once first); 2 threads is this machine's all. Every loop
reads as much at a time as the engine does (a window: 1 MiB), so the copy loop is the same reads
and writes without the cryptography. Beside each goal it prints what bounds it in this run: the
copy loop (the I/O alone), AES-GCM alone on in-memory windows on one thread and on two at once
(how much of a second core the machine gives right now), the rate a serial read->crypt->write
loop is bounded by (the two per-byte costs added), and the rate overlapping them allows.

File to file runs twice: into the working directory (``BENCH_DIR``, else the temporary
directory), where the disk's writeback makes one round of the copy loop up to 10x slower than
the next, and into /dev/shm when it has room, where writes stay in memory. Each engine case is
also given as the median of its ratios to the copy loop of the same round.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
from engine import EncryptionService, StaticKeyProvider, backend_info  # noqa: E402
from engine.stream import CHUNK_BYTES, FileEncryption, cobblestone  # noqa: E402

KEY = bytes(range(32))
BLOCK = cobblestone.WINDOW_CHUNKS * CHUNK_BYTES  # every loop reads as much at a time as the engine
AWS_MAX = 256 << 20  # the AWS SDK runs at ~0.25 GB/s: timed on at most this much


def copy_file(src: str, dst: str) -> None:
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    with open(src, "rb", buffering=0) as f, open(dst, "wb", buffering=0) as g:
        while n := f.readinto(buf):
            g.write(view[:n])


def engine_file_job(files: FileEncryption, encrypt: bool) -> Callable[[str, str], None]:
    def run(src: str, dst: str) -> None:
        with open(src, "rb", buffering=0) as f, open(dst, "wb", buffering=0) as g:
            (files.encrypt_stream if encrypt else files.decrypt_stream)(f, g)
    return run


def cryptography_file_job(encrypt: bool) -> Callable[[str, str], None] | None:
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    except ImportError:
        return None
    iv = bytes(12)

    def run(src: str, dst: str) -> None:
        buf = bytearray(BLOCK)
        out = bytearray(BLOCK + 15)
        size = os.path.getsize(src) - (0 if encrypt else 16)
        with open(src, "rb", buffering=0) as f, open(dst, "wb", buffering=0) as g:
            if encrypt:
                ctx = Cipher(algorithms.AES(KEY), modes.GCM(iv)).encryptor()
            else:
                f.seek(size)
                tag = f.read(16)
                f.seek(0)
                ctx = Cipher(algorithms.AES(KEY), modes.GCM(iv, tag)).decryptor()
            left = size
            while left:
                n = f.readinto(memoryview(buf)[:min(BLOCK, left)])
                left -= n
                k = ctx.update_into(memoryview(buf)[:n], out)
                g.write(memoryview(out)[:k])
            ctx.finalize()
            if encrypt:
                g.write(ctx.tag)
    return run


_TINK: list[Any] = []


def _tink(encrypt: bool) -> tuple[Callable[[str, str], None] | None, str | None]:
    try:
        import tink
        from tink import streaming_aead
    except ImportError as exc:
        return None, f"tink not installed ({exc})"
    if not _TINK:  # one keyset for both directions
        streaming_aead.register()
        handle = tink.new_keyset_handle(streaming_aead.streaming_aead_key_templates.AES256_GCM_HKDF_1MB)
        _TINK.append(handle.primitive(streaming_aead.StreamingAead))
    primitive = _TINK[0]

    def run(src: str, dst: str) -> None:
        buf = bytearray(BLOCK)
        with open(src, "rb", buffering=0) as f, open(dst, "wb", buffering=0) as g:
            if encrypt:
                with primitive.new_encrypting_stream(g, b"") as w:
                    while n := f.readinto(buf):
                        w.write(memoryview(buf)[:n])
            else:
                with primitive.new_decrypting_stream(f, b"") as r:
                    while part := r.read(BLOCK):
                        g.write(part)
    return run, None


def _aws(encrypt: bool) -> tuple[Callable[[str, str], None] | None, str | None]:
    try:
        import aws_encryption_sdk
        from aws_encryption_sdk.identifiers import CommitmentPolicy, EncryptionKeyType, WrappingAlgorithm
        from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
        from aws_encryption_sdk.key_providers.raw import RawMasterKeyProvider
    except ImportError as exc:
        return None, f"aws-encryption-sdk not installed ({exc})"

    class Provider(RawMasterKeyProvider):  # a raw AES-256 wrapping key: no network
        provider_id = "bench"

        def _get_raw_key(self, key_id):
            return WrappingKey(WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING, KEY,
                               EncryptionKeyType.SYMMETRIC)

    provider = Provider()
    provider.add_master_key(b"bench-key")
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)

    framing = {"frame_length": 1 << 20} if encrypt else {}

    def run(src: str, dst: str) -> None:
        with open(src, "rb") as f, open(dst, "wb") as g, \
                client.stream(mode="e" if encrypt else "d", source=f, key_provider=provider,
                              **framing) as s:
            for part in s:
                g.write(part)
    return run, None


def _time_rounds(cases: dict[str, Callable[[], Any]], rounds: int,
                 prepare: Callable[[], Any] | None = None) -> dict[str, float]:
    """Median seconds per case, the cases interleaved round by round; ``prepare`` runs untimed
    before each timing."""
    return {k: statistics.median(v) for k, v in _round_times(cases, rounds, prepare).items()}


def _round_times(cases: dict[str, Callable[[], Any]], rounds: int,
                 prepare: Callable[[], Any] | None = None) -> dict[str, list[float]]:
    """Each case's seconds in each round, the cases interleaved round by round."""
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            if prepare is not None:
                prepare()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def _tmpfs_dir(size: int) -> str | None:
    """/dev/shm when it can hold the input and an output of ``size`` bytes: files whose writes
    stay in memory, with no writeback to a disk to vary from round to round."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return "/dev/shm" if st.f_bavail * st.f_frsize > 3 * size else None


def _fresh(path: str) -> None:
    """Every run writes a new file from a clean page cache: overwriting the last run's output, or
    starting while its dirty pages are written back, would charge that run's writes to this one."""
    if os.path.exists(path):
        os.unlink(path)
    os.sync()


def files_case(size: int, rounds: int, workdir: str) -> dict[str, Any]:
    plain = os.path.join(workdir, "plain.bin")
    with open(plain, "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(size >> 20):
            f.write(block)
    copy_file(plain, os.devnull)  # warm the page cache
    service = EncryptionService(StaticKeyProvider({1: KEY}), metrics=False)
    files = FileEncryption(service, threads=2)
    one = FileEncryption(service, threads=1)
    sealed = {"engine": os.path.join(workdir, "engine.enc")}
    engine_file_job(files, True)(plain, sealed["engine"])
    peers: dict[str, tuple[Any, Any]] = {}
    missing: dict[str, str] = {}
    crypto = (cryptography_file_job(True), cryptography_file_job(False))
    if crypto[0] is not None:
        peers["cryptography GCM"] = crypto
    for name, make in (("tink StreamingAead", _tink), ("AWS Encryption SDK", _aws)):
        enc, why = make(True)
        if enc is None:
            missing[name] = why
        else:
            peers[name] = (enc, make(False)[0])
    small = plain
    if "AWS Encryption SDK" in peers and size > AWS_MAX:
        small = os.path.join(workdir, "small.bin")
        with open(plain, "rb") as f, open(small, "wb") as g:
            g.write(f.read(AWS_MAX))
    for name, (enc, _) in peers.items():
        sealed[name] = os.path.join(workdir, f"{name.split()[0]}.enc")
        enc(small if name == "AWS Encryption SDK" else plain, sealed[name])
    out = os.path.join(workdir, "out.bin")
    results: dict[str, Any] = {"bytes": size, "missing_peers": missing, "aws_bytes": os.path.getsize(small)}
    targets = [("file to file", out, plain, sealed["engine"]),
               ("file to /dev/null", os.devnull, plain, sealed["engine"])]
    with contextlib.ExitStack() as stack:
        shm = _tmpfs_dir(size)
        if shm is not None:  # the same files in memory: the disk's writeback left out
            in_memory = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-files-", dir=shm))
            shutil.copyfile(plain, os.path.join(in_memory, "plain.bin"))
            shutil.copyfile(sealed["engine"], os.path.join(in_memory, "engine.enc"))
            targets.insert(1, ("file to file, tmpfs", os.path.join(in_memory, "out.bin"),
                               os.path.join(in_memory, "plain.bin"), os.path.join(in_memory, "engine.enc")))
        for target_name, target, src, enc in targets:
            _time_target(results, target_name, target, src, enc, files, one, rounds, size)
    for target_name, target in (("file to file", out), ("file to /dev/null", os.devnull)):  # the peers
        prepare = None if target == os.devnull else lambda: _fresh(out)
        copy = {"copy loop": lambda t=target: copy_file(plain, t)}
        cases = dict(copy)
        for name, (enc, dec) in peers.items():
            src = small if name == "AWS Encryption SDK" else plain
            cases[f"{name} encrypt"] = lambda t=target, e=enc, s=src: e(s, t)
            cases[f"{name} decrypt"] = lambda t=target, d=dec, n=name: d(sealed[n], t)
        medians = _time_rounds(cases, rounds if "AWS Encryption SDK" not in peers else max(2, rounds - 2),
                               prepare)
        results[target_name + ", peers"] = {
            k: (results["aws_bytes"] if k.startswith("AWS") else size) / v / 1e9 for k, v in medians.items()}
    results["aes"] = aes_case(max(5, rounds * 3))
    return results


def _time_target(results: dict[str, Any], target_name: str, target: str, plain: str, sealed: str,
                 files: FileEncryption, one: FileEncryption, rounds: int, size: int) -> None:
    """The engine against the copy loop into ``target``, in rounds of their own (a peer's run,
    the AWS SDK's gigabytes of Python objects say, slowed whichever file write came next): the
    medians, each case's median ratio to the copy loop of its own round, and the copy loop's
    range over the rounds (how much the target itself varies)."""
    prepare = None if target == os.devnull else lambda: _fresh(target)
    cases: dict[str, Callable[[], Any]] = {
        "copy loop": lambda: copy_file(plain, target),
        "engine encrypt": lambda: engine_file_job(files, True)(plain, target),
        "engine decrypt": lambda: engine_file_job(files, False)(sealed, target),
        "engine encrypt, 1 thread": lambda: engine_file_job(one, True)(plain, target),
        "engine decrypt, 1 thread": lambda: engine_file_job(one, False)(sealed, target),
    }
    times = _round_times(cases, rounds, prepare)
    copy = times["copy loop"]
    results[target_name] = {k: size / statistics.median(v) / 1e9 for k, v in times.items()}
    results[target_name + ", round ratios"] = {
        k: statistics.median(c / t for c, t in zip(copy, v)) for k, v in times.items() if k != "copy loop"}
    results[target_name + ", copy loop range"] = [size / max(copy) / 1e9, size / min(copy) / 1e9]


def aes_case(rounds: int) -> dict[str, float]:
    """AES-GCM alone, as the engine runs it (windows of chunks, in cache), on one thread and on
    two threads at once (each its own window): the second figure over the first is how much of a
    second core this machine gives right now."""
    import threading

    aead = engine.AesGcm(KEY)
    base, repeat = bytes(12), 64  # 64 windows per timing: 64 MiB

    def seal() -> None:
        plain, out = bytearray(BLOCK), bytearray(BLOCK + BLOCK // CHUNK_BYTES * 16)
        for i in range(repeat):
            aead.seal_chunks_into(base, i * (BLOCK // CHUNK_BYTES), plain, out, threads=1)

    def two() -> None:
        helper = threading.Thread(target=seal)
        helper.start()
        seal()
        helper.join()

    medians = _time_rounds({"one": seal, "two": two}, rounds)
    return {"one thread GB/s": repeat * BLOCK / medians["one"] / 1e9,
            "two threads GB/s": 2 * repeat * BLOCK / medians["two"] / 1e9}


def pipe_case(size: int, rounds: int, workdir: str) -> dict[str, Any]:
    plain = os.path.join(workdir, "plain.bin")
    exe = [sys.executable, "-m", "engine"]
    env = {**os.environ, "ENCRYPTION_MASTER_KEY": "benchmark-master-key-not-a-secret-0123456789",
           "ENGINE_KEY_STATE_FILE": os.path.join(workdir, "keys.json"), "VAULT_ENABLED": "false",
           "ENCRYPTION_KDF_ITERATIONS": "1000"}
    # Start-up as an installed command has it: with the bytecode cache (pip writes it at install;
    # PYTHONDONTWRITEBYTECODE, set in some environments, would have every run compile the
    # engine's modules again). The warm-up run below writes it where it is missing.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    engine_cmd = " ".join(exe) + " encrypt - - > /dev/null"
    subprocess.run(f"{' '.join(exe)} encrypt - - < /dev/null > /dev/null", shell=True, check=True, env=env)
    cases = {
        "cat f > /dev/null": lambda: subprocess.run(f"cat {plain} > /dev/null", shell=True, check=True),
        "cat f | cat > /dev/null": lambda: subprocess.run(f"cat {plain} | cat > /dev/null", shell=True,
                                                          check=True),
        "cat f | crypto-engine encrypt - -": lambda: subprocess.run(
            f"cat {plain} | {engine_cmd}", shell=True, check=True, env=env),
    }
    startup = _time_rounds({"start": lambda: subprocess.run(
        f"{' '.join(exe)} encrypt - - < /dev/null > /dev/null", shell=True, check=True, env=env)},
        rounds)["start"]
    medians = _time_rounds(cases, rounds)
    return {"GB/s": {k: size / v / 1e9 for k, v in medians.items()}, "engine startup s": startup}


def loop_encrypt_columns(table: Any, names: list[str]) -> Any:
    """pyarrow and a cryptography loop producing the values and table that
    ``tables.encrypt_columns`` makes (the column format of docs/column-format.md, key version 1
    of ``KEY``, string columns)."""
    import pyarrow as pa
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from engine.columns import type_descriptor
    from engine.columns.format import column_aad

    enc, urandom = AESGCM(KEY).encrypt, os.urandom
    for name in names:
        descriptor = type_descriptor(table.schema.field(name).type)
        header = bytes([0xC0, 1, len(descriptor)]) + descriptor
        aad = column_aad(0, 1, name, descriptor)
        sealed = []
        for v in table.column(name).to_pylist():
            nonce = urandom(12)
            sealed.append(header + nonce + enc(nonce, v.encode(), aad))
        table = table.set_column(table.schema.get_field_index(name), name,
                                 pa.array(sealed, pa.large_binary()))
    return table


def table_case(rows: int, rounds: int) -> dict[str, Any]:
    import pyarrow as pa

    from bench.bench_service import make_values
    from engine import tables

    service = EncryptionService(StaticKeyProvider({1: KEY}), metrics=False)
    emails, ssns = make_values(rows, seed=1), [f"{i:03d}-{i % 97:02d}-{i % 9973:04d}" for i in range(rows)]
    table = pa.table({"id": pa.array(range(rows), pa.int64()), "email": emails, "ssn": ssns})

    medians = _time_rounds({"engine": lambda: tables.encrypt_columns(table, ["email", "ssn"], service=service),
                            "loop": lambda: loop_encrypt_columns(table, ["email", "ssn"])}, rounds)
    check = tables.decrypt_columns(loop_encrypt_columns(table, ["email", "ssn"]), ["email", "ssn"],
                                   service=service)
    return {"rows": rows, "engine s": medians["engine"], "loop s": medians["loop"],
            "ratio": medians["loop"] / medians["engine"],
            "same output": check.column("email").to_pylist() == emails}


# Peak RSS from /proc/self/status (VmHWM): getrusage's ru_maxrss survives fork and exec, so a
# child would report its parent's peak.
_RSS_CHILD = r"""
import io, os, sys

def peak_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
from engine import EncryptionService, StaticKeyProvider
from engine.stream import FileEncryption

class Zeros(io.RawIOBase):
    def __init__(self, n): self.left = n
    def readable(self): return True
    def readinto(self, b):
        k = min(len(b), self.left); self.left -= k; return k

files = FileEncryption(EncryptionService(StaticKeyProvider({1: bytes(32)}), metrics=False))
base = peak_kib()  # the interpreter with the engine imported
with open(os.devnull, "wb", buffering=0) as sink:
    files.encrypt_stream(Zeros(int(sys.argv[1])), sink)
print(base, peak_kib())
"""


def memory_case(size: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(size)], capture_output=True, text=True,
                         check=True, cwd=str(Path(__file__).resolve().parents[1]))
    base, peak = (int(x) for x in out.stdout.split())
    return {"bytes": size, "baseline MiB": base / 1024, "peak MiB": peak / 1024,
            "above baseline MiB": (peak - base) / 1024}


def report(r: dict[str, Any]) -> str:
    f = r["files"]
    lines = [f"backend {r['backend']['backend']} ({r['backend']['isa']}), {r['backend']['threads']} threads; "
             f"file {f['bytes'] / 2**20:.0f} MiB, page cache warm; medians of interleaved rounds"]
    aes = f["aes"]
    one, two = aes["one thread GB/s"], aes["two threads GB/s"]
    lines.append(f"AES-GCM alone (1 MiB windows in cache): {one:.2f} GB/s on one thread, {two:.2f} GB/s "
                 f"on two at once: the machine gives {two / one:.2f} cores' worth right now")
    for target in ("file to file", "file to file, tmpfs", "file to /dev/null"):
        if target not in f:
            continue
        rates, round_ratios = f[target], f[target + ", round ratios"]
        ceiling = rates["copy loop"]
        low, high = f[target + ", copy loop range"]
        lines.append(f"\n{target}: copy loop (the ceiling: the same reads and writes) {ceiling:.2f} GB/s "
                     f"(from {low:.2f} to {high:.2f} GB/s over the rounds)")
        for name, v in rates.items():
            if name != "copy loop":
                lines.append(f"  {name:34} {v:7.2f} GB/s  {v / ceiling:5.2f}x the copy loop, "
                             f"{round_ratios[name]:5.2f}x that of its round"
                             + ("  (goal >= 0.8x)" if name in ("engine encrypt", "engine decrypt") else ""))
        peer_rates = f.get(target + ", peers", {})
        base = peer_rates.get("copy loop")
        if len(peer_rates) > 1:
            lines.append(f"  peers, in rounds of their own (the copy loop there: {base:.2f} GB/s):")
            for name, v in peer_rates.items():
                if name != "copy loop":
                    lines.append(f"  {name:34} {v:7.2f} GB/s  {v / base:5.2f}x the copy loop")
        # A serial loop pays for the copy and for AES-GCM on every byte, one after the other;
        # overlapping them (the engine's helper threads) spreads both over the cores given.
        serial_one = 1 / (1 / ceiling + 1 / one)
        serial_two = 1 / (1 / ceiling + 1 / two)
        overlapped = min(ceiling, two, (two / one) * serial_one)
        lines.append(f"  ceilings: copy loop alone {ceiling:.2f} GB/s; AES-GCM alone {one:.2f} GB/s "
                     f"(1 thread), {two:.2f} GB/s (2 threads)")
        lines.append(f"  serial read->crypt->write bound: {serial_one:.2f} GB/s = "
                     f"{serial_one / ceiling:.2f}x (AES on 1 thread), {serial_two:.2f} GB/s = "
                     f"{serial_two / ceiling:.2f}x (AES on 2)")
        lines.append(f"  overlapped bound (copy + AES per byte over the {two / one:.2f} cores given): "
                     f"{overlapped:.2f} GB/s = {overlapped / ceiling:.2f}x")
    if f["missing_peers"]:
        lines.append("peers not installed: " + "; ".join(f"{k}: {v}" for k, v in f["missing_peers"].items()))
    if "AWS Encryption SDK encrypt" in f["file to file"]:
        lines.append(f"(the AWS SDK is timed on {f['aws_bytes'] >> 20} MiB)")
    p, startup = r["pipe"]["GB/s"], r["pipe"]["engine startup s"]
    cat, pipe, ours = (p["cat f > /dev/null"], p["cat f | cat > /dev/null"],
                       p["cat f | crypto-engine encrypt - -"])
    net = f["bytes"] / max(1e-9, f["bytes"] / ours / 1e9 - startup) / 1e9
    lines.append(f"\npipe: cat f > /dev/null {cat:.2f} GB/s; cat f | crypto-engine encrypt - - "
                 f"{ours:.2f} GB/s = {ours / cat:.2f}x cat (goal >= 0.7x)")
    lines.append(f"  ceilings: the pipe itself, cat f | cat, {pipe:.2f} GB/s = {pipe / cat:.2f}x cat; "
                 f"the engine is {ours / pipe:.2f}x that; without its start-up of {startup:.2f} s "
                 f"(interpreter, imports, key provider) {net:.2f} GB/s = {net / pipe:.2f}x cat | cat")
    t = r["table"]
    lines.append(f"\nencrypt-columns, {t['rows']:,} rows x 2 string columns: engine {t['engine s']:.3f} s, "
                 f"pyarrow + cryptography loop {t['loop s']:.3f} s: {t['ratio']:.1f}x (goal >= 5x); "
                 f"same tokens decrypt: {t['same output']}")
    m = r["memory"]
    lines.append(f"\nstreaming encrypt of {m['bytes'] / 2**30:.1f} GiB: peak RSS "
                 f"{m['above baseline MiB']:.1f} MiB above the baseline of {m['baseline MiB']:.0f} MiB "
                 f"(goal < 64 MiB)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    size = (64 if args.quick else 1024) << 20
    rounds = args.rounds or (3 if args.quick else 5)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as workdir:
        result = {"backend": backend_info(), "files": files_case(size, rounds, workdir),
                  "pipe": pipe_case(size, rounds, workdir)}
    result["table"] = table_case(100_000 if args.quick else 1_000_000, rounds)
    result["memory"] = memory_case((512 << 20) if args.quick else (4 << 30))
    print(json.dumps(result, indent=1) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
