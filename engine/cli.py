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
import errno
import json
import os
import sys
import time
from typing import Any, Sequence

from . import __version__
from .errors import BackendUnavailable, EngineError, InvalidArgument

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_BACKEND, EXIT_BUSY = 0, 1, 2, 3, 4
EXIT_IO, EXIT_INTERRUPTED = 5, 130


def sample_records(count: int, min_size: int, max_size: int, seed: int = 0) -> Any:
    """A reproducible sample data set: ``count`` random records of ``min_size..max_size`` bytes
    (a :class:`~engine.Batch`)."""
    import numpy as np

    from .batch import Batch

    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_size, max_size + 1, count, dtype=np.int64)
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = rng.integers(0, 256, int(offsets[-1]), dtype=np.uint8)
    return Batch(data, offsets)


class _Bar:
    """A tqdm progress bar on stderr when stderr is a terminal, nothing otherwise; the library
    calls :meth:`advance` (bytes or steps done since the last call) or :meth:`reach` (done out of
    total) with each step. Use it as a context manager so that the bar is closed."""

    def __init__(self, unit: str, *, total: int | None = None, desc: str | None = None) -> None:
        self._bar = None
        if sys.stderr is not None and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit=unit, unit_scale=unit == "B", desc=desc,
                             file=sys.stderr, dynamic_ncols=True)

    @property
    def live(self) -> bool:
        return self._bar is not None

    def advance(self, n: int = 1, what: str | None = None) -> None:
        if self._bar is not None:
            if what is not None:
                self._bar.set_postfix_str(what, refresh=False)
            self._bar.update(n)

    def reach(self, done: int, total: int | None) -> None:
        if self._bar is not None:
            if self._bar.total != total:  # shown at once, before the first step is through
                self._bar.total = total
                self._bar.refresh()
            self._bar.update(done - self._bar.n)

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.close()


def run_demo(count: int, min_size: int, max_size: int, backend: str | None,
             compare: bool = True) -> dict[str, Any]:
    """Seals and opens a generated data set under a fresh development key, and (when
    ``cryptography`` is installed) times cryptography's AESGCM on the same records."""
    with _Bar("step", total=6 if compare else 4, desc="demo") as progress:
        return _demo(progress, count, min_size, max_size, backend, compare)


def _demo(progress: "_Bar", count: int, min_size: int, max_size: int, backend: str | None,
          compare: bool) -> dict[str, Any]:
    from .aead import AesGcm, backend_info

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
        progress.advance(what=f"engine round {round_ + 1} of 4")
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
                progress.advance(what="cryptography loop")
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


