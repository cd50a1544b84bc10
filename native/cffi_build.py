"""Writes the C source of the cffi extension ``engine._native._ffi`` (out-of-line API mode).

Run by CMake: ``python native/cffi_build.py OUTPUT.c``. cffi never parses the ipsec-mb or OpenSSL
headers; it sees only our own small API, mirrored in ``engine_aead.cdef``.
"""

import pathlib
import sys

import cffi

HERE = pathlib.Path(__file__).parent

ffibuilder = cffi.FFI()
ffibuilder.cdef((HERE / "engine_aead.cdef").read_text())
ffibuilder.set_source("engine._native._ffi", '#include "engine_aead.h"')

if __name__ == "__main__":
    ffibuilder.emit_c_code(sys.argv[1])
