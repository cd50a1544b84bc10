"""The benchmark regression gate: every case's engine-vs-reference ratio against a committed
baseline, exit 1 naming each case that regressed beyond its tolerance.

The ratios come from the pytest-benchmark cases of ``bench/ratios`` (run in a child pytest,
read back from ``--benchmark-json``); each is measured in interleaved rounds against a reference
that shares the machine's noise, so the gate holds on a loaded shared machine where absolute
times move 2x between runs. A case that falls below its band is measured once more, and it
regresses only if that second measurement falls below the band too.

    python -m bench.gate                      # every case; table, exit 0 or 1
    python -m bench.gate --short              # the cases make test runs
    python -m bench.gate --chart gate.png     # also a PNG of the ratios against their bands
    python -m bench.gate --calibrate          # record this machine's baseline (bench/README.md)
    python -m bench.gate --calibrate --case NAME   # record or re-record one case only
    python -m bench.gate --key                # the machine key this machine's baseline is under
    python -m bench.gate --against KEY        # judge against another machine key's baseline
    python -m bench.gate --compare OLD NEW    # two --benchmark-json files of bench/ratios, by ratio

A ratio depends on the machine (the backend, its instruction set, the CPU, the engine's threads),
so the baseline file holds one baseline per machine key, and a machine is judged only against its
own: on a machine with no baseline the gate measures nothing and says NOT JUDGED (exit 3) with
the command that records one, never REGRESSED.

Exit codes: 0 no case regressed; 1 at least one did (named); 2 bad usage or a case that cannot
run; 3 not judged: no baseline for this machine (or for a selected case), or a thread-scaling
case none of whose measurements had enough spare capacity (run it again when it is quieter).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RATIOS = ROOT / "bench" / "ratios"
BASELINE = ROOT / "bench" / "gate_baseline.json"
DEFAULT_ROUNDS = 21
CALIBRATION_RUNS = 10
# The tolerance of a case, as a fraction of its baseline ratio, from its calibration runs: three
# standard deviations of the runs, or their worst fall below the median times WORST_MARGIN,
# whichever is larger, and never below MIN_TOLERANCE (the smallest change the gate claims to see).
SIGMAS = 3.0
WORST_MARGIN = 1.5
MIN_TOLERANCE = 0.05
# A thread-scaling case (bench.cases.ScalingPair) is judged only from a measurement in which the
# reference's pool ran fast enough against its one thread (its "spare capacity") that an engine
# using one thread would fall below the case's band by SPARE_MARGIN; with less, both sides'
# speed-ups are about 1 whether or not the engine uses its threads. Such a measurement is
# repeated up to SPARE_RETRIES times. Calibration needs at least MIN_SPARE_CAPACITY.
MIN_SPARE_CAPACITY = 1.3
SPARE_MARGIN = 1.1
SPARE_RETRIES = 4


class GateError(Exception):
    """The gate could not measure or compare (exit code 2)."""


def machine_key(info: dict[str, Any] | None = None, cpu: str | None = None) -> str:
    """What a ratio depends on besides the code: the backend with its version and instruction
    set, the CPU model and the engine's threads. Baselines are kept and looked up by it."""
    if info is None:
        import engine

        info = engine.backend_info()
    return (f"{info['backend']} {info['version']} ({info['isa']}) on {cpu or _cpu_model()}, "
            f"{info['threads']} threads")


@dataclass
class Verdict:
    name: str
    baseline: float | None
    tolerance: float | None
    now: float
    first: float  # the first measurement; `now` is the better of it and the re-measurement
    remeasured: bool = False
    spare: float | None = None  # a thread-scaling case: the spare capacity its measurement had
    needed_spare: float = MIN_SPARE_CAPACITY  # and the least it needs to be judged

    @property
    def floor(self) -> float | None:
        return None if self.baseline is None else self.baseline * (1 - self.tolerance)

    @property
    def change(self) -> float | None:
        return None if self.baseline is None else self.now / self.baseline - 1

    @property
    def label(self) -> str:
        if self.baseline is None:
            return "NO BASELINE"
        if self.spare is not None and self.spare < self.needed_spare:
            return "NO SPARE CORE"
        if self.now < self.floor:
            return "REGRESSED"
        if self.now > self.baseline * (1 + self.tolerance):
            return "faster"
        return "ok"


