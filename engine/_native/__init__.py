"""The binding layer: the only Python code that touches cffi and cdata.

Everything here is thin: each function hands already-validated buffers to one C function of
``native/include/engine_aead.h`` and turns its integer result into an exception in one place,
:func:`_check`. Callers (``engine.aead``) validate types, lengths and shapes first, against the
sizes this module reads from C at import time.

Beside the cffi module sits ``_objects`` (``native/python/``), which builds Python objects where
cffi cannot: in bulk where a batch must end as one per record (:func:`ascii_strings`,
:func:`field_values`, :func:`with_field`, :func:`value_kinds`, :func:`packed_size`,
:func:`pack_into`), and the bytes of one
message (:func:`seal_message`, :func:`open_message`, which take a :attr:`KeyHandle.address`). It
is imported only here, and reaches the core through addresses this module hands it.
"""

from __future__ import annotations

from ..errors import (
    BackendUnavailable,
    InvalidArgument,
    InvalidArgumentType,
    InvalidTag,
    MessageTooLong,
    NativeError,
)
from ._ffi import ffi, lib
from ._objects import (  # noqa: F401 (re-exported)
    BYTES_VALUES,
    NONE_VALUES,
    OTHER_VALUES,
    STR_VALUES,
    ascii_strings,
    bytes_layout,
    field_values,
    open as open_message,
    open_list,
    open_text_token,
    pack_into,
    packed_size,
    seal as seal_message,
    seal_list,
    seal_text_token,
    set_core,
    set_errors,
    token_header,
    value_kinds,
    with_field,
)

KEY_BYTES: int = lib.ENGINE_KEY_BYTES
TAG_BYTES: int = lib.ENGINE_TAG_BYTES
NONCE_MIN_BYTES: int = lib.ENGINE_NONCE_MIN_BYTES
NONCE_MAX_BYTES: int = lib.ENGINE_NONCE_MAX_BYTES
MESSAGE_MAX_BYTES: int = lib.ENGINE_MESSAGE_MAX_BYTES
XAES_NONCE_BYTES: int = lib.ENGINE_XAES_NONCE_BYTES

ALGORITHMS: dict[str, int] = {
    "aes-256-gcm": lib.ENGINE_ALG_AES_GCM,
    "xaes-256-gcm": lib.ENGINE_ALG_XAES_GCM,
}

BACKENDS: dict[str, int] = {
    "ipsec-mb": lib.ENGINE_BACKEND_IPSECMB,
    "openssl": lib.ENGINE_BACKEND_OPENSSL,
}
_BACKEND_NAMES = {v: k for k, v in BACKENDS.items()}

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
    if rc == lib.ENGINE_EOVERLAP:
        raise InvalidArgument(
            "the output buffer overlaps an input (or another output) at a different position; "
            "give a separate buffer, or exactly the input's own memory to work in place"
        )
    if rc == lib.ENGINE_ETHREAD:
        raise NativeError("a worker thread could not be started")
    raise NativeError(f"native error {rc}")


# _objects raises its argument errors as the engine's and core result codes through _check, and
# calls the core's single-message functions in this module (one copy of the core in the process).
set_errors(InvalidArgumentType, InvalidArgument, MessageTooLong, InvalidTag, _check)
set_core({name: int(ffi.cast("uintptr_t", ffi.addressof(lib, f"engine_{name}")))
          for name in ("seal", "open", "seal_batch_each", "open_batch_each", "seal_tokens",
                       "open_tokens", "b64url_encode_batch", "b64url_decode_batch",
                       "key_algorithm")})


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
    """A native key: key schedule and GHASH tables (for ``"xaes-256-gcm"``, the derivation's key
    schedule and subkey), wiped by C when this object is collected.

    ``address`` is where it lives, for :func:`seal_message` and :func:`open_message` (valid while
    this object is alive: hold it across the call). Not picklable: native state is created in
    each process from key material it fetched itself.
    """

    __slots__ = ("_ptr", "address", "backend", "__weakref__")

    def __init__(self, key, backend: str, algorithm: str = "aes-256-gcm") -> None:
        out = ffi.new("engine_key **")
        _check(lib.engine_key_new_alg(out, BACKENDS[backend], ALGORITHMS[algorithm],
                                      ffi.from_buffer(key)))
        self._own(out[0], backend)

    @classmethod
    def _adopt(cls, ptr, backend: str) -> "KeyHandle":
        """A handle owning a key the core has just made (a derived key)."""
        self = cls.__new__(cls)
        self._own(ptr, backend)
        return self

    def _own(self, ptr, backend: str) -> None:
        self._ptr = ffi.gc(ptr, lib.engine_key_free)
        self.address = int(ffi.cast("uintptr_t", self._ptr))
        self.backend = backend

    def __repr__(self) -> str:
        return f"<KeyHandle backend={self.backend!r}>"

    def __reduce__(self):
        raise TypeError("native key handles cannot be pickled; create one in each process")


