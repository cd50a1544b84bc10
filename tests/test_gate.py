"""The benchmark regression gate's decisions (bench/gate.py): tolerances from calibration runs,
verdicts, the baseline file, and its exit codes end to end. No timing is asserted: the end-to-end
checks use baselines no real measurement can be near (a ratio of 10^9 or 10^-9)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from bench.cases import CASES, ScalingPair
from bench.gate import (
    MIN_SPARE_CAPACITY,
    MIN_TOLERANCE,
    ROOT,
    SIGMAS,
    WORST_MARGIN,
    Verdict,
    machine_key,
    needed_spare,
    tolerance,
    write_baseline,
)

runs = st.lists(st.floats(min_value=0.01, max_value=100), min_size=3, max_size=20)


@given(runs)
def test_tolerance_covers_the_measured_spread(values):
    tol = tolerance(values)
    mid = statistics.median(values)
    assert tol >= MIN_TOLERANCE
    # every calibration run lies inside the band, with the margin to spare
    assert all(v >= mid * (1 - tol / WORST_MARGIN) - 1e-3 * mid for v in values)
    assert tol >= round(SIGMAS * statistics.stdev(v / mid for v in values), 3) - 1e-9


@given(runs, st.floats(min_value=0.01, max_value=100))
def test_tolerance_depends_on_relative_spread_only(values, scale):
    assert tolerance(values) == pytest.approx(tolerance([v * scale for v in values]), abs=2e-3)


def test_verdicts():
    assert Verdict("c", 2.0, 0.1, now=1.79, first=1.79).label == "REGRESSED"
    assert Verdict("c", 2.0, 0.1, now=1.81, first=1.5).label == "ok"  # the re-measurement holds
    assert Verdict("c", 2.0, 0.1, now=2.21, first=2.21).label == "faster"
    assert Verdict("c", None, None, now=1.0, first=1.0).label == "NO BASELINE"
    assert Verdict("c", 2.0, 0.1, now=1.5, first=1.5).change == pytest.approx(-0.25)


@given(st.floats(min_value=0.05, max_value=20), st.floats(min_value=0.05, max_value=0.9))
def test_a_judged_scaling_measurement_would_catch_one_engine_thread(ratio, tol):
    """An engine on one thread has no speed-up, so its thread-scaling ratio is 1 / the spare
    capacity: at the least spare capacity the gate judges from, that falls below the band."""
    needed = needed_spare({"ratio": ratio, "tolerance": tol})
    assert needed >= MIN_SPARE_CAPACITY
    assert Verdict("s", ratio, tol, now=1 / needed, first=1 / needed, spare=needed, needed_spare=needed).label \
        == "REGRESSED"


def test_scaling_verdicts():
    assert Verdict("s", 1.0, 0.2, now=1.0, first=1.0, spare=1.1, needed_spare=1.4).label == "NO SPARE CORE"
    assert Verdict("s", 1.0, 0.2, now=1.0, first=1.0, spare=1.5, needed_spare=1.4).label == "ok"
    assert Verdict("s", 1.0, 0.2, now=0.7, first=0.7, spare=1.5, needed_spare=1.4).label == "REGRESSED"
    assert needed_spare(None) == MIN_SPARE_CAPACITY


def test_scaling_pair_ratios_come_from_the_timed_rounds():
    """Each round's ratio is the engine's speed-up over the reference's, from that round's own
    four timings; warm-up calls (recorded first) are left out, and so is everything else."""
    pair = ScalingPair(engine=lambda: None, reference=lambda: None,
                       engine_times=[(9.0, 1.0), (2.0, 1.0), (3.0, 2.0)],
                       reference_times=[(9.0, 9.0), (1.5, 1.0), (4.0, 2.0)])
    assert pair.round_ratios([0.0, 0.0], [0.0, 0.0]) == [pytest.approx(2.0 / 1.5), pytest.approx(1.5 / 2.0)]
    assert pair.extra_info(2) == {"spare_capacity": pytest.approx(1.75)}


def baseline_file(path: Path, cases: dict, key: str | None = None) -> Path:
    write_baseline(path, {"machines": {key or machine_key(): {"recorded": {"backend": "test"},
                                                              "cases": cases}}})
    return path


def test_baseline_file_has_one_line_per_case(tmp_path):
    cases = {"a b": {"ratio": 1.5, "tolerance": 0.2, "runs": [1.4, 1.6]},
             "c": {"ratio": 3.0, "tolerance": 0.1, "runs": [3.0]}}
    doc = {"machines": {"m1": {"recorded": {"backend": "x"}, "cases": cases},
                        "m2": {"recorded": {"backend": "y"}, "cases": {"c": cases["c"]}}}}
    path = tmp_path / "baseline.json"
    write_baseline(path, doc)
    assert json.loads(path.read_text()) == doc
    assert sum('"ratio"' in line for line in path.read_text().splitlines()) == 3


def test_every_machine_in_the_committed_baseline_has_every_case():
    baseline = json.loads((ROOT / "bench" / "gate_baseline.json").read_text())
    assert baseline["machines"]
    for key, machine in baseline["machines"].items():
        assert set(machine["cases"]) == set(CASES), key
        assert machine["recorded"]["cpu"] in key and machine["recorded"]["backend"] in key
    assert any(c.short for c in CASES.values())


def test_the_machine_key_names_backend_isa_cpu_and_threads():
    info = {"backend": "ipsec-mb", "version": "1.3.0", "isa": "avx2", "threads": 2}
    key = machine_key(info, "AMD EPYC")
    assert key == "ipsec-mb 1.3.0 (avx2) on AMD EPYC, 2 threads"
    assert len({key, machine_key({**info, "isa": "avx512+vaes"}, "AMD EPYC"),
                machine_key({**info, "threads": 4}, "AMD EPYC"), machine_key(info, "Intel Xeon")}) == 4


def run_gate(*args: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.gate", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_on_a_machine_without_a_baseline_the_gate_judges_nothing(tmp_path):
    """An unchanged tree against another machine's baseline (the committed one holds only other
    machines' when this is a new runner): NOT JUDGED, exit 3, how to calibrate, nothing
    measured, and never REGRESSED, however far the foreign ratios are from this machine's."""
    path = baseline_file(tmp_path / "b.json", {n: {"ratio": 1e9, "tolerance": 0.1, "runs": []} for n in CASES},
                         key="ipsec-mb 1.3.0 (avx512+vaes) on another CPU, 2 threads")
    done = run_gate("--short", "--baseline", str(path), "--json", str(tmp_path / "v.json"), timeout=60)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "NOT JUDGED" in done.stdout and "REGRESSED" not in done.stdout
    assert "--calibrate" in done.stdout and machine_key() in done.stdout
    assert "another CPU" in done.stdout  # the baselines it does have
    doc = json.loads((tmp_path / "v.json").read_text())
    assert (doc["verdict"], doc["exit_code"], doc["verdicts"]) == ("not judged", 3, [])