def measure(names: list[str], rounds: int, threads: int | None, verbose: bool) -> dict[str, dict]:
    """Runs the pytest-benchmark cases ``names`` in a child pytest; their ``extra_info`` by case."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ratios.json"
        cmd = [sys.executable, "-m", "pytest", str(RATIOS), "-q", "-p", "no:cacheprovider",
               "--benchmark-only", f"--benchmark-json={out}", "--rounds", str(rounds)]
        for name in names:
            cmd += ["--case", name]
        if threads is not None:
            cmd += ["--engine-threads", str(threads)]
        # A child of an xdist worker (the suite's own gate tests) must not look like one:
        # pytest-benchmark turns itself off under xdist.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=not verbose, text=True)
        if done.returncode != 0 or not out.exists():
            detail = "" if verbose else (done.stdout[-4000:] + done.stderr[-2000:])
            raise GateError(f"the ratio benchmarks failed (pytest exit {done.returncode})\n{detail}")
        doc = json.loads(out.read_text())
    return {b["extra_info"]["case"]: b["extra_info"] for b in doc["benchmarks"]}


def needed_spare(entry: dict[str, Any] | None) -> float:
    """The spare capacity a thread-scaling measurement needs to be judged against its baseline
    ``entry``: enough that an engine on one thread (a ratio of 1 / spare capacity) would fall
    below the band with SPARE_MARGIN to spare."""
    if not entry:
        return MIN_SPARE_CAPACITY
    return max(MIN_SPARE_CAPACITY, SPARE_MARGIN / (entry["ratio"] * (1 - entry["tolerance"])))


def has_spare_core(info: dict[str, Any], needed: float) -> bool:
    """Whether a case's measurement can be judged (always, for a case that is not thread scaling)."""
    return info.get("spare_capacity", needed) >= needed


def measure_with_spare_core(names: list[str], needed: dict[str, float], rounds: int, threads: int | None,
                            verbose: bool) -> dict[str, dict]:
    """``measure``, then again for each thread-scaling case whose measurement had less spare
    capacity than ``needed``, up to SPARE_RETRIES times; one that never had it keeps its last."""
    found = measure(names, rounds, threads, verbose)
    for _ in range(SPARE_RETRIES):
        crowded = [n for n in names if not has_spare_core(found[n], needed[n])]
        if not crowded:
            break
        found.update(measure(crowded, rounds, threads, verbose))
    return found


def all_case_names(short: bool) -> list[str]:
    from bench.cases import CASES

    return [name for name, c in CASES.items() if c.short or not short]


def load_baseline(path: Path) -> dict[str, Any]:
    """The baseline file: ``{"machines": {machine key: {"recorded": ..., "cases": ...}}}``; no
    file is a file with no machine."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {"machines": {}}
    except (OSError, ValueError) as exc:
        raise GateError(f"{path} cannot be read as a baseline: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("machines"), dict):
        raise GateError(f"{path} is not a baseline file (no \"machines\" object)")
    return doc


def environment() -> dict[str, Any]:
    """What the figures depend on, written beside them."""
    import cryptography

    import engine

    info = engine.backend_info()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    return {"backend": f"{info['backend']} {info['version']} ({info['isa']})", "threads": info["threads"],
            "cpu": _cpu_model(), "python": platform.python_version(), "cryptography": cryptography.__version__,
            "commit": commit, "date": datetime.date.today().isoformat(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        return platform.processor()
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
                platform.processor())


def tolerance(runs: list[float]) -> float:
    """A case's tolerance from its calibration runs (see SIGMAS above)."""
    mid = statistics.median(runs)
    relative = [r / mid for r in runs]
    return round(max(MIN_TOLERANCE, SIGMAS * statistics.stdev(relative),
                     WORST_MARGIN * max(1 - r for r in relative)), 3)


