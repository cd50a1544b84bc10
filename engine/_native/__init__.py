"""The binding layer: the only Python code that touches cffi and cdata.

Everything here is thin: each function hands already-validated buffers to one C function of
``native/include/engine_aead.h`` and turns its integer result into an exception in one place,
:func:`_check`. Callers (``engine.aead``) validate types, lengths and shapes first, against the
sizes this module reads from C at import time.

Beside the cffi module sits ``_objects`` (``native/python/objects.c``), which builds Python
objects in bulk where a batch must end as one per record: :func:`ascii_strings`,
:func:`field_values`, :func:`with_field`, :func:`value_kinds`, :func:`pack`. It is imported
only here.
"""

from __future__ import annotations

import ctypes

from ..errors import BackendUnavailable, InvalidArgument, InvalidArgumentType, InvalidTag, NativeError
from ._ffi import ffi, lib
from ._objects import (  # noqa: F401 (re-exported)
    ascii_strings,
    field_values,
    pack,
    set_errors,
    value_kinds,
    with_field,
)

set_errors(InvalidArgumentType, InvalidArgument)  # _objects' own argument errors, typed

KEY_BYTES: int = lib.ENGINE_KEY_BYTES
TAG_BYTES: int = lib.ENGINE_TAG_BYTES
NONCE_MIN_BYTES: int = lib.ENGINE_NONCE_MIN_BYTES
NONCE_MAX_BYTES: int = lib.ENGINE_NONCE_MAX_BYTES
MESSAGE_MAX_BYTES: int = lib.ENGINE_MESSAGE_MAX_BYTES

BACKENDS: dict[str, int] = {
    "ipsec-mb": lib.ENGINE_BACKEND_IPSECMB,
    "openssl": lib.ENGINE_BACKEND_OPENSSL,
}
_BACKEND_NAMES = {v: k for k, v in BACKENDS.items()}

# One-message outputs are written straight into a fresh bytes object, as a C extension does with
# PyBytes_FromStringAndSize(NULL, n) before filling it: the object is new, referenced only here
# and not yet hashed. Small ones come from bytes(n) (never n < 2: CPython shares b"" and the
# one-byte objects); large ones from PyBytes_FromStringAndSize(NULL, n), which skips zeroing.
_UNINITIALISED_MIN = 16384
_bytes_new = ctypes.pythonapi.PyBytes_FromStringAndSize
_bytes_new.restype = ctypes.py_object
_bytes_new.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)

_NULL = ffi.NULL


def _check(rc: int) -> int:
    """Turns a C result code into an exception; returns non-negative results unchanged."""
    if rc >= 0:
        return rc
    if rc == lib.ENGINE_EAUTH:
        raise InvalidTag()
    if rc == lib.ENGINE_EINVAL:
        raise InvalidArgument("the native library rejected an argument")
    if rc == lib.ENGINE_EBACKEND:
        raise BackendUnavailable("the AES-GCM backend is not available on this machine")
    if rc == lib.ENGINE_ENOMEM:
        raise MemoryError("the native library could not allocate memory")
    if rc == lib.ENGINE_ERANDOM:
        raise NativeError("the CSPRNG (OpenSSL RAND_bytes) failed")
    if rc == lib.ENGINE_ETHREAD:
        raise NativeError("a worker thread could not be started")
    raise NativeError(f"native error {rc}")


def backend_available(name: str) -> bool:
    """Whether backend ``name`` is compiled in and can run on this CPU."""
    return bool(lib.engine_backend_available(BACKENDS[name]))


def default_backend() -> str:
    """The backend used when none is forced: ipsec-mb where it can run, else OpenSSL."""
    return _BACKEND_NAMES[lib.engine_backend_default()]


def backend_details(name: str) -> tuple[str, str]:
    """(library version, instruction set in use) of backend ``name``."""
    code = BACKENDS[name]
    return (
        ffi.string(lib.engine_backend_version(code)).decode(),
        ffi.string(lib.engine_backend_isa(code)).decode(),
    )


class KeyHandle:
    """A native key: key schedule and GHASH tables, wiped by C when this object is collected.

    Not picklable: native state is created in each process from key material it fetched itself.
    """

    __slots__ = ("_ptr", "backend", "__weakref__")

    def __init__(self, key, backend: str) -> None:
        out = ffi.new("engine_key **")
        _check(lib.engine_key_new(out, BACKENDS[backend], ffi.from_buffer(key)))
        self._ptr = ffi.gc(out[0], lib.engine_key_free)
        self.backend = backend

    def __repr__(self) -> str:
        return f"<KeyHandle backend={self.backend!r}>"

    def __reduce__(self):
        raise TypeError("native key handles cannot be pickled; create one in each process")


