"""HashiCorp Vault and OpenBao: the key provider and the application secrets.

Modules, from the bottom: :mod:`~engine.vault.errors` (the exceptions; no ``hvac`` needed),
:mod:`~engine.vault.failures` (what a failed request says: Vault's reason, the TLS problem),
:mod:`~engine.vault.options` (the settings, checked: addresses, TLS files, ``VAULT_*``),
:mod:`~engine.vault.nodes` (which node of an HA cluster a request goes to, the active one),
:mod:`~engine.vault.connection` (HTTP, authentication, TLS, retries, error mapping),
:mod:`~engine.vault.kv` (KV v2 with check-and-set, and the key store's layout in it),
:mod:`~engine.vault.transit` (the Transit key that wraps data keys),
:mod:`~engine.vault.provider` (:class:`VaultKeyProvider`) and :mod:`~engine.vault.secrets`
(:class:`VaultSecrets`).

Everything but the exceptions needs ``hvac`` (the ``vault`` extra) and is imported on first use,
so ``import engine.vault`` works without it.
"""

from __future__ import annotations

import importlib

from .errors import (
    SecretNotFound,
    SecretVersionConflict,
    VaultAuthError,
    VaultConfigurationError,
    VaultConflict,
    VaultError,
    VaultKeyMissing,
    VaultOutcomeUnknown,
    VaultPathNotFound,
    VaultPermissionDenied,
    VaultRequestRejected,
    VaultTLSError,
    VaultUnavailable,
    WrappedKeyInvalid,
)

_LAZY = {
    "DEFAULT_JWT_PATH": "connection",
    "RetryPolicy": "connection",
    "RewrapReport": "provider",
    "DEFAULT_SECRETS_PATH": "secrets",
    "SecretData": "secrets",
    "VaultConnection": "connection",
    "VaultKeyProvider": "provider",
    "VaultSecrets": "secrets",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_JWT_PATH",
    "RetryPolicy",
    "RewrapReport",
    "DEFAULT_SECRETS_PATH",
    "SecretData",
    "SecretNotFound",
    "SecretVersionConflict",
    "VaultAuthError",
    "VaultConfigurationError",
    "VaultConflict",
    "VaultConnection",
    "VaultError",
    "VaultKeyMissing",
    "VaultKeyProvider",
    "VaultOutcomeUnknown",
    "VaultPathNotFound",
    "VaultPermissionDenied",
    "VaultRequestRejected",
    "VaultSecrets",
    "VaultTLSError",
    "VaultUnavailable",
    "WrappedKeyInvalid",
]
