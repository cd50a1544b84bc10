"""Key providers: where versioned AES-256 keys come from."""

from ._state import KeyStateCorrupted
from .base import (
    KeyLockBusy,
    KeyProvider,
    KeyProviderError,
    KeyState,
    KeyUsageExhausted,
    KeyVersionInfo,
    KeyVersionNotUsable,
    MasterKeyMismatch,
    ProviderConfig,
    UnknownKeyVersion,
    VersionedKey,
)
from .environment import (
    DerivationPolicy,
    EnvironmentKeyProvider,
    EnvironmentProviderConfig,
    MasterKeyError,
)
from .static import InvalidKeyMaterial, StaticKeyProvider

# The Vault provider needs hvac (the `vault` extra): imported on first use.
_VAULT = frozenset({
    "RetryPolicy", "RewrapReport", "VaultAuthError", "VaultConfigurationError", "VaultConflict",
    "VaultConnection", "VaultError", "VaultKeyMissing", "VaultKeyProvider",
    "VaultPermissionDenied", "VaultUnavailable", "WrappedKeyInvalid",
})


def __getattr__(name: str):
    if name in _VAULT:
        from . import vault

        return getattr(vault, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [*sorted(_VAULT),
    "DerivationPolicy",
    "EnvironmentKeyProvider",
    "EnvironmentProviderConfig",
    "InvalidKeyMaterial",
    "KeyLockBusy",
    "KeyProvider",
    "KeyProviderError",
    "KeyState",
    "KeyStateCorrupted",
    "KeyUsageExhausted",
    "KeyVersionInfo",
    "KeyVersionNotUsable",
    "MasterKeyError",
    "MasterKeyMismatch",
    "ProviderConfig",
    "StaticKeyProvider",
    "UnknownKeyVersion",
    "VersionedKey",
]