def gate(tmp_path: Path, ratio: float, *extra: str) -> subprocess.CompletedProcess:
    path = baseline_file(tmp_path / "baseline.json", {"encrypt 1 MiB": {"ratio": ratio, "tolerance": 0.1, "runs": []}})
    return run_gate("--case", "encrypt 1 MiB", "--rounds", "3", "--baseline", str(path), *extra)


def test_gate_fails_naming_the_regressed_case(tmp_path):
    done = gate(tmp_path, 1e9, "--chart", str(tmp_path / "gate.png"), "--json", str(tmp_path / "v.json"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr  # exit 1 from a crash is not a verdict
    assert "REGRESSED: encrypt 1 MiB" in done.stdout
    assert "measured twice" in done.stdout  # confirmed by a second measurement
    doc = json.loads((tmp_path / "v.json").read_text())
    assert [v["verdict"] for v in doc["verdicts"]] == ["REGRESSED"]
    assert (doc["verdict"], doc["exit_code"]) == ("regressed", 1)
    assert (tmp_path / "gate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gate_passes_a_case_above_its_band(tmp_path):
    done = gate(tmp_path, 1e-9, "--json", str(tmp_path / "v.json"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "faster" in done.stdout and "no regression in 1 cases" in done.stdout
    assert json.loads((tmp_path / "v.json").read_text())["verdict"] == "passed"


def test_a_case_this_machine_has_no_baseline_for_is_not_judged(tmp_path):
    path = baseline_file(tmp_path / "b.json", {"encrypt 64 B": {"ratio": 1e-9, "tolerance": 0.1, "runs": []}})
    done = run_gate("--case", "encrypt 64 B", "--case", "encrypt 1 MiB", "--rounds", "3", "--baseline", str(path))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "NOT JUDGED (no baseline on this machine): encrypt 1 MiB" in done.stdout


def test_against_judges_with_another_machine_keys_baseline(tmp_path):
    """The experiments: a slower backend judged against the fast one's baseline must fail."""
    other = "openssl 9.9 (none) on nothing, 1 threads"
    path = baseline_file(tmp_path / "b.json", {"encrypt 1 MiB": {"ratio": 1e9, "tolerance": 0.1, "runs": []}},
                         key=other)
    assert run_gate("--case", "encrypt 1 MiB", "--baseline", str(path), timeout=60).returncode == 3
    done = run_gate("--case", "encrypt 1 MiB", "--rounds", "3", "--no-confirm", "--baseline", str(path),
                    "--against", other)
    assert done.returncode == 1, done.stdout + done.stderr


def test_calibrate_missing_records_this_machine_then_judges(tmp_path):
    path = tmp_path / "b.json"
    done = run_gate("--case", "encrypt 1 MiB", "--rounds", "3", "--runs", "2", "--calibrate-missing",
                    "--baseline", str(path), timeout=600)
    assert done.returncode in (0, 1), done.stdout + done.stderr  # judged, whatever the noise
    machine = json.loads(path.read_text())["machines"][machine_key()]
    assert set(machine["cases"]) == {"encrypt 1 MiB"} and len(machine["cases"]["encrypt 1 MiB"]["runs"]) == 2


def test_compare_reads_ratios_not_times(tmp_path):
    def bench_json(path: Path, ratios: dict[str, float], seconds: float) -> Path:
        path.write_text(json.dumps({"benchmarks": [
            {"stats": {"median": seconds}, "extra_info": {"case": n, "ratio": r}} for n, r in ratios.items()]}))
        return path

    old = bench_json(tmp_path / "old.json", {"a": 2.0, "b": 1.0}, seconds=1.0)
    new = bench_json(tmp_path / "new.json", {"a": 1.0, "c": 3.0}, seconds=0.001)  # 1000x faster times
    done = run_gate("--compare", str(old), str(new), timeout=60)
    assert done.returncode == 0, done.stderr
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("a "))
    assert "-50%" in line
    assert "only one" in next(ln for ln in done.stdout.splitlines() if ln.startswith("b "))
    (tmp_path / "bad.json").write_text("{}")
    assert run_gate("--compare", str(old), str(tmp_path / "bad.json"), timeout=60).returncode == 2


def test_gate_does_not_judge_thread_scaling_without_a_spare_core(tmp_path):
    """A baseline no measurement's spare capacity can reach (ratio 10^-9 needs a speed-up of 10^9
    to be judged): after its retries the case is reported as not judged, exit 3, not passed."""
    name = "thread scaling, seal_batch 64 B"
    path = baseline_file(tmp_path / "baseline.json", {name: {"ratio": 1e-9, "tolerance": 0.1, "runs": []}})
    done = run_gate("--case", name, "--rounds", "3", "--baseline", str(path), timeout=600)
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"NOT JUDGED (too little spare capacity in 5 measurements): {name}" in done.stdout
    assert "spare capacity" in done.stdout and "NO SPARE CORE" in done.stdout


def test_gate_usage_errors(tmp_path):
    assert gate(tmp_path, 1.0, "--case", "no such case").returncode == 2
    assert run_gate("--against", "x", "--calibrate", timeout=60).returncode == 2
    (tmp_path / "broken.json").write_text("{")
    done = run_gate("--baseline", str(tmp_path / "broken.json"), timeout=60)
    assert done.returncode == 2 and "cannot be read as a baseline" in done.stderr


def test_pytest_benchmark_only_at_the_root_runs_the_ratio_cases_and_nothing_else():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    done = subprocess.run([sys.executable, "-m", "pytest", "--benchmark-only", "--co", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    ids = [ln for ln in done.stdout.splitlines() if "::" in ln]
    assert ids and all(ln.startswith("bench/ratios/test_ratios.py::test_ratio[") for ln in ids)
    assert len(ids) == len(CASES)


def test_a_thread_scaling_suspect_is_never_cleared_or_judged_without_its_spare_capacity(monkeypatch):
    """judge() with the measurements scripted: a suspect's re-measurement that lacked the spare
    capacity the case needs cannot clear it, however good its ratio; one that had it can; and a
    measurement that never had it is NOT JUDGED, never ok."""
    import bench.gate as gate_module

    name = "thread scaling, seal_batch 64 B"
    entry = {"ratio": 1.0, "tolerance": 0.1}
    needed = needed_spare(entry)

    def scripted(*measurements):
        queue = list(measurements)

        def measure(names, rounds, threads, verbose):
            return {n: queue.pop(0) for n in names}
        return measure

    low, high = {"ratio": 0.5, "spare_capacity": needed + 0.5}, {"ratio": 5.0, "spare_capacity": needed - 0.1}
    monkeypatch.setattr(gate_module, "measure", scripted(low, high))
    [v] = gate_module.judge([name], {"cases": {name: entry}}, 3, None, False, True)
    assert v.remeasured and v.label == "REGRESSED" and v.now == 0.5

    cleared = {"ratio": 1.0, "spare_capacity": needed + 0.5}
    monkeypatch.setattr(gate_module, "measure", scripted(low, cleared))
    [v] = gate_module.judge([name], {"cases": {name: entry}}, 3, None, False, True)
    assert v.label == "ok"

    crowded = {"ratio": 1.0, "spare_capacity": needed - 0.01}
    monkeypatch.setattr(gate_module, "measure", scripted(*[crowded] * (gate_module.SPARE_RETRIES + 1)))
    [v] = gate_module.judge([name], {"cases": {name: entry}}, 3, None, False, True)
    assert v.label == "NO SPARE CORE"
