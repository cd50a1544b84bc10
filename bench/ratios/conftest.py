"""Options of the ratio benchmarks (``bench.gate`` passes them). This directory has no
``__init__.py`` on purpose: asv imports every package under ``bench/`` to find its benchmarks,
and these modules need pytest, which asv's environment does not have."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cases import CASES, Case, Settings


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ratio benchmarks")
    group.addoption("--case", action="append", default=[], dest="ratio_cases", metavar="NAME",
                    help="run only this case (repeatable; default: all registered cases)")
    group.addoption("--short", action="store_true", dest="ratio_short",
                    help="only the cases of the short gate")
    group.addoption("--rounds", type=int, default=21, dest="ratio_rounds",
                    help="interleaved rounds per case (default 21)")
    group.addoption("--engine-threads", type=int, default=None, dest="ratio_threads",
                    help="threads for the engine in its all-thread cases (default: all cores)")


def selected_cases(config: pytest.Config) -> list[Case]:
    names = config.getoption("ratio_cases")
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise pytest.UsageError(f"unknown case(s) {unknown}; registered: {list(CASES)}")
    chosen = [CASES[n] for n in names] if names else list(CASES.values())
    return [c for c in chosen if c.short] if config.getoption("ratio_short") else chosen


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "ratio_case" in metafunc.fixturenames:
        cases = selected_cases(metafunc.config)
        metafunc.parametrize("ratio_case", cases, ids=[c.name for c in cases])


@pytest.fixture
def settings(request: pytest.FixtureRequest) -> Settings:
    return Settings(threads=request.config.getoption("ratio_threads"))


@pytest.fixture
def rounds(request: pytest.FixtureRequest) -> int:
    return request.config.getoption("ratio_rounds")


RATIOS_DIR = Path(__file__).resolve().parent


def _names_this_directory(config: pytest.Config) -> bool:
    for arg in config.args:
        path = Path(arg.split("::", 1)[0]).resolve()
        if path == RATIOS_DIR or RATIOS_DIR in path.parents:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``pytest --benchmark-only`` (at the repository's root too) runs these cases and nothing
    else; a plain ``pytest`` leaves them out (benchmarks, not tests) unless this directory is
    named on its command line, as the gate does."""
    benchmarks_only = config.getoption("benchmark_only", False)
    wanted = benchmarks_only or _names_this_directory(config)
    keep, drop = [], []
    for item in items:
        ratio = item.get_closest_marker("ratio") is not None
        (keep if (ratio and wanted) or (not ratio and not benchmarks_only) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
