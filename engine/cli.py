"""``crypto-engine``: the command line. It only parses arguments and prints; the work is done by
the library calls a user could make themselves.

Exit codes: 0 success, 1 a check failed (data did not round-trip, a rotation failed and was
rolled back, an audit log was tampered with, a file or column did not authenticate or is not an
engine file), 2 bad usage, 3 the backend or the configuration is not available (including a key
version the provider does not hold), 4 another key rotation is running, 5 a file could not be
read or written, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Sequence

import numpy as np

from . import AesGcm, Batch, BackendUnavailable, EngineError, InvalidArgument, backend_info

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_BACKEND, EXIT_BUSY = 0, 1, 2, 3, 4
EXIT_IO, EXIT_INTERRUPTED = 5, 130


def sample_records(count: int, min_size: int, max_size: int, seed: int = 0) -> Batch:
    """A reproducible sample data set: ``count`` random records of ``min_size..max_size`` bytes."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_size, max_size + 1, count, dtype=np.int64)
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = rng.integers(0, 256, int(offsets[-1]), dtype=np.uint8)
    return Batch(data, offsets)


class _Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done = total, label, 0
        self.live = sys.stderr.isatty()

    def step(self, what: str) -> None:
        self.done += 1
        if self.live:
            filled = 30 * self.done // self.total
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] "
                             f"{self.done}/{self.total} {what:<24}")
            sys.stderr.flush()
            if self.done == self.total:
                sys.stderr.write("\n")


def run_demo(count: int, min_size: int, max_size: int, backend: str | None,
             compare: bool = True) -> dict[str, Any]:
    """Seals and opens a generated data set under a fresh development key, and (when
    ``cryptography`` is installed) times cryptography's AESGCM on the same records."""
    progress = _Progress(6 if compare else 4, "demo")
    batch = sample_records(count, min_size, max_size)
    key = AesGcm.generate_key()
    aead = AesGcm(key, backend=backend)
    # Steady state, as a long-running pipeline sees it: one untimed round first (a fresh process
    # pays once for the kernel to provide the output memory), then the median of three.
    seal_times, open_times = [], []
    for round_ in range(4):
        t0 = time.perf_counter()
        sealed = aead.seal_batch(batch)
        t1 = time.perf_counter()
        opened = aead.open_batch(sealed)
        t2 = time.perf_counter()
        if round_:
            seal_times.append(t1 - t0)
            open_times.append(t2 - t1)
        progress.step(f"engine round {round_ + 1} of 4")
    seal_s, open_s = sorted(seal_times)[1], sorted(open_times)[1]
    result: dict[str, Any] = {
        "backend": backend_info(backend),
        "records": count,
        "bytes": batch.nbytes,
        "round_trip_ok": opened == batch,
        "engine": {"seal_records_per_s": count / seal_s, "open_records_per_s": count / open_s,
                   "seal_bytes_per_s": batch.nbytes / seal_s},
    }
    if compare:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            result["cryptography"] = None
        else:
            ref = AESGCM(key)
            values = batch.to_list()
            nonces = [n.tobytes() for n in sealed.nonces]
            loop_s = float("inf")
            for _ in range(2):  # the better of two rounds, like the engine's warm figure
                t0 = time.perf_counter()
                theirs = [ref.encrypt(n, v, None) for n, v in zip(nonces, values)]
                loop_s = min(loop_s, time.perf_counter() - t0)
                progress.step("cryptography loop")
            result["cryptography"] = {"seal_records_per_s": count / loop_s,
                                      "seal_bytes_per_s": batch.nbytes / loop_s}
            same = all(t[:-16] == bytes(sealed.ciphertexts[i]) and t[-16:] == sealed.tags[i].tobytes()
                       for i, t in enumerate(theirs))
            result["identical_to_cryptography"] = same
            result["speedup_vs_cryptography"] = (
                result["engine"]["seal_records_per_s"] / result["cryptography"]["seal_records_per_s"])
    return result


