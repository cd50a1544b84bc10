"""The engine beside its reference, case by case (``bench/cases.py``), with pytest-benchmark.

Each round runs the reference (pedantic's untimed ``setup``, timed here) and then the engine
(timed by the fixture), so the two alternate round by round; the median of the rounds' own
ratios goes into the benchmark's ``extra_info``, which ``python -m bench.gate`` reads from
``--benchmark-json``. A plain ``pytest`` leaves them out; ``pytest --benchmark-only`` at the
repository's root runs them and nothing else:

    pytest --benchmark-only --benchmark-json=ratios.json        # every case, 21 rounds
    pytest bench/ratios --short --rounds 11 --benchmark-json=-  # the short gate's cases
    pytest bench/ratios --benchmark-disable                     # each case once, untimed

Nothing here asserts a timing; the gate compares the ratios with the committed baseline.
"""

from __future__ import annotations

import statistics
import time

import pytest

import engine
from bench.cases import Case, Settings

pytestmark = pytest.mark.ratio


def test_ratio(benchmark, ratio_case: Case, settings: Settings, rounds: int) -> None:
    pair = ratio_case.build(settings)
    reference_s: list[float] = []

    def timed_reference() -> None:
        t0 = time.perf_counter()
        pair.reference()
        reference_s.append(time.perf_counter() - t0)

    try:
        pair.engine()  # warm-up: page in buffers, build key schedules, start thread pools
        pair.reference()
        benchmark.pedantic(pair.engine, setup=timed_reference, rounds=rounds)
    finally:
        pair.cleanup()
    if benchmark.stats is None:  # --benchmark-disable: each side ran once, nothing to compare
        return
    engine_s = list(benchmark.stats.stats.data)
    ratios = pair.round_ratios(engine_s, reference_s)
    info = engine.backend_info()
    benchmark.extra_info.update(
        case=ratio_case.name, ratio=statistics.median(ratios), round_ratios=ratios,
        reference_seconds=reference_s, engine_units=pair.engine_units,
        reference_units=pair.reference_units, engine_threads=settings.threads,
        backend=f"{info['backend']} {info['version']} ({info['isa']})", **pair.extra_info(len(engine_s)),
    )
