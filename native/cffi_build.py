"""Writes the C source of the cffi extension ``engine._native._ffi`` (out-of-line API mode).

Run by CMake: ``python native/cffi_build.py OUTPUT.c``. cffi never parses the ipsec-mb or OpenSSL
headers; it sees only our own small API, mirrored in ``engine_aead.cdef``.
"""

import pathlib
import sys

import cffi

HERE = pathlib.Path(__file__).parent

ffibuilder = cffi.FFI()
# Single-message entry points typed with `char *`: cffi hands a bytes object to a `char *`
# parameter as a pointer to its buffer, which saves an ffi.from_buffer() per argument on the
# small-message path. The tag travels after the ciphertext, as in AESGCM's format.
WRAPPERS_CDEF = """
int engine_seal_chars(const engine_key *key, char *out, const char *in, uint64_t len,
                      const char *nonce, size_t nonce_len, const char *aad, uint64_t aad_len);
int engine_open_chars(const engine_key *key, char *out, const char *in, uint64_t len,
                      const char *nonce, size_t nonce_len, const char *aad, uint64_t aad_len);
"""
WRAPPERS_SOURCE = """
#include "engine_aead.h"
static int engine_seal_chars(const engine_key *key, char *out, const char *in, uint64_t len,
                             const char *nonce, size_t nonce_len, const char *aad,
                             uint64_t aad_len) {
    return engine_seal(key, (uint8_t *)out, (uint8_t *)out + len, (const uint8_t *)in, len,
                       (const uint8_t *)nonce, nonce_len, (const uint8_t *)aad, aad_len);
}
static int engine_open_chars(const engine_key *key, char *out, const char *in, uint64_t len,
                             const char *nonce, size_t nonce_len, const char *aad,
                             uint64_t aad_len) {
    return engine_open(key, (uint8_t *)out, (const uint8_t *)in, len, (const uint8_t *)in + len,
                       (const uint8_t *)nonce, nonce_len, (const uint8_t *)aad, aad_len);
}
"""

ffibuilder.cdef((HERE / "engine_aead.cdef").read_text() + WRAPPERS_CDEF)
ffibuilder.set_source("engine._native._ffi", WRAPPERS_SOURCE)

if __name__ == "__main__":
    ffibuilder.emit_c_code(sys.argv[1])
