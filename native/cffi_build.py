"""Writes the C source of the cffi extension ``engine._native._ffi`` (out-of-line API mode).

Run by CMake: ``python native/cffi_build.py OUTPUT.c``. cffi never parses the ipsec-mb or OpenSSL
headers; it sees only our own small API, and its declarations are made here from
``include/engine_aead.h`` itself, so the two cannot drift apart: the header without its
comments, its include guard's inner conditional blocks (C++ linkage, compiler attributes) and
its attribute macro, with each integer constant as ``#define NAME ...`` (cffi takes the value
from the compiled header).
"""

import pathlib
import re
import sys

import cffi

HERE = pathlib.Path(__file__).parent
HEADER = HERE / "include" / "engine_aead.h"
ATTRIBUTE_MACRO = "ENGINE_WUR"


def cdef_from_header(text: str) -> str:
    """The cffi declarations of the C API declared in ``text`` (engine_aead.h)."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    lines, depth = [], 0
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            directive = stripped[1:].split()[0]
            if directive.startswith("if"):
                depth += 1
            elif directive == "endif":
                depth -= 1
            elif directive == "define" and depth == 1:
                parts = stripped.split(None, 2)
                if len(parts) == 3 and parts[1] != ATTRIBUTE_MACRO:
                    lines.append(f"#define {parts[1]} ...")
            continue
        if depth == 1 and stripped:
            lines.append(line.replace(ATTRIBUTE_MACRO, "").rstrip())
    return "\n".join(lines) + "\n"


ffibuilder = cffi.FFI()
ffibuilder.cdef(cdef_from_header(HEADER.read_text()))
ffibuilder.set_source("engine._native._ffi", '#include "engine_aead.h"')

if __name__ == "__main__":
    ffibuilder.emit_c_code(sys.argv[1])