class _HelpFormatter(argparse.HelpFormatter):
    """Help texts given as a function are computed when help is shown: the text of an option
    that needs a heavy module (numpy, say) costs nothing to a command that does not show it."""

    def _format_action(self, action: argparse.Action) -> str:
        if callable(action.help):
            action.help = action.help()
        return super()._format_action(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _epilog() -> str:
    from .env_vars import VARIABLES

    return ("environment: " + ", ".join(v.name for v in VARIABLES) + ". 'crypto-engine env' "
            "says what each means and its default (also docs/environment.md).")


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (every option has a help text; a test checks)."""
    parser = _Parser(prog="crypto-engine", description="AES-256-GCM encryption engine",
                     epilog=_epilog())
    parser.add_argument("--version", action="version", version=f"crypto-engine {__version__}",
                        help="print the version and exit")
    parser.add_argument(
        "--backend", default=None, help="ipsec-mb or openssl (default: $ENGINE_BACKEND, else the fastest)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help="show the native backend in use")
    info.add_argument("--json", action="store_true", help="print JSON")
    env = sub.add_parser("env", help="list the environment variables the engine reads",
                         description="every environment variable the engine reads: meaning "
                                     "and default")
    env.add_argument("--json", action="store_true", help="print JSON")
    env.add_argument("--markdown", action="store_true",
                     help="print docs/environment.md (the same table)")
    completion = sub.add_parser(
        "completion", help="print the shell's tab-completion hook",
        description="print the tab-completion hook for SHELL: eval \"$(crypto-engine "
                    "completion bash)\" in ~/.bashrc (argcomplete)")
    completion.add_argument("shell", choices=("bash", "zsh", "fish", "tcsh"),
                            help="the shell the hook is for")
    demo = sub.add_parser("demo", help="encrypt and decrypt a generated data set and compare with cryptography")
    demo.add_argument("--records", type=int, default=1_000_000, metavar="N",
                      help="records in the data set (default 1,000,000)")
    demo.add_argument("--min-size", type=int, default=16, metavar="BYTES",
                      help="smallest record (default 16)")
    demo.add_argument("--max-size", type=int, default=256, metavar="BYTES",
                      help="largest record (default 256)")
    demo.add_argument("--no-compare", action="store_true", help="skip the cryptography comparison")
    demo.add_argument("--json", action="store_true", help="print JSON")
    rotate = sub.add_parser("rotate", help="rotate the keys of the configured provider (see README)",
                            description="rotate the keys of the configured provider; exit 4, "
                                        "changing nothing, while another rotation runs")
    rotate.add_argument("--if-needed", action="store_true",
                        help="rotate only when the interval or the usage limit says so")
    rotate.add_argument("--json", action="store_true", help="print JSON")
    sched = sub.add_parser("rotation-scheduler", help="check on an interval and rotate when needed")
    sched.add_argument("--check-every", type=_positive_seconds, default=3600.0, metavar="SECONDS",
                       help="seconds between checks of the rotation policy (default 3600)")
    sched.add_argument("--max-checks", type=int, default=None, help="stop after this many checks")
    verify = sub.add_parser("audit-verify", help="check an audit log's HMAC chain")
    verify.add_argument("path", help="the audit log ($ENGINE_AUDIT_LOG)")
    verify.add_argument("--expect-head", type=_audit_head, metavar="SEQ:MAC",
                        help="an entry the log must still hold: the head printed by an earlier run "
                             "and kept elsewhere")
    verify.add_argument("--json", action="store_true", help="print JSON")
    _add_keys_commands(sub)
    _add_data_commands(sub)
    _add_reencryption_commands(sub)
    _add_pme_arguments(sub)
    _add_metrics_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ._interrupts import command_over

    try:
        code = _main(argv)
    except SystemExit:  # argparse: --help, --version, a usage error
        command_over(None)
        raise
    command_over(code)  # from here a Ctrl-C cannot change how the process ends
    return code


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    if argv is None and "_ARGCOMPLETE" in os.environ:  # the shell asks for completions
        import argcomplete

        argcomplete.autocomplete(parser)  # prints them and exits
    args = parser.parse_args(argv)
    try:
        return _with_metrics(args, lambda: _run(parser, args))
    except RuntimeError as exc:  # a Ctrl-C inside a class's creation comes out wrapped
        if not _caused_by_interrupt(exc):
            raise
        return _interrupted_before_work(args)


def _caused_by_interrupt(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the exceptions that led to ``exc`` (Python wraps one
    raised in ``__set_name__`` while a class is made, as during an import, in a RuntimeError)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def _env_command(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from . import env_vars

    if args.json:
        print(json.dumps([asdict(v) for v in env_vars.VARIABLES]))
    else:
        print(env_vars.markdown(), end="") if args.markdown else print(env_vars.text())
    return EXIT_OK


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "env":
        return _env_command(args)
    if args.command == "completion":
        import argcomplete

        print(argcomplete.shellcode(["crypto-engine"], shell=args.shell), end="")
        return EXIT_OK
    if args.command in _DATA_COMMANDS:
        pme = getattr(args, "pme", False)
        _check_columns_usage(parser, args)
        return _data_commands(args, _run_pme_command if pme else _run_data_command)
    from ._interrupts import command_started

    try:
        command_started()  # inside: a Ctrl-C from here on is this handler's
        if args.command in ("inventory", "reencrypt"):
            pme = getattr(args, "pme", False)
            return _pme_store_commands(args) if pme else _reencryption_commands(args)
        if args.command in ("rotate", "rotation-scheduler", "audit-verify"):
            return _key_commands(args)
        if args.command == "keys":
            return _keys_commands(args)
        if args.command == "info":
            from .aead import backend_info

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
    except KeyboardInterrupt:  # one that came before a command's own handler
        return _interrupted_before_work(args)
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
            from .audit import AuditLogUnreadable, verify

            try:
                result = verify(args.path, get_encryption_service().provider.audit_key(),
                                expect_head=args.expect_head)
            except AuditLogUnreadable as exc:
                unreadable: AuditLogUnreadable | None = exc
            except KeyboardInterrupt:
                _say("crypto-engine: interrupted")
                return EXIT_INTERRUPTED
            else:
                unreadable = None
            if unreadable is not None:
                _say(f"crypto-engine: {unreadable}")
                return EXIT_IO
            head = result.head
            verified = {"ok": result.ok, "entries": result.entries,
                      "problems": [{"line": n, "reason": r} for n, r in result.problems],
                      "head": head and {"seq": head.seq, "mac": head.mac},
                      "wrong_key": result.wrong_key}
            if args.json:
                print(json.dumps(verified))
            else:
                print(f"{result.entries} entries: " + ("chain intact" if result.ok else
                      f"line {result.problems[0][0]}: {result.problems[0][1]}")
                      + (f"; {len(result.problems) - 1} more problem(s)"
                         if len(result.problems) > 1 else "")
                      + (f"\nhead {head}" if head else ""))
            return EXIT_OK if result.ok else EXIT_CHECK_FAILED
        service = get_key_rotation_service()
        if args.command == "rotation-scheduler":
            return _rotation_scheduler(service, args)
        reason = service.rotation_reason() if args.if_needed else "manual"
        if reason is None:
            report: dict[str, Any] = {"rotated": False, "reason": None}
        else:
            r = service.rotate_keys(reason=reason, wait=False)  # busy: exit 4, never twice
            report = {"rotated": True, "reason": reason, "previous_version": r.previous_version,
                      "new_version": r.new_version, "deprecated_versions": list(r.deprecated_versions)}
        if args.json:
            print(json.dumps(report))
        elif not report["rotated"]:
            print("no rotation needed")
        elif report["previous_version"] is None:
            print(f"created the first key version, v{report['new_version']} (there was none)")
        else:
            print(f"rotated v{report['previous_version']} -> v{report['new_version']} ({reason})"
                  + "".join(f"; v{v} deprecated" for v in report["deprecated_versions"]))
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


def _rotation_scheduler(service: Any, args: argparse.Namespace) -> int:
    """Runs the scheduler until ``--max-checks`` or Ctrl-C: the first Ctrl-C lets a rotation
    in progress finish and stops at once otherwise; a second one stops it where it is."""
    import signal
    import threading

    stop = threading.Event()

    def on_sigint(_signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    done = None
    try:
        done = service.run_forever(args.check_every, stop=stop, max_checks=args.max_checks)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, previous)
    if stop.is_set():
        print("crypto-engine rotation-scheduler: interrupted"
              + (f" after {done} rotation(s)" if done is not None else " during a rotation"),
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"rotations: {done}")
    return EXIT_OK


# ---- keys: list, purge, rewrap ------------------------------------------------------------------

def _key_version(text: str) -> int:
    digits = text[1:] if text[:1] in ("v", "V") else text
    if not digits.isdigit() or int(digits) < 1:
        raise argparse.ArgumentTypeError("must be a key version: 3 or v3")
    return int(digits)


def _add_keys_commands(sub: Any) -> None:
    text = "list, purge and re-wrap the versions of the configured key provider"
    keys = sub.add_parser("keys", help=text, description=text)
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every version: state, algorithm, created, usage",
                                 description="every key version the provider holds: state, "
                                             "algorithm, creation time, encryptions recorded "
                                             "and the algorithm's limit; * marks the current")
    listing.add_argument("--json", action="store_true", help="print JSON")
    text = ("delete a deprecated version for good, once an inventory of the store finds no "
            "value under it (the inventory is taken with the options inventory takes)")
    purge = actions.add_parser("purge", help="delete a deprecated version for good",
                               description=text)
    purge.add_argument("version", type=_key_version, metavar="VERSION",
                       help="the version to delete (3 or v3)")
    purge.add_argument("--force", action="store_true",
                       help="purge although values are still found under it, or without "
                            "--store: they become unreadable; the audit trail records it")
    _add_job_arguments(purge, "purge", False)
    purge.add_argument("--json", action="store_true", help="print JSON")
    rewrap = actions.add_parser(
        "rewrap", help="rotate Vault's wrapping key and re-wrap the data keys inside Vault",
        description="rotate the Transit key that wraps the data keys and re-wrap every stored "
                    "data key with its new version, inside Vault (no data key leaves it, no "
                    "data is re-encrypted); an interrupted run is completed by the next")
    rewrap.add_argument("--set-min-decryption-version", action="store_true",
                        help="then make the Transit key refuse its older versions")
    rewrap.add_argument("--json", action="store_true", help="print JSON")


def _keys_commands(args: argparse.Namespace) -> int:
    from .keys import KeyLockBusy
    from .rotation import RotationInProgress, VersionStillInUse

    try:
        run = {"list": _keys_list, "purge": _keys_purge, "rewrap": _keys_rewrap}
        return run[args.keys_command](args)
    except VersionStillInUse as exc:
        _say(f"crypto-engine keys purge: refused: {exc}")
        return EXIT_CHECK_FAILED
    except InvalidArgument as exc:
        _say(f"crypto-engine keys {args.keys_command}: {exc}")
        return EXIT_USAGE
    except (RotationInProgress, KeyLockBusy) as exc:
        _say(f"crypto-engine keys {args.keys_command}: {exc}")
        return EXIT_BUSY
    except (EngineError, OSError) as exc:
        _say(f"crypto-engine keys {args.keys_command}: {exc}")
        return EXIT_BACKEND


def _keys_list(args: argparse.Namespace) -> int:
    from .keys.base import usage_limit
    from .service import get_encryption_service

    provider = get_encryption_service().provider
    current = provider.current_version if provider.list_versions() else None
    rows = [{"version": i.version, "state": i.state.value, "algorithm": i.algorithm,
             "created_at": i.created_at.isoformat(timespec="seconds"), "usage": provider.usage(i.version),
             "usage_limit": usage_limit(i.algorithm), "current": i.version == current}
            for i in provider.list_versions()]
    if args.json:
        print(json.dumps({"current_version": current, "versions": rows}))
        return EXIT_OK
    if not rows:
        print("no key version yet (crypto-engine rotate creates the first)")
        return EXIT_OK
    print(f"{'version':9} {'state':13} {'algorithm':13} {'created':25} usage")
    for r in rows:
        limit = f" of {r['usage_limit']:,}" if r["usage_limit"] else ""
        print(f"{'v' + str(r['version']) + (' *' if r['current'] else ''):9} {r['state']:13} "
              f"{r['algorithm']:13} {r['created_at']:25} {r['usage']:,}{limit}")
    return EXIT_OK


def _keys_purge(args: argparse.Namespace) -> int:
    from . import reencrypt as jobs
    from .rotation import get_key_rotation_service

    inventories = []
    if args.store:
        _hide_password(args.store)
        _check_job_arguments(args)
        columns = _reencryption_columns(args)
        with _Bar("rows", desc="inventory") as bar:
            inventories.append(jobs.inventory(
                jobs.open_store(args.store, args.table, args.key), columns,
                workers=args.workers, dask=args.dask, dask_timeout=args.dask_timeout,
                batch_size=args.batch_size, partitions=args.partitions,
                max_failures=args.max_failures, progress=bar.reach if bar.live else None))
    elif not args.force:
        raise InvalidArgument(f"name the store and columns that may hold values under "
                              f"v{args.version} (--store URL --column NAME ..., as for "
                              "inventory), or give --force to purge without looking")
    get_key_rotation_service().purge(args.version, inventory=inventories, force=args.force)
    still = {f"{s} {c}": n for inv in inventories
             for s, named in [(inv.store, inv.still_named(args.version))]
             for c, n in named.items()}
    if args.json:
        print(json.dumps({"purged": args.version, "forced": args.force,
                          "checked": [inv.store for inv in inventories],
                          "still_named": still}))
    else:
        print(f"purged v{args.version}" + (
            f" (forced: {sum(sum(n.values()) for n in still.values()):,} value(s) under it "
            "are unreadable now)" if still else " (forced, no store checked)" if args.force
            and not inventories else f"; no value under it in {inventories[0].store}"))
    return EXIT_OK


def _keys_rewrap(args: argparse.Namespace) -> int:
    from .service import get_encryption_service

    provider = get_encryption_service().provider
    rotate = getattr(provider, "rotate_wrapping_key", None)
    if rotate is None:
        raise InvalidArgument(f"keys rewrap is for keys held in Vault (VAULT_ENABLED=true); "
                              f"the {type(provider).__name__}'s keys are not wrapped by it")
    r = rotate(set_min_decryption_version=args.set_min_decryption_version)
    if args.json:
        print(json.dumps({"transit_version": r.transit_version, "rewrapped": list(r.rewrapped),
                          "min_decryption_version": r.min_decryption_version}))
    else:
        print(f"wrapping key at Transit v{r.transit_version}; re-wrapped "
              + (", ".join(f"v{v}" for v in r.rewrapped) or "nothing (all current)")
              + f"; Transit decrypts from v{r.min_decryption_version}")
    return EXIT_OK


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
        cmd.add_argument("input", metavar="IN", help="a .parquet or .csv file, or a dataset "
                                                     "directory (hive partitions included)")
        cmd.add_argument("output", metavar="OUT", help="written only once complete (for a "
                                                       "directory: one of the same layout)")
        cmd.add_argument("--workers", type=int, default=1, metavar="N",
                         help="a directory's files on up to N processes (the job may use "
                              "fewer); an interrupted run resumes")
        cmd.add_argument("--column", action="append", required=True, dest="columns",
                         help="a column to encrypt (repeat for several)")
        cmd.add_argument("--aad-template", default=None, metavar="TEMPLATE",
                         help="per-row associated data, e.g. 'users:{id}:{column}'")
        cmd.add_argument("--format", choices=("parquet", "csv"), default=None,
                         help="default: from the file's extension")
        cmd.add_argument("--delimiter", default=",", metavar="CHAR",
                         help="CSV: the field delimiter (default ,)")
        cmd.add_argument("--quote", default='"', metavar="CHAR",
                         help='CSV: the quote character (default ")')
        cmd.add_argument("--no-header", dest="header", action="store_false",
                         help="CSV: no header line (columns are f0, f1, ...; none is written)")
        if name == "encrypt-columns":
            _add_index_arguments(cmd, "TABLE", "the table the indexes' keys are derived for")
        cmd.add_argument("--json", action="store_true", help="print a JSON report")


def _index_help() -> str:
    from .blind_index import DEFAULT_EXPECTED_ROWS, NORMALIZERS, bits_for_rows

    return ("a blind index to write beside the encrypted values, e.g. "
            "email_idx=email:email or last_name+birth_year:text+digits:20 "
            f"(normalisers: {', '.join(NORMALIZERS)}; bits default "
            f"{bits_for_rows(DEFAULT_EXPECTED_ROWS)}); repeat for more")


def _add_index_arguments(cmd: Any, table_metavar: str, table_help: str) -> None:
    cmd.add_argument("--index", action="append", default=[], dest="indexes",
                     metavar="[NAME=]COLUMN[+COLUMN...][:NORMALIZER[+...]][:BITS]",
                     help=_index_help)  # computed when shown: it needs numpy
    cmd.add_argument("--index-table", metavar=table_metavar, help=table_help)


def _index_definitions(args: argparse.Namespace) -> list[Any]:
    from .blind_index import IndexDefinition

    table = args.index_table or getattr(args, "table", None)
    return [IndexDefinition.parse(text, table) for text in args.indexes]


def _data_commands(args: argparse.Namespace, run: Any) -> int:
    from ._interrupts import CommandInterrupts

    _load_data_commands(args.command)  # before Ctrl-C raises: imports are where it gets lost
    interrupts = CommandInterrupts()
    try:
        return run(args, interrupts)
    except KeyboardInterrupt:
        left = ("the output on stdout is incomplete" if getattr(args, "output", None) == "-"
                else "the files written stay; run it again to resume"
                if os.path.isdir(getattr(args, "input", "")) else "no output file was left")
        _say(f"crypto-engine: interrupted; {left}")
        return interrupts.interrupted(EXIT_INTERRUPTED)
    finally:
        interrupts.ignore()


def _load_data_commands(command: str) -> None:
    """Imports what a data command runs (while the command line starts, Ctrl-C ends the process
    cleanly; later, a KeyboardInterrupt raised inside an import can be swallowed)."""
    from . import stream, tables  # noqa: F401

    if command.endswith("-columns"):
        import pyarrow.csv  # noqa: F401
        import pyarrow.parquet  # noqa: F401

        from . import datasets  # noqa: F401


def _run_data_command(args: argparse.Namespace, interrupts: Any) -> int:
    from .errors import InvalidArgumentType, InvalidTag
    from .keys.base import UnknownKeyVersion
    from .stream import FileEncryption, NotAnEngineFile
    from .tables import ColumnValueError, TableFileInvalid

    report_to = sys.stderr if getattr(args, "output", None) == "-" else sys.stdout
    check_failed = (InvalidTag, NotAnEngineFile, ColumnValueError, TableFileInvalid)
    exit_codes = ((check_failed, EXIT_CHECK_FAILED), (InvalidArgument, EXIT_USAGE),
                  (InvalidArgumentType, EXIT_USAGE), (EngineError, EXIT_BACKEND),
                  (OSError, EXIT_IO))
    error: BaseException | None = None
    try:
        if args.command in ("encrypt", "decrypt"):
            size = (os.path.getsize(args.input)
                    if args.input != "-" and os.path.isfile(args.input) else None)
            with _Bar("B", total=size) as bar:
                files = FileEncryption()
                run = files.encrypt_file if args.command == "encrypt" else files.decrypt_file
                result = run(args.input, args.output, args.context,
                             progress=bar.advance if bar.live else None, fsync=args.fsync,
                             before_commit=interrupts.commit)
            report = result.to_dict()
        elif args.workers < 1:
            raise InvalidArgument("--workers must be at least 1")
        elif os.path.isdir(args.input):
            return _dataset_command(args, interrupts, exit_codes)
        else:
            from .tables import CsvDialect, decrypt_columns_file, encrypt_columns_file

            options: dict[str, Any] = ({"blind_indexes": _index_definitions(args)}
                                       if args.command == "encrypt-columns" else {})
            options["csv"] = CsvDialect(args.delimiter, args.quote, args.header)
            run_columns = (encrypt_columns_file if args.command == "encrypt-columns"
                           else decrypt_columns_file)
            report = run_columns(args.input, args.output, args.columns,
                                 aad_template=args.aad_template, file_format=args.format,
                                 before_commit=interrupts.commit, **options)
    except (EngineError, OSError) as exc:
        error = exc
    if error is not None:  # reported outside the except block: no chained context
        about_input = (isinstance(error, (InvalidTag, NotAnEngineFile, UnknownKeyVersion,
                                          ColumnValueError))
                       and not isinstance(error, TableFileInvalid))
        where = f"{args.input}: " if about_input else ""
        hint = (" (not held by the configured key provider)"
                if isinstance(error, UnknownKeyVersion) else "")
        _say(f"crypto-engine: {where}{error}{hint}")
        return next(code for types, code in exit_codes if isinstance(error, types))
    if args.json:
        return _report(json.dumps(report), report_to)
    if report_to is sys.stdout:
        return _report(", ".join(f"{k} {v}" for k, v in report.items()), report_to)
    return EXIT_OK


def _dataset_command(args: argparse.Namespace, interrupts: Any, exit_codes: Any) -> int:
    """encrypt-columns/decrypt-columns over a directory: every file, one progress bar over the
    rows, failures named per file with the rest done; the exit code is that of the first file
    that failed, in path order."""
    from .datasets import decrypt_dataset, encrypt_dataset

    options: dict[str, Any] = ({"blind_indexes": _index_definitions(args)}
                               if args.command == "encrypt-columns" else {})
    run = encrypt_dataset if args.command == "encrypt-columns" else decrypt_dataset
    with _Bar("rows", desc=args.command) as bar:
        report = run(args.input, args.output, args.columns, aad_template=args.aad_template,
                     file_format=args.format, workers=args.workers,
                     progress=lambda done, total: bar.reach(done, total), **options)
    interrupts.commit()  # the work is done: a Ctrl-C from now on changes nothing
    for failed in report.failed:
        where = "" if failed.path in str(failed.error) else f"{args.input}/{failed.path}: "
        _say(f"crypto-engine: {where}{failed.error}")
    code = next((code for f in report.failed[:1] for types, code in exit_codes
                 if isinstance(f.error, types)), EXIT_OK)
    summary = report.to_dict()
    if args.json:
        printed = _report(json.dumps(summary), sys.stdout)
    else:
        printed = _report(", ".join(f"{k} {v}" for k, v in summary["totals"].items()), sys.stdout)
    return code or printed


def _add_pme_arguments(sub: Any) -> None:
    """``--pme`` on the column commands: Parquet Modular Encryption under the engine's keys
    (docs/pme.md) instead of the per-value format. With it, ``--column`` is optional."""
    for name in ("encrypt-columns", "decrypt-columns"):
        cmd = sub.choices[name]
        cmd.add_argument("--pme", action="store_true",
                         help="Parquet Modular Encryption: a standard PME file that Spark, "
                              "DuckDB and pyarrow read (encrypt: the --column's under column "
                              "keys, or every column and the footer when none is named; "
                              "decrypt: the whole file)")
        if name == "encrypt-columns":
            cmd.add_argument("--plaintext-footer", action="store_true",
                             help="with --pme and --column: leave the footer readable "
                                  "(signed), so readers without keys see the other columns")
        cmd._option_string_actions["--column"].required = False  # checked by the command
    for name in ("inventory", "reencrypt"):
        sub.choices[name].add_argument(
            "--pme", action="store_true",
            help="the store's files are Parquet Modular Encryption files: count them per key "
                 "version from their key material (inventory), move them whole to the "
                 "current version (reencrypt); no --column")


def _check_columns_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The option combinations of the column commands that argparse cannot say (exit 2)."""
    if not args.command.endswith("-columns"):
        return
    if not args.pme:
        if not args.columns:
            parser.error(f"{args.command} needs --column (or --pme)")
        if getattr(args, "plaintext_footer", False):
            parser.error("--plaintext-footer goes with --pme")
        return
    from .columns import pme  # noqa: F401  (imported before Ctrl-C is taken over)

    options = (("--aad-template", args.aad_template), ("--format csv", args.format == "csv"),
               ("--index", getattr(args, "indexes", None)),
               ("--index-table", getattr(args, "index_table", None)),
               ("--column", args.command == "decrypt-columns" and args.columns),
               ("--workers", args.workers != 1),
               ("--delimiter", args.delimiter != ","), ("--quote", args.quote != '"'),
               ("--no-header", not args.header))
    refused = [option for option, given in options if given]
    if refused:  # PME has no per-row associated data, and decrypts whole files
        parser.error(f"{args.command} --pme does not take {', '.join(refused)}")
    if os.path.isdir(args.input):
        parser.error(f"{args.command} --pme takes one Parquet file, and {args.input} is a "
                     "directory")


def _run_pme_command(args: argparse.Namespace, interrupts: Any) -> int:
    from .columns.parquet_footer import ParquetFooterError
    from .columns.pme import PmeFileUnreadable, decrypt_parquet_file, encrypt_parquet_file
    from .errors import InvalidArgumentType, InvalidTag

    exit_codes = (((InvalidTag, ParquetFooterError, PmeFileUnreadable), EXIT_CHECK_FAILED),
                  ((InvalidArgument, InvalidArgumentType), EXIT_USAGE),
                  (EngineError, EXIT_BACKEND), (OSError, EXIT_IO))
    error: BaseException | None = None
    try:
        if args.command == "encrypt-columns":
            report = encrypt_parquet_file(args.input, args.output, columns=args.columns,
                                          plaintext_footer=args.plaintext_footer,
                                          before_commit=interrupts.commit)
        else:
            report = decrypt_parquet_file(args.input, args.output,
                                          before_commit=interrupts.commit)
    except (EngineError, OSError) as exc:
        error = exc
    if error is not None:  # reported outside the except block: no chained context
        where = "" if args.input in str(error) else f"{args.input}: "
        _say(f"crypto-engine: {where}{error}")
        return next(code for types, code in exit_codes if isinstance(error, types))
    if args.json:
        return _report(json.dumps(report), sys.stdout)
    return _report(", ".join(f"{k} {v}" for k, v in report.items()), sys.stdout)


def _pme_store_commands(args: argparse.Namespace) -> int:
    """inventory/reencrypt --pme: files per key version, files moved (docs/pme.md)."""
    from . import reencrypt as jobs
    from .keys import KeyProviderError
    from .service import ServiceConfigurationError

    given = [option for option, value in (
        ("--column", args.column), ("--sealed", args.sealed), ("--aad", args.aad),
        ("--table", args.table), ("--key", args.key), ("--index", getattr(args, "indexes", [])),
        ("--dask", args.dask), ("--workers", args.workers), ("--partitions", args.partitions))
        if value]
    try:
        if given:
            raise InvalidArgument(f"--pme moves whole files; it takes no {', '.join(given)}")
        store = jobs.PmeStore.from_url(args.store)
        with _Bar("files", desc=args.command) as bar:
            progress = bar.reach if bar.live else None
            if args.command == "inventory":
                report: Any = jobs.inventory_pme(store, progress=progress)
            else:
                report = jobs.reencrypt_pme(store, progress=progress)
    except InvalidArgument as exc:
        _say(f"crypto-engine {args.command}: {exc}")
        return EXIT_USAGE
    except OSError as exc:  # FileUnreadable too: a file or directory of the store
        _say(f"crypto-engine {args.command}: {exc}")
        return EXIT_IO
    except (EngineError, KeyProviderError, ServiceConfigurationError) as exc:
        _say(f"crypto-engine {args.command}: {exc}")
        return EXIT_BACKEND
    except jobs.ReencryptionInterrupted as stopped:
        if args.json:
            print(json.dumps(stopped.report.to_dict()))
        _say(f"crypto-engine {args.command}: interrupted after {stopped.report.reencrypted} "
             "file(s) moved; every file is either moved or as it was: run it again to resume")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        _say(f"crypto-engine {args.command}: interrupted")
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        versions = ", ".join(f"v{v}: {n}" for v, n in sorted(report.versions.items()))
        print(f"{report.store}: {report.files} files; by key version: {versions or 'none'}; "
              f"not PME {report.plain}, other master keys {report.foreign}, unreadable "
              f"{len(report.failures)}")
        for path, why in report.failures[:20]:
            print(f"  failed: {path}: {why}")
        if args.command == "reencrypt":
            print(f"target v{report.target_version}: re-encrypted {report.reencrypted}, already "
                  f"current {report.already_current}, changed meanwhile {report.changed}")
        else:
            print(f"current v{report.current_version}: " + (
                "every file is under it" if report.all_current() else
                "some files are not under it (crypto-engine reencrypt --pme moves them)"))
    return EXIT_CHECK_FAILED if report.failures else EXIT_OK


def _say(line: str) -> None:
    """One line on stderr; nothing when the process was started with stderr closed (print
    would then write to stdout, into the data) or its reader has gone."""
    if sys.stderr is not None:
        try:
            print(line, file=sys.stderr)
        except OSError:
            pass


def _report(text: str, to: Any) -> int:
    """Prints the report of a command whose work is done; a closed stdout (``| head -0``) is
    said in one line, exit 5, without the interpreter's complaint at exit."""
    try:
        if to is None:  # started with the descriptor closed
            raise OSError(errno.EBADF, "it is closed")
        print(text, file=to)
        to.flush()
    except OSError as exc:
        failure = exc.strerror or type(exc).__name__
    else:
        return EXIT_OK
    try:  # nothing more reaches it: the interpreter's flush at exit would fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, to.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
    _say(f"crypto-engine: the work is done, but its report could not be written: {failure}")
    return EXIT_IO


def _add_reencryption_commands(sub: Any) -> None:
    for name, text in (("inventory", "count the values of each column per key version, and "
                                     "those that cannot be read"),
                       ("reencrypt", "move every value of the columns to the current key "
                                     "version (resumable)")):
        _add_job_arguments(sub.add_parser(name, help=text, description=text), name, True)


def _add_job_arguments(p: Any, name: str, store_required: bool) -> None:
    """The options of a job over a store: inventory, reencrypt, and the inventory that
    ``keys purge`` takes before it deletes a version."""
    p.add_argument("--store", required=store_required, metavar="URL",
                   help="sqlite:///file.db, postgresql://user@host/db or "
                        "parquet:///path/to/dataset/. PostgreSQL takes its password as "
                        "psql does: from $PGPASSWORD or a password file ($PGPASSFILE, "
                        "~/.pgpass); one written in the URL works too, but other users "
                        "can read it in ps until the job starts, when it is blanked out")
    p.add_argument("--table", help="the table (SQL stores)")
    p.add_argument("--key", help="the table's primary key column (SQL stores)")
    p.add_argument("--column", action="append", default=[], metavar="NAME",
                   help="a column of tokens or JSON values (repeat for more)")
    p.add_argument("--sealed", action="append", default=[],
                   metavar="NAME[=NONCE,TAG,CIPHERTEXT,KEY_VERSION]",
                   help="a value stored in Parquet as SealedBatch.to_arrow()'s three "
                        "columns plus a key version (default names: "
                        "nonce,tag,ciphertext,key_version)")
    p.add_argument("--aad", action="append", default=[], metavar="[COLUMN=]RULE",
                   help="the AAD the values were sealed with: none, constant:TEXT, "
                        "template:TEXT (e.g. template:users:{id}:ssn) or "
                        "field-context[:ID_COLUMN] (FieldEncryption(bind_context=True)); "
                        "for every column, or COLUMN=RULE for one")
    if name == "reencrypt":
        _add_index_arguments(p, "TABLE", "the table the indexes' keys are derived for "
                                         "(default: --table)")
    p.add_argument("--batch-size", type=int, default=10_000, metavar="ROWS",
                   help="rows read together (and by reencrypt re-encrypted and committed "
                        "together; default 10,000); the progress bar moves once per batch")
    p.add_argument("--workers", type=int, default=0,
                   help="worker processes for the cryptography (0: this process)")
    p.add_argument("--dask", metavar="ADDRESS",
                   help="run the partitions on this Dask scheduler (tcp://host:8786)")
    p.add_argument("--dask-timeout", type=float, default=None, metavar="SECONDS",
                   help="how long to wait for the Dask scheduler (default 10)")
    p.add_argument("--partitions", type=int, default=None,
                   help="key ranges of a table (default: 1, or 2 per Dask thread)")
    p.add_argument("--max-failures", type=int, default=1000,
                   help="unreadable values listed by key (all are counted)")
    if name != "purge":
        p.add_argument("--json", action="store_true",
                       help="print JSON (also when Ctrl-C stops reencrypt: what was done)")


def _reencryption_columns(args: argparse.Namespace) -> list[Any]:
    from .reencrypt import AadRule, Column, SealedLayout

    names = list(args.column)
    sealed = {}
    for item in args.sealed:
        name, _, layout = item.partition("=")
        sealed[name] = SealedLayout.parse(layout) if layout else SealedLayout()
        names.append(name)
    if not names:
        raise InvalidArgument("name at least one --column (or --sealed)")
    default, rules = AadRule.none(), {}
    for item in args.aad:
        column, sep, rule = item.partition("=")
        if sep and column in names:
            rules[column] = AadRule.parse(rule)
        else:
            default = AadRule.parse(item)
    unknown = set(rules) - set(names)
    if unknown:
        raise InvalidArgument(f"--aad names a column that is not in the job: {sorted(unknown)}")
    return [Column(n, rules.get(n, default), sealed.get(n)) for n in names]


def _check_job_arguments(args: argparse.Namespace) -> None:
    """Refuses, naming the option, numbers a job cannot use (the library would name its
    parameter instead)."""
    for option, value, least in (("--batch-size", args.batch_size, 1),
                                 ("--workers", args.workers, 0),
                                 ("--max-failures", args.max_failures, 0),
                                 ("--partitions", args.partitions, 1)):
        if value is not None and value < least:
            raise InvalidArgument(f"{option} must be {'positive' if least else 'zero or more'}"
                                  f", not {value}")
    if args.dask_timeout is not None and not 0 < args.dask_timeout < float("inf"):
        raise InvalidArgument("--dask-timeout must be a positive number of seconds")


def _hide_password(url: str) -> bool:
    """Blanks the password of ``url`` where it is in this process's command line (what ps
    and /proc/PID/cmdline show other users). Returns False when it is there and could not
    be blanked (not Linux, or /proc/self/mem not writable)."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return True
    secrets = [parts.netloc.rpartition("@")[0].partition(":")[2]]
    secrets += [v for k, v in urllib.parse.parse_qsl(parts.query) if k == "password"]
    secrets = [s for s in secrets if s]
    if not secrets:
        return True
    raw = os.fsencode(url)
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end: proc(5)
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            cmdline = mem.read(end - start)
            blanked = cmdline
            at = blanked.find(raw)
            while at >= 0:
                text = raw
                for secret in secrets:
                    s = os.fsencode(secret)
                    text = text.replace(s, b"*" * len(s))
                blanked = blanked[:at] + text + blanked[at + len(raw):]
                at = blanked.find(raw, at + len(raw))
            if blanked == cmdline:
                return True  # not on the command line (main() given its arguments)
            mem.seek(start)
            mem.write(blanked)
    except (OSError, ValueError, IndexError):
        return False
    return True


def _print_counts(report: Any, moved: bool) -> None:
    print(f"{report.store}{' table ' + report.table if report.table else ''}: "
          f"{report.rows:,} rows in {report.duration_s:.2f} s ({report.rows_per_s:,.0f} rows/s)"
          + (f"; {report.resumed_rows:,} of them counted by the interrupted run(s) this one "
             "resumed" if getattr(report, "resumed_rows", 0) else ""))
    for name, c in report.columns.items():
        versions = ", ".join(f"v{v}: {n:,}" for v, n in sorted(c.versions.items())) or "none"
        missing = ", ".join(f"v{v}: {n:,}" for v, n in sorted(c.missing_versions.items()))
        print(f"  {name}: {c.values:,} values; readable, by key version: {versions}; "
              f"NULL {c.null:,}; unreadable {c.failed:,} (unknown key version "
              f"{c.unknown_key_version:,}{' - ' + missing if missing else ''}, malformed "
              f"{c.malformed:,}, failing authentication {c.invalid_tag:,})")
        if moved:
            print(f"    re-encrypted {c.reencrypted:,}, already current {c.current:,}, "
                  f"changed meanwhile (left for the next pass) {c.changed:,}"
                  + (f", left because a blind index cannot be computed {c.unindexable:,}"
                     if c.unindexable else ""))
    for f in report.failures[:20]:
        print(f"  failed: {f.column} key={f.key!r}: {f.reason}")
    if report.failures_total > 20:
        print(f"  ... {report.failures_total - 20:,} more failures (--json lists up to "
              "--max-failures)")


def _interrupted_before_work(args: argparse.Namespace) -> int:
    """Ctrl-C before a command did any work: one line and, for a job given --json, its report
    (nothing done)."""
    job = args.command in ("inventory", "reencrypt")
    if job and args.json:
        print(json.dumps({"store": args.store, "table": args.table, "interrupted": True,
                          "complete": False, "rows": 0, "columns": {}}))
    _say(f"crypto-engine {args.command}: interrupted"
         + (" before any row was read" if job else "")
         + ("; nothing was changed" if args.command == "reencrypt" else ""))
    return EXIT_INTERRUPTED


def _reencryption_commands(args: argparse.Namespace) -> int:
    from . import reencrypt as jobs
    from .keys import KeyProviderError
    from .service import ServiceConfigurationError

    if not _hide_password(args.store):
        print(f"crypto-engine {args.command}: warning: the --store URL's password could not be"
              " hidden from ps; give it in $PGPASSWORD or ~/.pgpass instead", file=sys.stderr)
    try:
        _check_job_arguments(args)
        columns = _reencryption_columns(args)
        store = jobs.open_store(args.store, args.table, args.key)
        run = jobs.inventory if args.command == "inventory" else jobs.reencrypt
        options: dict[str, Any] = ({"indexes": _index_definitions(args)}
                                   if args.command == "reencrypt" else {})
        with _Bar("rows", desc=args.command) as bar:
            report = run(store, columns, **options, workers=args.workers, dask=args.dask,
                         dask_timeout=args.dask_timeout, batch_size=args.batch_size,
                         partitions=args.partitions, max_failures=args.max_failures,
                         progress=bar.reach if bar.live else None)
    except InvalidArgument as exc:  # unknown store, missing table/column, plain text, ...
        print(f"crypto-engine {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except jobs.FileUnreadable as exc:  # a dataset file: not Parquet, permission denied, ...
        print(f"crypto-engine {args.command}: {exc}", file=sys.stderr)
        return EXIT_IO
    except (jobs.ReencryptionError, KeyProviderError, ServiceConfigurationError,
            BackendUnavailable) as exc:
        print(f"crypto-engine {args.command}: {exc}", file=sys.stderr)
        return EXIT_BACKEND
    except jobs.ReencryptionInterrupted as stopped:
        done = stopped.report
        if args.json:
            print(json.dumps({**done.to_dict(), "interrupted": True, "complete": False}))
        print(f"crypto-engine {args.command}: interrupted after {done.rows:,} of the table's "
              f"rows ({sum(c.failed for c in done.columns.values()):,} unreadable); " + (
                  "what was committed stays: run it again to resume"
                  if args.command == "reencrypt" else "an inventory changes nothing"),
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # before the job started its work
        return _interrupted_before_work(args)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        _print_counts(report, args.command == "reencrypt")
        if isinstance(report, jobs.ReencryptionReport):
            print(f"target v{report.target_version}: scanned {report.scanned:,}, re-encrypted "
                  f"{report.reencrypted:,}, already current {report.already_current:,}, "
                  f"failed {report.failed:,}, changed meanwhile {report.changed:,}")
        else:
            print(f"current v{report.current_version}: "
                  + ("every value is under it" if report.all_current() else
                     "some values are not under it (crypto-engine reencrypt moves them)"))
    failed = sum(c.failed for c in report.columns.values())
    return EXIT_CHECK_FAILED if failed else EXIT_OK


# ---- metrics: an exporter for long-running commands, a Pushgateway for batch commands ----------

_SERVING_COMMANDS = ("rotation-scheduler", "reencrypt")
_PUSHING_COMMANDS = ("rotate", "reencrypt", "inventory", "encrypt-columns", "decrypt-columns",
                     "encrypt", "decrypt")
PUSH_JOB = "crypto-engine"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("must be a TCP port, 0 to 65535")
    return port


def _gateway(text: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError("must be an http:// or https:// URL")
    return text


def _push_label(text: str) -> tuple[str, str]:
    import re

    name, sep, value = text.partition("=")
    if not sep or not value or not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name) \
            or name.startswith("__"):
        raise argparse.ArgumentTypeError("must be NAME=VALUE, NAME a Prometheus label name")
    return name, value


def _add_metrics_arguments(sub: Any) -> None:
    for name in _SERVING_COMMANDS:
        cmd = sub.choices[name]
        cmd.add_argument("--metrics-port", type=_port, metavar="PORT",
                         help="serve Prometheus metrics on http://ADDRESS:PORT/metrics while "
                              "the command runs (see docs/metrics.md)")
        cmd.add_argument("--metrics-address", default="127.0.0.1", metavar="ADDRESS",
                         help="the address --metrics-port listens on (default 127.0.0.1; "
                              "0.0.0.0 for every interface)")
    for name in _PUSHING_COMMANDS:
        cmd = sub.choices[name]
        cmd.add_argument("--pushgateway", type=_gateway, metavar="URL",
                         help="push the metrics to this Prometheus Pushgateway when the command "
                              f"ends, also on failure or Ctrl-C (job {PUSH_JOB!r}, grouped by "
                              "command); a failed push is a warning")
        cmd.add_argument("--push-label", type=_push_label, action="append", default=[],
                         metavar="NAME=VALUE", dest="push_labels",
                         help="one more label of the pushed group, e.g. table=users (job=NAME "
                              "replaces the job); repeat for more")


def _observe_certificates(metrics: Any) -> None:
    """The certificates the engine's Vault connection uses, for the certificate expiry alert."""
    for name in ("VAULT_CLIENT_CERT", "VAULT_CACERT"):
        path = os.environ.get(name)
        if path and os.path.isfile(path):
            try:
                metrics.observe_certificate(path)
            except (EngineError, ImportError) as exc:
                print(f"crypto-engine: warning: ${name}: {exc}", file=sys.stderr)


def _with_metrics(args: argparse.Namespace, run: Any) -> int:
    """Runs the command with its exporter (--metrics-port) and, when it ends however it ends,
    pushes its metrics (--pushgateway). Neither changes the exit code or the report."""
    port, gateway = getattr(args, "metrics_port", None), getattr(args, "pushgateway", None)
    if port is None and gateway is None:
        return run()
    from .metrics import PushFailed, get_metrics

    metrics = get_metrics()
    _observe_certificates(metrics)
    if port is not None:
        try:
            metrics.serve(port, addr=args.metrics_address)
        except OSError as exc:
            print(f"crypto-engine: cannot serve metrics on {args.metrics_address}:{port}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return EXIT_BACKEND
    started, code = time.monotonic(), EXIT_INTERRUPTED
    pushed: list[int] = []

    def finish(code: int) -> None:
        if gateway is None or pushed:
            return
        pushed.append(code)
        labels = dict(args.push_labels)
        job = labels.pop("job", PUSH_JOB)
        metrics.job_finished(code, time.monotonic() - started)
        try:
            metrics.push(gateway, job, {"command": args.command, **labels})
        except PushFailed as exc:
            print(f"crypto-engine: warning: {exc}", file=sys.stderr)

    from ._interrupts import before_exit

    before_exit(lambda: finish(EXIT_INTERRUPTED))  # an interrupted command ends with os._exit
    try:
        code = run()
        return code
    except SystemExit as exc:
        code = EXIT_OK if exc.code is None else exc.code if isinstance(exc.code, int) \
            else EXIT_CHECK_FAILED
        raise
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
        raise
    except BaseException:
        code = EXIT_CHECK_FAILED  # Python's own exit code for an uncaught error
        raise
    finally:
        finish(code)
        if port is not None:
            metrics.stop()


if __name__ == "__main__":
    sys.exit(main())
