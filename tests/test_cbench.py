"""The C benchmark driver is a developer tool: the benchmarks build it from the checkout into
build/, and no install puts it into the environment's bin (issue 22; docs/packaging.md)."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import engine
from bench import compare

ROOT = Path(__file__).resolve().parents[1]


def test_the_driver_is_built_in_the_checkout_and_runs():
    driver = compare.c_driver()
    assert driver is not None and Path(driver).is_relative_to(ROOT / "build"), driver
    backend = engine.backend_info()["backend"]
    assert compare.run_c(4096, 8, 1, backend, 1) > 0


def test_no_install_puts_the_driver_into_bin():
    assert not (Path(sysconfig.get_path("scripts")) / "engine-cbench").exists()
