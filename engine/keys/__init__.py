"""Key providers: where versioned AES-256 keys come from."""

from .base import (
    KeyProvider,
    KeyProviderError,
    KeyState,
    KeyVersionInfo,
    KeyVersionNotUsable,
    UnknownKeyVersion,
    VersionedKey,
)

__all__ = [
    "KeyProvider",
    "KeyProviderError",
    "KeyState",
    "KeyVersionInfo",
    "KeyVersionNotUsable",
    "UnknownKeyVersion",
    "VersionedKey",
]
