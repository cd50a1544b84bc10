"""What a failed request to Vault says: Vault's reason, the TLS problem behind an exception, and
the address as a message may show it.

requests wraps urllib3's exceptions, which wrap those of ``ssl`` and ``socket``;
:func:`exception_chain` walks down to them, :func:`tls_problem` names a TLS failure in the words of
:data:`TLS_PROBLEMS` (the ``problem`` of :class:`~engine.vault.VaultTLSError`). Standard library
only.
"""

from __future__ import annotations

import ssl
import urllib.parse
from typing import Iterator

__all__ = ["TLS_PROBLEMS", "exception_chain", "redact_url", "tls_problem", "vault_reason"]


def redact_url(url: str) -> str:
    """``url`` as it may be shown: user name and password replaced by ``***``, the query
    replaced by ``***``, and no fragment.

    >>> redact_url("https://user:pw@vault:8200/x?token=s.abc")
    'https://***@vault:8200/x?***'
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = "***" if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def vault_reason(exc: BaseException) -> str:
    """Vault's first error string in an hvac exception, shortened; never request data."""
    errors = getattr(exc, "errors", None)
    text = str(errors[0]) if isinstance(errors, (list, tuple)) and errors else ""
    if not text and "HTTP request to an HTTPS server" in str(getattr(exc, "text", "") or ""):
        text = "the server speaks HTTPS at this address: use https://"
    text = " ".join(text.replace("*", " ").split())
    # Batch answers carry whole response bodies; keep only a short, single-item reason.
    return text[:160] if not text.startswith("{") else "request rejected"


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it wraps (requests -> urllib3 -> ssl/socket)."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < 16:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [x for x in (e.__cause__, e.__context__, getattr(e, "reason", None),
                             *getattr(e, "args", ())) if isinstance(x, BaseException)]


_VERIFY_PROBLEMS = {
    2: "untrusted", 7: "untrusted", 18: "untrusted", 19: "untrusted", 20: "untrusted",
    21: "untrusted", 9: "not-yet-valid", 10: "expired",
    62: "hostname-mismatch", 64: "hostname-mismatch",
}
TLS_PROBLEMS = {
    "untrusted": "the server's certificate is not issued by a CA this client trusts "
                 "(VAULT_CACERT or verify=)",
    "expired": "the server's certificate has expired",
    "not-yet-valid": "the server's certificate is not valid yet",
    "hostname-mismatch": "the server's certificate is not valid for the host name or IP "
                         "address of this Vault address",
    "client-certificate": "the server requires a client certificate it trusts, or refused the "
                          "one sent (VAULT_CLIENT_CERT, VAULT_CLIENT_KEY)",
    "not-tls": "the server does not speak TLS at this address (http:// or another port?)",
    "configuration": "the CA bundle, client certificate or key cannot be loaded",
    "handshake": "the TLS handshake failed",
}
_CLIENT_CERT_ALERTS = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA",
                       "CERTIFICATE_UNKNOWN", "HANDSHAKE_FAILURE")


def tls_problem(exc: BaseException) -> tuple[str, str] | None:
    """(problem, OpenSSL's words) when ``exc`` wraps a TLS failure, else None."""
    for e in exception_chain(exc):
        if isinstance(e, ssl.SSLCertVerificationError):
            return _VERIFY_PROBLEMS.get(e.verify_code, "handshake"), str(e.verify_message)
        if isinstance(e, ssl.SSLEOFError):
            return "handshake", "the server closed the connection during the handshake"
        if isinstance(e, ssl.SSLError):
            reason = str(e.reason or e.__class__.__name__)
            if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER_FAILURE"):
                return "not-tls", reason
            if any(alert in reason for alert in _CLIENT_CERT_ALERTS):
                return "client-certificate", reason
            if e.library in ("PEM", "X509") or "NO_CERTIFICATE" in reason:
                return "configuration", reason
            return "handshake", reason
    return None
