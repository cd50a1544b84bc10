"""The Vault package's exceptions: every one is a :class:`~engine.keys.KeyProviderError`.

This module needs no ``hvac``: code that only catches Vault errors imports it without the
``vault`` extra. Messages name the Vault address (without credentials), the path and the
operation; they never hold a token, a secret's value or key material.
"""

from __future__ import annotations

from typing import Any

from ..keys.base import KeyProviderError

__all__ = [
    "SecretNotFound",
    "SecretVersionConflict",
    "VaultAuthError",
    "VaultConfigurationError",
    "VaultConflict",
    "VaultError",
    "VaultKeyMissing",
    "VaultOutcomeUnknown",
    "VaultPathNotFound",
    "VaultPermissionDenied",
    "VaultRequestRejected",
    "VaultTLSError",
    "VaultUnavailable",
    "WrappedKeyInvalid",
]


class VaultError(KeyProviderError):
    """Base class of the Vault package's errors."""


class VaultConfigurationError(VaultError, ValueError):
    """The settings (arguments or ``VAULT_*`` variables) are missing or invalid, or the address
    does not lead to a Vault server."""


class VaultUnavailable(VaultError):
    """Vault did not answer (refused, timed out, sealed, 5xx) within the retry budget."""


class VaultOutcomeUnknown(VaultUnavailable):
    """A request that changes state (a Transit ``rotate``, a KV write) failed after it was sent
    (the connection broke, the answer timed out, the node answered 5xx), and Vault could not be
    asked afterwards, within the retry budget, whether it applied. It may have.

    Such requests are never sent twice: the provider reads the state back instead, and raises
    this only when that read fails too. Read the state again once Vault answers (re-running
    the operation is safe: every write the provider makes is a check-and-set or is journaled).

    Attributes:
        operation: what was being done ("rotate the Transit key", ...).
    """

    def __init__(self, message: str, operation: str = "") -> None:
        super().__init__(message)
        self.operation = operation

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.operation))


class VaultTLSError(VaultError):
    """The TLS connection to Vault failed for a reason that retrying does not fix; the message
    names it.

    Attributes:
        problem: ``"untrusted"`` (the server's certificate is not from a CA this client trusts),
            ``"expired"``, ``"not-yet-valid"``, ``"hostname-mismatch"`` (issued for another host
            name or IP address), ``"client-certificate"`` (the server requires a client
            certificate, or refused the one sent), ``"not-tls"`` (no TLS at that address),
            ``"configuration"`` (a CA bundle, client certificate or key that cannot be loaded)
            or ``"handshake"`` (any other handshake failure).
    """

    def __init__(self, message: str, problem: str = "handshake") -> None:
        super().__init__(message)
        self.problem = problem

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.problem))


class VaultAuthError(VaultError):
    """Vault rejected the credentials: an invalid, expired or revoked token, or a failed
    AppRole/Kubernetes login."""


class VaultPermissionDenied(VaultError):
    """The token is valid but its policies deny the operation on the path named."""


class VaultPathNotFound(VaultError, LookupError):
    """Vault answered HTTP 404: nothing at that path (or no such API endpoint)."""


class VaultRequestRejected(VaultError):
    """Vault answered HTTP 400 (an invalid request).

    Attributes:
        reason: Vault's first error string, shortened (never request data).
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def cas_mismatch(self) -> bool:
        """True when KV v2 refused a write because its check-and-set version is not current."""
        return "check-and-set" in self.reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.reason))


class VaultKeyMissing(VaultError, LookupError):
    """The Transit key does not exist (and the provider may not or could not create it)."""


class WrappedKeyInvalid(VaultError):
    """A stored wrapped data key does not unwrap, or unwraps to a key that fails its check value
    (tampered, moved between versions, or written by something else)."""


class VaultConflict(VaultError):
    """A check-and-set write lost to other writers more times than the retry budget allows."""


class SecretNotFound(VaultPathNotFound):
    """No secret (or no such version of it) exists under that name."""


class SecretVersionConflict(VaultConflict):
    """A write with ``cas=N`` found another latest version (someone else wrote first)."""