def _from(buf):
    return _NULL if buf is None else ffi.from_buffer(buf)


_seal_chars = lib.engine_seal_chars
_open_chars = lib.engine_open_chars


def bytes_fast_paths(key: KeyHandle, encrypt_general, decrypt_general):
    """``encrypt(nonce, data, associated_data=None)`` and ``decrypt(...)`` specialised for one
    key and ``bytes`` arguments, for AESGCM-style single-message calls where a few hundred
    nanoseconds of Python matter. Anything else (other buffer types, out-of-range sizes) goes to
    ``*_general``, which validates fully and raises the documented errors."""
    ptr, seal_c, open_c, null, new_bytes = key._ptr, _seal_chars, _open_chars, _NULL, _bytes_new
    lo, hi, cap, tag = NONCE_MIN_BYTES, NONCE_MAX_BYTES, MESSAGE_MAX_BYTES, TAG_BYTES
    small = _UNINITIALISED_MIN

    def encrypt(nonce, data, associated_data=None):
        if type(nonce) is bytes and type(data) is bytes and lo <= len(nonce) <= hi:
            if associated_data is None:
                aad, aad_len = null, 0
            elif type(associated_data) is bytes:
                aad, aad_len = associated_data, len(associated_data)
            else:
                return encrypt_general(nonce, data, associated_data)
            length = len(data)
            if length < small:
                out = bytes(length + tag)
            elif length <= cap:
                out = new_bytes(None, length + tag)
            else:
                return encrypt_general(nonce, data, associated_data)
            rc = seal_c(ptr, out, data, length, nonce, len(nonce), aad, aad_len)
            if rc:
                _check(rc)
            return out
        return encrypt_general(nonce, data, associated_data)

    def decrypt(nonce, data, associated_data=None):
        if type(nonce) is bytes and type(data) is bytes and lo <= len(nonce) <= hi:
            if associated_data is None:
                aad, aad_len = null, 0
            elif type(associated_data) is bytes:
                aad, aad_len = associated_data, len(associated_data)
            else:
                return decrypt_general(nonce, data, associated_data)
            length = len(data) - tag
            if length < 2 or length > cap:  # b"" and one-byte bytes are shared: general path
                return decrypt_general(nonce, data, associated_data)
            out = bytes(length) if length < small else new_bytes(None, length)
            rc = open_c(ptr, out, data, length, nonce, len(nonce), aad, aad_len)
            if rc:
                _check(rc)
            return out
        return decrypt_general(nonce, data, associated_data)

    return encrypt, decrypt


def _as_chars(buf):
    """A ``char *`` argument: bytes as they are (cffi passes their buffer), anything else through
    ffi.from_buffer."""
    return buf if type(buf) is bytes else ffi.from_buffer("char[]", buf)


def seal(key: KeyHandle, nonce, nonce_len: int, data, length: int, aad, aad_len: int) -> bytes:
    """Encrypts one message; returns ciphertext followed by the 16-byte tag. Arguments that are
    not ``bytes`` must be C-contiguous buffers; ``aad`` may be None."""
    total = length + TAG_BYTES
    out = bytes(total) if total < _UNINITIALISED_MIN else _bytes_new(None, total)
    nonce, data, aad = _as_chars(nonce), _as_chars(data), _NULL if aad is None else _as_chars(aad)
    rc = _seal_chars(key._ptr, out, data, length, nonce, nonce_len, aad, aad_len)
    if rc:
        _check(rc)
    return out


def open_(key: KeyHandle, nonce, nonce_len: int, data, length: int, aad, aad_len: int) -> bytes:
    """Decrypts one message whose last 16 bytes are the tag; raises InvalidTag on failure."""
    if length < 2:  # CPython shares b"" and the one-byte bytes objects: never write into them
        obj, out = None, ffi.new("char[]", 2)
    else:
        obj = out = bytes(length) if length < _UNINITIALISED_MIN else _bytes_new(None, length)
    nonce, data, aad = _as_chars(nonce), _as_chars(data), _NULL if aad is None else _as_chars(aad)
    rc = _open_chars(key._ptr, out, data, length, nonce, nonce_len, aad, aad_len)
    if rc:
        _check(rc)
    return obj if obj is not None else ffi.buffer(out, length)[:]


def seal_batch(key: KeyHandle, n: int, data, offsets, out, nonces, nonce_len: int,
               fill_nonces: bool, tags, aad, aad_offsets, aad_length: int, threads: int) -> None:
    """Seals n records (see engine_seal_batch); all buffers are contiguous and already checked."""
    _check(lib.engine_seal_batch(
        key._ptr, n, _from(data), ffi.from_buffer("int64_t[]", offsets), _from(out),
        ffi.from_buffer(nonces), nonce_len, 1 if fill_nonces else 0, ffi.from_buffer(tags),
        _from(aad), _NULL if aad_offsets is None else ffi.from_buffer("int64_t[]", aad_offsets),
        aad_length, threads))


