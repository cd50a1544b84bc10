"""The cffi binding declares exactly the C API of native/include/engine_aead.h: its declarations
are made from the header at build time (native/cffi_build.py), so every function and constant
the header declares is callable or readable from Python, with the header's values."""

from __future__ import annotations

import re
from pathlib import Path

from engine._native._ffi import ffi, lib

HEADER = Path(__file__).resolve().parents[1] / "native" / "include" / "engine_aead.h"


def _header() -> tuple[set[str], dict[str, str]]:
    text = re.sub(r"/\*.*?\*/", " ", HEADER.read_text(), flags=re.S)
    functions = set(re.findall(r"^[a-z][\w\s\*]*?\b(engine_\w+)\s*\(", text, flags=re.M))
    constants = dict(re.findall(r"^#define (ENGINE_\w+) (\S.*)$", text, flags=re.M))
    constants.pop("ENGINE_WUR", None)
    return functions, constants


def test_every_function_of_the_header_is_bound():
    functions, _ = _header()
    assert len(functions) >= 25, functions
    missing = sorted(f for f in functions if not hasattr(lib, f))
    assert not missing, missing
    for name in functions:  # a function, typed as the header declares it
        assert ffi.typeof(getattr(lib, name)).kind == "function", name


def test_every_constant_of_the_header_has_its_value():
    _, constants = _header()
    assert len(constants) >= 30, constants
    for name, expression in constants.items():
        value = expression.strip()
        for other, v in constants.items():  # constants defined from others
            value = re.sub(rf"\b{other}\b", f"({v})", value)
        value = re.sub(r"(\d+)(ULL|UL|U|u|ull)\b", r"\1", value)
        assert getattr(lib, name) == eval(value), (name, expression)  # noqa: S307 - our header

