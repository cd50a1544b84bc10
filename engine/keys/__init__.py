"""Key providers: where versioned AES-256 keys come from.

The Vault/OpenBao provider is :mod:`engine.vault`, built on this package's contract.
"""

from ._state import KeyStateCorrupted
from .base import (
    KeyLockBusy,
    KeyProvider,
    KeyProviderError,
    KeyState,
    KeyVersionInfo,
    KeyVersionNotUsable,
    UnknownKeyVersion,
    VersionedKey,
)
from .environment import DerivationPolicy, EnvironmentKeyProvider, MasterKeyError
from .static import InvalidKeyMaterial, StaticKeyProvider

__all__ = [
    "DerivationPolicy",
    "EnvironmentKeyProvider",
    "InvalidKeyMaterial",
    "KeyLockBusy",
    "KeyProvider",
    "KeyProviderError",
    "KeyState",
    "KeyStateCorrupted",
    "KeyVersionInfo",
    "KeyVersionNotUsable",
    "MasterKeyError",
    "StaticKeyProvider",
    "UnknownKeyVersion",
    "VersionedKey",
]
