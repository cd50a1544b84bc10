"""Does the gate separate signal from noise on this machine? Runs ``python -m bench.gate`` N
times in each of three experiments, taking turns so that all three see the same load:

* unchanged: the tree as it is; every exit 1 is a false alarm;
* openssl: ``ENGINE_BACKEND=openssl`` judged against this machine's ipsec-mb baseline
  (``--against``; a real slowdown of the native core, about 2x on bulk data here); every exit 0 is a miss;
* threads 1: ``--threads 1`` against the all-thread baseline (a real slowdown wherever the
  machine has a spare core); every exit 0 is a miss.

    python -m bench.gate_proof --runs 10 --chart bench/gate_proof.png

Prints each run's exit code and flagged cases and the counts (exit 3, a thread-scaling case that
no measurement could give a spare core, is counted apart: neither a pass nor a failure); the
chart shows every run's ratios against the baseline bands.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.gate import ROOT, band_axes, save_chart

EXPERIMENTS = {
    "unchanged": ({}, []),
    "openssl": ({"ENGINE_BACKEND": "openssl"}, []),
    "threads 1": ({}, ["--threads", "1"]),
}
EXPECTED = {"unchanged": 0, "openssl": 1, "threads 1": 1}
COLORS = {"unchanged": "#2b6cb0", "openssl": "#c53030", "threads 1": "#805ad5"}


def run_gate(env: dict[str, str], extra: list[str], gate_args: list[str]) -> tuple[int, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "verdicts.json"
        done = subprocess.run([sys.executable, "-m", "bench.gate", "--json", str(out), *gate_args, *extra],
                              cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
        doc = json.loads(out.read_text()) if out.exists() else {"verdicts": []}
    if done.returncode not in (0, 1, 3):
        raise SystemExit(f"the gate failed to run (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return done.returncode, doc


def chart(results: dict[str, list[dict]], path: str) -> None:
    first = next(r for runs in results.values() for r in runs)
    cases = [(v["case"], v["baseline"], v["tolerance"]) for v in first["verdicts"] if v["baseline"]]
    runs = len(next(iter(results.values())))
    fig, ax = band_axes(cases, f"{runs} runs of the gate per experiment")
    for k, (experiment, docs) in enumerate(results.items()):
        for run in docs:
            by_case = {v["case"]: v for v in run["verdicts"]}
            for y, (name, base, _) in enumerate(cases):
                if name in by_case:
                    ax.plot(by_case[name]["now"] / base, y + (k - 1) * 0.22, "o", color=COLORS[experiment],
                            markersize=3.5, alpha=0.75, label=experiment if (y, run) == (0, docs[0]) else None)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    save_chart(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gate_proof", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10, help="gate runs per experiment (10)")
    p.add_argument("--experiment", action="append", choices=list(EXPERIMENTS), default=[],
                   help="only this experiment (repeatable)")
    p.add_argument("--chart", metavar="PATH", help="write a PNG of every run against the bands")
    p.add_argument("--json", metavar="PATH", help="write every run's verdicts as JSON")
    p.add_argument("gate_args", nargs="*", help="passed to bench.gate (after --), e.g. --short")
    args = p.parse_args(argv)
    chosen = args.experiment or list(EXPERIMENTS)
    ipsec_mb = subprocess.run([sys.executable, "-m", "bench.gate", "--key"], cwd=ROOT, text=True,
                              capture_output=True, env={**os.environ, "ENGINE_BACKEND": "ipsec-mb"})
    if ipsec_mb.returncode != 0:
        raise SystemExit(f"this machine's ipsec-mb key: {ipsec_mb.stderr}")
    against = ["--against", ipsec_mb.stdout.strip()]
    results: dict[str, list[dict]] = {e: [] for e in chosen}
    for i in range(args.runs):
        for experiment in chosen:
            env, extra = EXPERIMENTS[experiment]
            extra = [*extra, *against]  # every experiment against the ipsec-mb baseline
            load = os.getloadavg()[0]
            code, doc = run_gate(env, extra, args.gate_args)
            doc.update(exit=code, load=load)
            results[experiment].append(doc)
            flagged = [v["case"] for v in doc["verdicts"] if v["verdict"] == "REGRESSED"]
            print(f"run {i + 1:2}  {experiment:<10} load {load:4.1f}  exit {code}  "
                  f"{'flagged: ' + ', '.join(flagged) if flagged else ''}", flush=True)
    print()
    for experiment, runs in results.items():
        wrong = sum(r["exit"] != EXPECTED[experiment] for r in runs)
        what = "false alarms" if EXPECTED[experiment] == 0 else "misses"
        loads = [r["load"] for r in runs]
        unjudged = sum(r["exit"] == 3 for r in runs)
        print(f"{experiment:<10} {len(runs)} runs: {sum(r['exit'] == 1 for r in runs)} failed the gate, "
              f"{wrong - unjudged} {what}, {unjudged} not judged (no spare core); "
              f"1-minute load average {min(loads):.1f}-{max(loads):.1f}")
    if args.chart:
        chart(results, args.chart)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0 if all(r["exit"] == EXPECTED[e] for e, runs in results.items() for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