def _print_demo(r: dict[str, Any]) -> None:
    b = r["backend"]
    print(f"backend   {b['backend']} {b['version']} ({b['isa']}), {b['threads']} threads")
    print(f"data set  {r['records']:,} records, {r['bytes'] / 2**20:.1f} MiB, fresh random key "
          "(steady state: median of 3 rounds after a warm-up)")
    e = r["engine"]
    print(f"engine        seal {e['seal_records_per_s'] / 1e6:8.2f} M rec/s  "
          f"{e['seal_bytes_per_s'] / 1e9:6.2f} GB/s   open {e['open_records_per_s'] / 1e6:8.2f} M rec/s")
    c = r.get("cryptography")
    if c:
        print(f"cryptography  seal {c['seal_records_per_s'] / 1e6:8.2f} M rec/s  "
              f"{c['seal_bytes_per_s'] / 1e9:6.2f} GB/s   (a Python loop of AESGCM.encrypt)")
        print(f"speed-up      {r['speedup_vs_cryptography']:.1f}x; identical ciphertexts: "
              f"{'yes' if r['identical_to_cryptography'] else 'NO'}")
    print(f"round trip    {'ok' if r['round_trip_ok'] else 'FAILED'}")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def _audit_head(text: str) -> Any:
    from .audit import AuditHead

    try:
        return AuditHead.parse(text)
    except InvalidArgument as exc:
        problem = str(exc)
    raise argparse.ArgumentTypeError(problem)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crypto-engine", description="AES-256-GCM encryption engine")
    parser.add_argument("--backend", default=None, help="ipsec-mb or openssl (default: $ENGINE_BACKEND, else the fastest)")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="show the native backend in use")
    info.add_argument("--json", action="store_true", help="print JSON")
    demo = sub.add_parser("demo", help="encrypt and decrypt a generated data set and compare with cryptography")
    demo.add_argument("--records", type=int, default=1_000_000)
    demo.add_argument("--min-size", type=int, default=16)
    demo.add_argument("--max-size", type=int, default=256)
    demo.add_argument("--no-compare", action="store_true", help="skip the cryptography comparison")
    demo.add_argument("--json", action="store_true", help="print JSON")
    rotate = sub.add_parser("rotate", help="rotate the keys of the configured provider (see README)")
    rotate.add_argument("--if-needed", action="store_true",
                        help="rotate only when the interval or the usage limit says so")
    rotate.add_argument("--json", action="store_true", help="print JSON")
    sched = sub.add_parser("rotation-scheduler", help="check on an interval and rotate when needed")
    sched.add_argument("--check-every", type=_positive_seconds, default=3600.0, metavar="SECONDS")
    sched.add_argument("--max-checks", type=int, default=None, help="stop after this many checks")
    verify = sub.add_parser("audit-verify", help="check an audit log's HMAC chain")
    verify.add_argument("path")
    verify.add_argument("--expect-head", type=_audit_head, metavar="SEQ:MAC",
                        help="an entry the log must still hold: the head printed by an earlier run "
                             "and kept elsewhere")
    verify.add_argument("--json", action="store_true", help="print JSON")
    _add_data_commands(sub)
    args = parser.parse_args(argv)

    if args.command in _DATA_COMMANDS:
        return _data_commands(args)
    try:
        if args.command in ("rotate", "rotation-scheduler", "audit-verify"):
            return _key_commands(args)
        if args.command == "info":
            data = backend_info(args.backend)
            print(json.dumps(data) if args.json else "\n".join(f"{k:9} {v}" for k, v in data.items()))
            return EXIT_OK
        if args.records < 1 or not 0 <= args.min_size <= args.max_size:
            parser.error("need --records >= 1 and 0 <= --min-size <= --max-size")
        result = run_demo(args.records, args.min_size, args.max_size, args.backend, not args.no_compare)
    except BackendUnavailable as exc:
        print(f"crypto-engine: {exc}", file=sys.stderr)
        return EXIT_BACKEND
    except InvalidArgument as exc:
        print(f"crypto-engine: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result))
    else:
        _print_demo(result)
    ok = result["round_trip_ok"] and result.get("identical_to_cryptography", True)
    return EXIT_OK if ok else EXIT_CHECK_FAILED


def _key_commands(args: argparse.Namespace) -> int:
    from .rotation import RotationFailed, RotationInProgress, get_key_rotation_service
    from .service import get_encryption_service

    try:
        if args.command == "audit-verify":
            from .audit import verify

            result = verify(args.path, get_encryption_service().provider.audit_key(),
                            expect_head=args.expect_head)
            head = result.head
            report = {"ok": result.ok, "entries": result.entries,
                      "problems": [{"line": n, "reason": r} for n, r in result.problems],
                      "head": head and {"seq": head.seq, "mac": head.mac}}
            if args.json:
                print(json.dumps(report))
            else:
                print(f"{result.entries} entries: " + ("chain intact" if result.ok else
                      f"line {result.problems[0][0]}: {result.problems[0][1]}")
                      + (f"; {len(result.problems) - 1} more problem(s)"
                         if len(result.problems) > 1 else "")
                      + (f"\nhead {head}" if head else ""))
            return EXIT_OK if result.ok else EXIT_CHECK_FAILED
        service = get_key_rotation_service()
        if args.command == "rotation-scheduler":
            done = service.run_forever(args.check_every, max_checks=args.max_checks)
            print(f"rotations: {done}")
            return EXIT_OK
        reason = service.rotation_reason() if args.if_needed else "manual"
        if reason is None:
            report: dict[str, Any] = {"rotated": False, "reason": None}
        else:
            r = service.rotate_keys(reason=reason)
            report = {"rotated": True, "reason": reason, "previous_version": r.previous_version,
                      "new_version": r.new_version, "deprecated_versions": list(r.deprecated_versions)}
        print(json.dumps(report) if args.json else (
            f"rotated v{report['previous_version']} -> v{report['new_version']} ({reason})"
            if report["rotated"] else "no rotation needed"))
        return EXIT_OK
    except RotationInProgress as exc:
        print(f"crypto-engine: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except RotationFailed as exc:
        print(f"crypto-engine: {exc}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    except (EngineError, OSError) as exc:
        print(f"crypto-engine: {exc}", file=sys.stderr)
        return EXIT_BACKEND


# ---- files, streams and table columns (engine.stream, engine.tables) ---------------------------

_DATA_COMMANDS = ("encrypt", "decrypt", "encrypt-columns", "decrypt-columns")


def _add_data_commands(sub: Any) -> None:
    for name, what in (("encrypt", "encrypt a file or stream (C2SP chunked encryption)"),
                       ("decrypt", "decrypt a file or stream made by 'encrypt'")):
        cmd = sub.add_parser(name, help=what)
        cmd.add_argument("input", metavar="IN", help="a file, or - for stdin")
        cmd.add_argument("output", metavar="OUT", help="a file (written only once complete), or - for stdout")
        cmd.add_argument("--context", default="", metavar="TEXT",
                         help="bound into the file; decryption must give the same")
        cmd.add_argument("--fsync", action="store_true", help="flush OUT to disk before renaming it")
        cmd.add_argument("--json", action="store_true",
                         help="print a JSON report (on stderr when OUT is -)")
    for name, what in (("encrypt-columns", "encrypt columns of a Parquet or CSV file"),
                       ("decrypt-columns", "decrypt columns made by 'encrypt-columns'")):
        cmd = sub.add_parser(name, help=what)
        cmd.add_argument("input", metavar="IN", help="a .parquet or .csv file")
        cmd.add_argument("output", metavar="OUT", help="written only once complete")
        cmd.add_argument("--column", action="append", required=True, dest="columns",
                         help="a column to encrypt (repeat for several)")
        cmd.add_argument("--aad-template", default=None, metavar="TEMPLATE",
                         help="per-row associated data, e.g. 'users:{id}:{column}'")
        cmd.add_argument("--format", choices=("parquet", "csv"), default=None,
                         help="default: from IN's extension")
        cmd.add_argument("--json", action="store_true", help="print a JSON report")


def _data_commands(args: argparse.Namespace) -> int:
    from .errors import InvalidTag
    from .keys.base import UnknownKeyVersion
    from .stream import FileEncryption, NotAnEngineFile

    report_to = sys.stderr if getattr(args, "output", None) == "-" else sys.stdout
    exit_codes = (((InvalidTag, NotAnEngineFile), EXIT_CHECK_FAILED), (InvalidArgument, EXIT_USAGE),
                  (EngineError, EXIT_BACKEND), (OSError, EXIT_IO))
    error: BaseException | None = None
    try:
        if args.command in ("encrypt", "decrypt"):
            with _progress_bar(args.input) as bar:
                files = FileEncryption()
                run = files.encrypt_file if args.command == "encrypt" else files.decrypt_file
                result = run(args.input, args.output, args.context, progress=bar, fsync=args.fsync)
            report = result.to_dict()
        else:
            from .tables import decrypt_columns_file, encrypt_columns_file

            run = encrypt_columns_file if args.command == "encrypt-columns" else decrypt_columns_file
            report = run(args.input, args.output, args.columns, aad_template=args.aad_template,
                         file_format=args.format)
    except KeyboardInterrupt:
        print("crypto-engine: interrupted; no output file was left", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (EngineError, OSError) as exc:
        error = exc
    if error is not None:  # reported outside the except block: no chained context
        about_input = isinstance(error, (InvalidTag, NotAnEngineFile, UnknownKeyVersion))
        where = f"{args.input}: " if about_input else ""
        hint = (" (not held by the configured key provider)"
                if isinstance(error, UnknownKeyVersion) else "")
        print(f"crypto-engine: {where}{error}{hint}", file=sys.stderr)
        return next(code for types, code in exit_codes if isinstance(error, types))
    if args.json:
        print(json.dumps(report), file=report_to)
    elif report_to is sys.stdout:
        print(", ".join(f"{k} {v}" for k, v in report.items()))
    return EXIT_OK


class _progress_bar:
    """A tqdm progress bar in bytes on a terminal's stderr (sized from IN when it is a file);
    the callable that the library calls with each step."""

    def __init__(self, path: str) -> None:
        self._bar = None
        if sys.stderr.isatty():
            import os

            from tqdm import tqdm

            total = os.path.getsize(path) if path != "-" and os.path.isfile(path) else None
            self._bar = tqdm(total=total, unit="B", unit_scale=True, file=sys.stderr, leave=False)

    def __enter__(self) -> Any:
        return self._bar.update if self._bar is not None else None

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.close()


if __name__ == "__main__":
    sys.exit(main())
