"""The benchmark regression gate's decisions (bench/gate.py): tolerances from calibration runs,
verdicts, the baseline file, and its exit codes end to end. No timing is asserted: the end-to-end
checks use baselines no real measurement can be near (a ratio of 10^9 or 10^-9)."""

from __future__ import annotations

import json
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
    assert Verdict("c", None, None, now=1.0, first=1.0).label == "new (no baseline)"
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


def test_baseline_file_has_one_line_per_case(tmp_path):
    doc = {"recorded": {"backend": "x"}, "cases": {"a b": {"ratio": 1.5, "tolerance": 0.2, "runs": [1.4, 1.6]},
                                                     "c": {"ratio": 3.0, "tolerance": 0.1, "runs": [3.0]}}}
    path = tmp_path / "baseline.json"
    write_baseline(path, doc)
    assert json.loads(path.read_text()) == doc
    assert sum('"ratio"' in line for line in path.read_text().splitlines()) == 2


def test_every_case_is_in_the_committed_baseline():
    baseline = json.loads((ROOT / "bench" / "gate_baseline.json").read_text())
    assert set(baseline["cases"]) == set(CASES)
    assert any(c.short for c in CASES.values())


def gate(tmp_path: Path, ratio: float, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / "baseline.json"
    write_baseline(path, {"recorded": {"backend": "test"},
                          "cases": {"encrypt 1 MiB": {"ratio": ratio, "tolerance": 0.1, "runs": []}}})
    return subprocess.run([sys.executable, "-m", "bench.gate", "--case", "encrypt 1 MiB", "--rounds", "3",
                           "--baseline", str(path), *extra], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_gate_fails_naming_the_regressed_case(tmp_path):
    done = gate(tmp_path, 1e9, "--chart", str(tmp_path / "gate.png"), "--json", str(tmp_path / "v.json"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr  # exit 1 from a crash is not a verdict
    assert "REGRESSED: encrypt 1 MiB" in done.stdout
    assert "measured twice" in done.stdout  # confirmed by a second measurement
    verdicts = json.loads((tmp_path / "v.json").read_text())["verdicts"]
    assert [v["verdict"] for v in verdicts] == ["REGRESSED"]
    assert (tmp_path / "gate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gate_passes_a_case_above_its_band(tmp_path):
    done = gate(tmp_path, 1e-9)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "faster" in done.stdout and "no regression in 1 cases" in done.stdout


def test_gate_does_not_judge_thread_scaling_without_a_spare_core(tmp_path):
    """A baseline no measurement's spare capacity can reach (ratio 10^-9 needs a speed-up of 10^9
    to be judged): after its retries the case is reported as not judged, exit 3, not passed."""
    path = tmp_path / "baseline.json"
    name = "thread scaling, seal_batch 64 B"
    write_baseline(path, {"recorded": {"backend": "test"},
                          "cases": {name: {"ratio": 1e-9, "tolerance": 0.1, "runs": []}}})
    done = subprocess.run([sys.executable, "-m", "bench.gate", "--case", name, "--rounds", "3",
                           "--baseline", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"NOT JUDGED (too little spare capacity in 5 measurements): {name}" in done.stdout
    assert "spare capacity" in done.stdout and "NO SPARE CORE" in done.stdout


def test_gate_usage_errors(tmp_path):
    assert gate(tmp_path, 1.0, "--case", "no such case").returncode == 2
    done = subprocess.run([sys.executable, "-m", "bench.gate", "--baseline", str(tmp_path / "none.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--update" in done.stderr
