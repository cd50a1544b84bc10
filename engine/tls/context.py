"""Hardened ``ssl.SSLContext`` factories for TLS 1.2/1.3 and strict mTLS."""
from __future__ import annotations

import ctypes
import logging
import os
import ssl
import sys

from cryptography import x509

from .certs import _check_pair, _load_private_key, _read, load_certificate
from .errors import CertificateError, TLSError
from .policy import TLS12_CIPHERS, TLS13_CIPHERSUITES, PathLike

log = logging.getLogger(__name__)


def _ssl_ctx_pointer(ctx: ssl.SSLContext) -> int | None:
    """Address of the ``SSL_CTX*`` of a CPython ``_ssl._SSLContext`` (first
    field after PyObject_HEAD since CPython 3.x)."""
    if sys.implementation.name != "cpython" or not (3, 7) <= sys.version_info[:2] < (3, 15):
        return None
    offset = object.__basicsize__
    if type(ctx).__basicsize__ < offset + ctypes.sizeof(ctypes.c_void_p):
        return None
    return ctypes.c_void_p.from_address(id(ctx) + offset).value


def set_tls13_ciphersuites(ctx: ssl.SSLContext, suites: str) -> bool:
    """Set the TLS 1.3 suites of ``ctx`` via OpenSSL's ``SSL_CTX_set_ciphersuites``
    (Python 3.11's ``ssl`` has no binding for it), through ctypes.

    Safety checks: the ``SSL_CTX*`` read from the CPython object is
    cross-checked with ``SSL_CTX_get_options`` against ``ctx.options`` before
    anything is written.  Returns False (nothing changed) when anything looks
    wrong or the environment variable ``ENGINE_TLS_NO_CTYPES`` is set.
    """
    if os.environ.get("ENGINE_TLS_NO_CTYPES") or ssl.OPENSSL_VERSION_INFO < (1, 1, 1):
        return False
    try:
        import _ssl
        lib = ctypes.CDLL(_ssl.__file__)  # resolves symbols of the libssl _ssl uses
        get_options, set_suites = lib.SSL_CTX_get_options, lib.SSL_CTX_set_ciphersuites
        get_options.argtypes, get_options.restype = [ctypes.c_void_p], ctypes.c_uint64
        set_suites.argtypes, set_suites.restype = [ctypes.c_void_p, ctypes.c_char_p], ctypes.c_int
        ptr = _ssl_ctx_pointer(ctx)
        if not ptr or get_options(ptr) != int(ctx.options):
            return False
        return set_suites(ptr, suites.encode("ascii")) == 1
    except (AttributeError, OSError, ImportError, TypeError, ValueError):
        return False


def _restrict_tls13(ctx: ssl.SSLContext) -> bool:
    """Limit TLS 1.3 to :data:`TLS13_CIPHERSUITES`; verified with ``get_ciphers``.
    On failure the OpenSSL defaults stay (server preference still selects
    TLS_AES_256_GCM_SHA384 first)."""
    return (set_tls13_ciphersuites(ctx, ":".join(TLS13_CIPHERSUITES))
            and tuple(tls13_ciphersuites(ctx)) == TLS13_CIPHERSUITES)


def tls13_ciphersuites(ctx: ssl.SSLContext) -> list[str]:
    """TLS 1.3 suites currently enabled on ``ctx``, in preference order."""
    return [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"]


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(":".join(TLS12_CIPHERS))
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    if not _restrict_tls13(ctx):
        log.warning("could not restrict TLS 1.3 cipher suites; OpenSSL defaults apply "
                    "(server preference still selects TLS_AES_256_GCM_SHA384)")


def _load_trust(ctx: ssl.SSLContext, ca_path: PathLike, crl_path: PathLike | None) -> None:
    load_certificate(ca_path)  # typed error for corrupt input
    try:
        ctx.load_verify_locations(cafile=os.fspath(ca_path))
        if crl_path is not None:
            data = _read(crl_path, "CRL")
            try:
                x509.load_pem_x509_crl(data)
            except ValueError:
                raise CertificateError(f"corrupt or non-PEM CRL: {os.fspath(crl_path)}") from None
            ctx.load_verify_locations(cafile=os.fspath(crl_path))
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    except ssl.SSLError as exc:
        raise CertificateError(f"cannot load trust material: {exc.reason}") from None


def _load_identity(ctx: ssl.SSLContext, cert_path: PathLike, key_path: PathLike) -> None:
    cert = load_certificate(cert_path)
    _check_pair(cert, _load_private_key(key_path), cert_path)
    try:
        ctx.load_cert_chain(os.fspath(cert_path), os.fspath(key_path))
    except ssl.SSLError as exc:
        raise CertificateError(f"cannot load certificate/key: {exc.reason}") from None


def server_context(cert_path: PathLike, key_path: PathLike, ca_path: PathLike,
                   crl_path: PathLike | None = None, require_client_cert: bool = True) -> ssl.SSLContext:
    """Server-side context: TLS 1.2-1.3, strong suites, (m)TLS.

    Args:
        cert_path, key_path: the server's certificate and private key.
        ca_path: CA certificate(s) used to verify client certificates.
        crl_path: CRL to check client (leaf) certificates against.
        require_client_cert: strict mTLS (production): a client certificate
            is required (``CERT_REQUIRED``); if False it is optional but still
            verified when presented.
    Returns:
        A configured ``ssl.SSLContext``. Rebuild it after the CRL or pair changes.
    Raises:
        CertificateError: corrupt PEM, key/certificate mismatch, bad CA or CRL.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    _load_identity(ctx, cert_path, key_path)
    _load_trust(ctx, ca_path, crl_path)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(cert_path: PathLike | None = None, key_path: PathLike | None = None,
                   ca_path: PathLike | None = None, crl_path: PathLike | None = None) -> ssl.SSLContext:
    """Client-side context; server certificate and hostname always verified.

    Args:
        cert_path, key_path: client certificate and key for mTLS (optional,
            but both or neither).
        ca_path: CA certificate(s) trusted for the server (required; system
            trust is deliberately not used).
        crl_path: optional CRL checked against the server certificate.
    Returns:
        A configured ``ssl.SSLContext`` (``check_hostname=True``, ``CERT_REQUIRED``).
    Raises:
        TLSError: ``ca_path`` missing, or only one of cert/key given.
        CertificateError: corrupt PEM or key/certificate mismatch.
    """
    if ca_path is None:
        raise TLSError("ca_path is required: internal services are verified against the internal CA")
    if (cert_path is None) != (key_path is None):
        raise TLSError("cert_path and key_path must be given together")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_trust(ctx, ca_path, crl_path)
    if cert_path is not None and key_path is not None:  # both or neither, checked above
        _load_identity(ctx, cert_path, key_path)
    return ctx
