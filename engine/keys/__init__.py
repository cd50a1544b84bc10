"""Key providers: where versioned AES-256 keys come from.

The Vault/OpenBao provider is :mod:`engine.vault`, built on this package's contract.
"""

from ._state import KeyStateCorrupted
from .base import (
    KeyLockBusy,
    KeyProvider,
    KeyProviderError,
    KeyState,
    KeyUsageExhausted,
    KeyVersionInfo,
    KeyVersionNotUsable,
    KeyWrapper,
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

__all__ = [
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
    "KeyWrapper",
    "MasterKeyError",
    "MasterKeyMismatch",
    "ProviderConfig",
    "StaticKeyProvider",
    "UnknownKeyVersion",
    "VersionedKey",
]