def calibrate(path: Path, names: list[str], runs: int, rounds: int, verbose: bool) -> dict[str, Any]:
    """Measures ``names`` ``runs`` times and writes their entries under this machine's key
    (other cases and other machines are kept). Returns this machine's baseline."""
    samples: dict[str, list[float]] = {n: [] for n in names}
    spare: dict[str, list[float]] = {n: [] for n in names}
    loads = []
    for i in range(runs):
        loads.append(os.getloadavg()[0])
        for name, info in measure_with_spare_core(names, dict.fromkeys(names, MIN_SPARE_CAPACITY), rounds,
                                                  None, verbose).items():
            if not has_spare_core(info, MIN_SPARE_CAPACITY):
                raise GateError(f"{name}: no core to spare in {SPARE_RETRIES + 1} measurements; "
                                "calibrate on a quieter machine")
            samples[name].append(info["ratio"])
            if "spare_capacity" in info:
                spare[name].append(round(info["spare_capacity"], 2))
        print(f"calibration run {i + 1}/{runs}: "
              + ", ".join(f"{n} {s[-1]:.3g}" for n, s in samples.items()), flush=True)
    doc = load_baseline(path)
    machine = doc["machines"].setdefault(machine_key(), {"recorded": {}, "cases": {}})
    env = environment()
    env["rounds"], env["runs"] = rounds, runs
    machine["recorded"] = env
    for name, values in samples.items():
        machine["cases"][name] = {"ratio": round(statistics.median(values), 4), "tolerance": tolerance(values),
                              "runs": [round(v, 4) for v in values], "commit": env["commit"],
                              "date": env["date"], "load": [round(min(loads), 1), round(max(loads), 1)]}
        if spare[name]:
            machine["cases"][name]["spare_capacity"] = spare[name]
    order = all_case_names(False)
    machine["cases"] = dict(sorted(machine["cases"].items(),
                                   key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    write_baseline(path, doc)
    return machine


def write_baseline(path: Path, doc: dict[str, Any]) -> None:
    """The baseline file as JSON with one line per case, so that a diff shows what moved."""
    machines = []
    for key, machine in doc["machines"].items():
        cases = ",\n".join(f"   {json.dumps(name)}: {json.dumps(entry)}"
                           for name, entry in machine["cases"].items())
        machines.append(f'  {json.dumps(key)}: {{\n   "recorded": {json.dumps(machine["recorded"])},\n'
                        f'   "cases": {{\n{cases}\n   }}\n  }}')
    body = ",\n".join(machines)
    path.write_text(f'{{\n "machines": {{\n{body}\n }}\n}}\n')


def judge(names: list[str], baseline: dict[str, Any], rounds: int, threads: int | None,
          verbose: bool, confirm: bool) -> list[Verdict]:
    entries = baseline["cases"]
    needed = {n: needed_spare(entries.get(n)) for n in names}
    first = measure_with_spare_core(names, needed, rounds, threads, verbose)
    verdicts = [Verdict(n, entries.get(n, {}).get("ratio"), entries.get(n, {}).get("tolerance"),
                        first[n]["ratio"], first[n]["ratio"], spare=first[n].get("spare_capacity"),
                        needed_spare=needed[n])
                for n in names]
    suspects = [v for v in verdicts if v.label == "REGRESSED"]
    if confirm and suspects:
        again = measure([v.name for v in suspects], rounds, threads, verbose)
        for v in suspects:
            v.remeasured = True
            # A re-measurement without a spare core cannot clear a thread-scaling case.
            if has_spare_core(again[v.name], v.needed_spare):
                v.now = max(v.first, again[v.name]["ratio"])
    return verdicts


def render(verdicts: list[Verdict], baseline: dict[str, Any]) -> str:
    import engine

    info = engine.backend_info()
    rec = baseline.get("recorded", {})
    lines = [f"backend now: {info['backend']} {info['version']} ({info['isa']}); baseline: "
             f"{rec.get('backend', '?')}, commit {rec.get('commit', '?')}, {rec.get('date', '?')}",
             "ratio = the reference's time / the engine's time per unit of work (higher: engine faster)",
             "",
             f"{'case':<40} {'baseline':>9} {'band':>9} {'now':>9} {'change':>8}  verdict"]
    for v in verdicts:
        base = "-" if v.baseline is None else f"{v.baseline:.3g}"
        band = "-" if v.baseline is None else f"-{v.tolerance:.0%}"
        change = "-" if v.change is None else f"{v.change:+.0%}"
        again = f" (measured twice; first {v.first:.3g})" if v.remeasured else ""
        lines.append(f"{v.name:<40} {base:>9} {band:>9} {v.now:>9.3g} {change:>8}  {v.label}{again}")
    bad = [v.name for v in verdicts if v.label == "REGRESSED"]
    lines.append("")
    for v in verdicts:
        if v.spare is not None:
            lines.append(f"{v.name}: spare capacity {v.spare:.2f}x (the reference's pool over its one "
                         f"thread); judged from {v.needed_spare:.2f}x")
    crowded = [v.name for v in verdicts if v.label == "NO SPARE CORE"]
    unknown = [v.name for v in verdicts if v.label == "NO BASELINE"]
    lines.append(f"REGRESSED: {', '.join(bad)}" if bad else f"no regression in {len(verdicts)} cases")
    if crowded:
        lines.append(f"NOT JUDGED (too little spare capacity in {SPARE_RETRIES + 1} measurements): "
                     f"{', '.join(crowded)}")
    if unknown:
        lines.append(f"NOT JUDGED (no baseline on this machine): {', '.join(unknown)}; record them "
                     "with: python -m bench.gate --calibrate " + " ".join(f"--case {n!r}" for n in unknown))
    return "\n".join(lines)


def overall(verdicts: list[Verdict]) -> tuple[str, int]:
    """The run's verdict and exit code: a regression wins over a case that could not be judged."""
    labels = {v.label for v in verdicts}
    if "REGRESSED" in labels:
        return "regressed", 1
    if labels & {"NO SPARE CORE", "NO BASELINE"}:
        return "not judged", 3
    return "passed", 0


def not_judged(key: str, doc: dict[str, Any], path: Path) -> str:
    """What the gate says on a machine its baseline file has no baseline for."""
    known = "".join(f"\n  {k}" for k in doc["machines"]) or " none"
    return (f"NOT JUDGED: {path} has no baseline for this machine\n  {key}\n"
            f"(ratios move with the backend, its instruction set and the CPU; a baseline from another "
            f"machine would raise false alarms or hide regressions). Baselines it has:{known}\n"
            f"Record this machine's: python -m bench.gate --calibrate  (10 runs of every case), or "
            f"judge against one of them: python -m bench.gate --against KEY")


def compare(old: Path, new: Path) -> str:
    """Two ``--benchmark-json`` files of bench/ratios, case by case, by their ratios (the
    figure the gate judges), never by absolute times."""
    def ratios(path: Path) -> dict[str, float]:
        try:
            doc = json.loads(path.read_text())
            return {b["extra_info"]["case"]: float(b["extra_info"]["ratio"]) for b in doc["benchmarks"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise GateError(f"{path} is not a --benchmark-json file of bench/ratios: {exc!r}") from None

    a, b = ratios(old), ratios(new)
    lines = [f"{'case':<40} {'old':>9} {'new':>9} {'change':>8}"]
    for name in [*a, *(n for n in b if n not in a)]:
        if name in a and name in b:
            lines.append(f"{name:<40} {a[name]:>9.3g} {b[name]:>9.3g} {b[name] / a[name] - 1:>+8.0%}")
        else:
            lines.append(f"{name:<40} {a.get(name, '-'):>9} {b.get(name, '-'):>9} {'only one':>8}")
    return "\n".join(lines)


def band_axes(cases: list[tuple[str, float, float]], title: str) -> tuple[Any, Any]:
    """A figure with a row per (case, baseline ratio, tolerance): the case's band around 1.0 on
    an axis of ratio / baseline ratio. Returns (figure, axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 0.36 * len(cases) + 1.6))
    for y, (_, _, tol) in enumerate(cases):
        ax.barh(y, 2 * tol, left=1 - tol, height=0.7, color="#e2e8f0")
    ax.axvline(1.0, color="#4a5568", linewidth=0.8)
    ax.set_yticks(range(len(cases)), [f"{name} ({base:.3g}x)" for name, base, _ in cases], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio / baseline ratio; band: the case's tolerance (a fall below it regresses)",
                  fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title(title, fontsize=9, pad=20)
    return fig, ax


def save_chart(fig: Any, path: str) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=80, bbox_inches="tight")  # dpi 80: small enough to commit
    plt.close(fig)


def chart(verdicts: list[Verdict], path: str, title: str) -> None:
    """Each case's ratio now against its band; a hollow dot is the first of two measurements."""
    shown = [v for v in verdicts if v.baseline is not None]
    fig, ax = band_axes([(v.name, v.baseline, v.tolerance) for v in shown], title)
    for y, v in enumerate(shown):
        color = {"REGRESSED": "#c53030", "faster": "#2f855a"}.get(v.label, "#2b6cb0")
        ax.plot(v.now / v.baseline, y, "o", color=color, markersize=6)
        if v.remeasured and v.first != v.now:
            ax.plot(v.first / v.baseline, y, "o", mfc="none", color=color, markersize=6)
    save_chart(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="only the short gate's cases (make test)")
    p.add_argument("--case", action="append", default=[], metavar="NAME", help="only this case (repeatable)")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"interleaved rounds per case ({DEFAULT_ROUNDS})")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for the engine in its all-thread cases (default: all cores)")
    p.add_argument("--baseline", type=Path, default=BASELINE, help="the baseline file")
    p.add_argument("--against", metavar="KEY",
                   help="judge against this machine key's baseline instead of this machine's "
                        "(an experiment, e.g. the OpenSSL backend against ipsec-mb's)")
    p.add_argument("--key", action="store_true", help="print this machine's key and exit")
    p.add_argument("--chart", metavar="PATH", help="write a PNG of the ratios against their bands")
    p.add_argument("--json", metavar="PATH", help="write the verdicts and the overall verdict as JSON")
    p.add_argument("--no-confirm", dest="confirm", action="store_false",
                   help="do not re-measure a case that falls below its band")
    p.add_argument("--calibrate", action="store_true",
                   help="record this machine's baseline of the selected cases (--runs measurements)")
    p.add_argument("--calibrate-missing", action="store_true",
                   help="first record a baseline for each selected case this machine has none for")
    p.add_argument("--runs", type=int, default=CALIBRATION_RUNS,
                   help=f"measurements per case when calibrating ({CALIBRATION_RUNS})")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"),
                   help="compare two --benchmark-json files of bench/ratios by their ratios")
    p.add_argument("--verbose", action="store_true", help="show pytest-benchmark's own output")
    args = p.parse_args(argv)
    if args.chart and importlib.util.find_spec("matplotlib") is None:
        p.error("--chart needs matplotlib (pip install -e '.[bench]')")
    if args.runs < 2:
        p.error("--runs must be at least 2 (a tolerance needs a spread)")
    if args.key:
        print(machine_key())
        return 0
    try:
        if args.compare:
            print(compare(*args.compare))
            return 0
    except GateError as exc:
        print(f"gate: {exc}", file=sys.stderr)
        return 2

    from bench.cases import CASES

    unknown = [n for n in args.case if n not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; registered: {', '.join(CASES)}")
    names = args.case or all_case_names(args.short)
    if (args.calibrate or args.calibrate_missing) and (args.threads is not None or args.against):
        p.error("a calibration records this machine's all-thread baseline: drop --threads and --against")
    try:
        doc = load_baseline(args.baseline)
        key = args.against or machine_key()
        if args.calibrate or args.calibrate_missing:
            have = doc["machines"].get(key, {}).get("cases", {})
            todo = names if args.calibrate else [n for n in names if n not in have]
            if todo:
                machine = calibrate(args.baseline, todo, args.runs, args.rounds, args.verbose)
                for name in todo:
                    e = machine["cases"][name]
                    print(f"{name:<40} ratio {e['ratio']:.3g}  tolerance {e['tolerance']:.1%}")
                print(f"wrote {args.baseline} for {key}")
            if args.calibrate:
                return 0
            doc = load_baseline(args.baseline)
        baseline = doc["machines"].get(key)
        if baseline is None:
            print(not_judged(key, doc, args.baseline))
            verdict, code, verdicts = "not judged", 3, []
        else:
            verdicts = judge(names, baseline, args.rounds, args.threads, args.verbose, args.confirm)
            print(render(verdicts, baseline))
            verdict, code = overall(verdicts)
    except GateError as exc:
        print(f"gate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"verdict": verdict, "exit_code": code, "machine": machine_key(), "judged_against": key,
             "verdicts": [{"case": v.name, "baseline": v.baseline, "tolerance": v.tolerance, "now": v.now,
                           "first": v.first, "spare_capacity": v.spare, "verdict": v.label} for v in verdicts],
             "environment": environment()}, indent=1) + "\n")
    if args.chart and verdicts:
        import engine

        info = engine.backend_info()
        threads = f", {args.threads} engine thread(s)" if args.threads else ""
        chart(verdicts, args.chart, f"{info['backend']}{threads} against the baseline of "
                                    f"{baseline.get('recorded', {}).get('date', '?')}")
    return code


if __name__ == "__main__":
    sys.exit(main())