def open_batch(key: KeyHandle, n: int, data, offsets, out, nonces, nonce_len: int, tags, aad,
               aad_offsets, aad_length: int, failed, threads: int) -> int:
    """Opens n records; marks failures in ``failed`` (n bytes) and returns how many failed."""
    return _check(lib.engine_open_batch(
        key._ptr, n, _from(data), ffi.from_buffer("int64_t[]", offsets), _from(out),
        ffi.from_buffer(nonces), nonce_len, ffi.from_buffer(tags), _from(aad),
        _NULL if aad_offsets is None else ffi.from_buffer("int64_t[]", aad_offsets), aad_length,
        ffi.from_buffer(failed), threads))


def _i64(arr):
    return _NULL if arr is None else ffi.from_buffer("int64_t[]", arr)


def seal_tokens(key: KeyHandle, n: int, data, offsets, header: bytes, header_is_aad: bool,
                nonce_len: int, out, out_starts, aad, aad_offsets, aad_len: int,
                threads: int) -> None:
    """Seals n records into tokens (header || nonce || ciphertext || tag) at ``out_starts``."""
    _check(lib.engine_seal_tokens(
        key._ptr, n, _from(data), _i64(offsets), ffi.from_buffer(header), len(header),
        int(header_is_aad),
        nonce_len, _from(out), _i64(out_starts), _from(aad), _i64(aad_offsets), aad_len, threads))


def open_tokens(key: KeyHandle, n: int, data, offsets, header_len: int, header_is_aad: bool,
                nonce_len: int, out, out_starts, aad, aad_offsets, aad_len: int, failed,
                threads: int) -> int:
    """Opens n tokens; plaintext i goes to ``out_starts[i]``; returns how many failed."""
    return _check(lib.engine_open_tokens(
        key._ptr, n, _from(data), _i64(offsets), header_len, int(header_is_aad), nonce_len,
        _from(out), _i64(out_starts), _from(aad), _i64(aad_offsets), aad_len,
        ffi.from_buffer(failed), threads))


B64_PREFIX: int = lib.ENGINE_B64_PREFIX
B64_LENGTH: int = lib.ENGINE_B64_LENGTH
B64_CHARACTER: int = lib.ENGINE_B64_CHARACTER
B64_NONCANONICAL: int = lib.ENGINE_B64_NONCANONICAL


def b64url_encode(n: int, data, offsets, prefix: bytes, out, out_offsets, threads: int) -> None:
    """prefix || base64url(record i) into ``out`` at ``out_offsets[i]``."""
    _check(lib.engine_b64url_encode_batch(n, _from(data), _i64(offsets), ffi.from_buffer(prefix),
                                          len(prefix), _from(out), _i64(out_offsets), threads))


def b64url_decode(n: int, data, offsets, prefix: bytes, out, out_offsets, status,
                  threads: int) -> int:
    """Checks the prefix and decodes each record; fills ``status``; returns the bad count."""
    return _check(lib.engine_b64url_decode_batch(n, _from(data), _i64(offsets),
                                                 ffi.from_buffer(prefix), len(prefix), _from(out), _i64(out_offsets),
                                                 ffi.from_buffer(status), threads))


def gather(n: int, src, src_starts, lengths, dst, dst_starts, threads: int) -> None:
    """Copies ``lengths[i]`` bytes from ``src_starts[i]`` to ``dst_starts[i]`` for each i."""
    _check(lib.engine_gather(n, _from(src), _i64(src_starts), _i64(lengths), _from(dst),
                             _i64(dst_starts), threads))


def random_into(buf) -> None:
    """Fills a writable buffer from OpenSSL's CSPRNG."""
    view = memoryview(buf)
    _check(lib.engine_random(ffi.from_buffer(view), view.nbytes))


DERIVE_EXTRA_MAX: int = lib.ENGINE_DERIVE_EXTRA_MAX


def derive_key(key: KeyHandle, info, info_len: int, extra_len: int) -> tuple[KeyHandle, bytes]:
    """HKDF-Expand-SHA512 keyed with ``key`` (see engine_key_derive): a new handle on the same
    backend from the first 32 output bytes, and the ``extra_len`` bytes after them."""
    out = ffi.new("engine_key **")
    extra = bytearray(extra_len)
    _check(lib.engine_key_derive(out, key._ptr, ffi.from_buffer(info), info_len,
                                 ffi.from_buffer(extra), extra_len))
    handle = KeyHandle.__new__(KeyHandle)
    handle._ptr = ffi.gc(out[0], lib.engine_key_free)
    handle.backend = key.backend
    return handle, bytes(extra)