def _from(buf):
    return _NULL if buf is None else ffi.from_buffer(buf)


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


def seal_batch_keys(backend: str, algorithm: str, n: int, keys, data, offsets, out, nonces,
                    nonce_len: int, tags, aad, aad_offsets, aad_length: int, threads: int) -> None:
    """Seals n records, record i under ``keys[i]`` (see engine_seal_batch_keys)."""
    _check(lib.engine_seal_batch_keys(
        BACKENDS[backend], ALGORITHMS[algorithm], n, ffi.from_buffer(keys), _from(data),
        _i64(offsets), _from(out), ffi.from_buffer(nonces), nonce_len, ffi.from_buffer(tags),
        _from(aad), _i64(aad_offsets), aad_length, threads))


def open_batch_keys(backend: str, algorithm: str, n: int, keys, data, offsets, out, nonces,
                    nonce_len: int, tags, aad, aad_offsets, aad_length: int, failed,
                    threads: int) -> int:
    """Opens n records, record i under ``keys[i]``; marks failures and returns how many."""
    return _check(lib.engine_open_batch_keys(
        BACKENDS[backend], ALGORITHMS[algorithm], n, ffi.from_buffer(keys), _from(data),
        _i64(offsets), _from(out), ffi.from_buffer(nonces), nonce_len, ffi.from_buffer(tags),
        _from(aad), _i64(aad_offsets), aad_length, ffi.from_buffer(failed), threads))


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


CHUNK_BYTES: int = lib.ENGINE_CHUNK_BYTES
CHUNK_SEALED_BYTES: int = lib.ENGINE_CHUNK_SEALED_BYTES
CHUNK_NONCE_BYTES: int = lib.ENGINE_CHUNK_NONCE_BYTES
CHUNK_MAX: int = lib.ENGINE_CHUNK_MAX


def chunks_seal(key: KeyHandle, base_nonce, first: int, n: int, data, length: int, out,
                threads: int) -> None:
    """Seals ``length`` bytes of ``data`` as chunks first .. first+n-1 of a chunked message into
    ``out`` in the message layout (see engine_chunks_seal)."""
    _check(lib.engine_chunks_seal(key._ptr, ffi.from_buffer(base_nonce), first, n,
                                  ffi.from_buffer(data), length, ffi.from_buffer(out), threads))


def chunks_open(key: KeyHandle, base_nonce, first: int, n: int, data, length: int, out,
                threads: int) -> int:
    """Opens n sealed chunks (``length`` bytes of ``data``) into ``out``; returns how many
    leading chunks authenticated (see engine_chunks_open)."""
    return _check(lib.engine_chunks_open(key._ptr, ffi.from_buffer(base_nonce), first, n,
                                         ffi.from_buffer(data), length, ffi.from_buffer(out),
                                         threads))


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


def hmac_sha256_batch(key: bytes, n: int, data, offsets, out, bits: int, threads: int) -> None:
    """The first ``bits`` bits of HMAC-SHA-256(key, record i) into ``out`` (n rows of
    ceil(bits / 8) bytes)."""
    _check(lib.engine_hmac_sha256_batch(ffi.from_buffer(key), len(key), n, _from(data),
                                        _i64(offsets), _from(out), bits, threads))


NORM_TRIM: int = lib.ENGINE_NORM_TRIM
NORM_LOWER: int = lib.ENGINE_NORM_LOWER
NORM_EMAIL: int = lib.ENGINE_NORM_EMAIL
NORM_DIGITS: int = lib.ENGINE_NORM_DIGITS


def normalize_batch(flags: int, n: int, data, offsets, out, lengths, bad, threads: int) -> None:
    """Normalises n records (see engine_normalize_batch): record i to ``out`` at its input
    position, its length to ``lengths[i]``, ``bad[i]`` = 1 when it fails the rules."""
    _check(lib.engine_normalize_batch(flags, n, _from(data), _i64(offsets), _from(out),
                                      _i64(lengths), ffi.from_buffer(bad), threads))


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
    return KeyHandle._adopt(out[0], key.backend), bytes(extra)
