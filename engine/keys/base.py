"""The key-provider contract: versioned keys, their lifecycle states, and the provider protocol.

A provider hands out :class:`VersionedKey` objects: a version number and a ready native key
handle (:class:`engine.AesGcm`). Raw key bytes never leave the provider except into the native
handle; nothing here is printable or picklable.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from ..aead import AesGcm
from ..errors import EngineError, InvalidArgument

__all__ = [
    "KeyProvider",
    "KeyLockBusy",
    "KeyProviderError",
    "KeyState",
    "KeyVersionInfo",
    "KeyVersionNotUsable",
    "UnknownKeyVersion",
    "VersionedKey",
]


class KeyProviderError(EngineError):
    """A key provider could not do what was asked (its store is unreadable, unreachable, ...)."""


class UnknownKeyVersion(KeyProviderError, LookupError):
    """No key with this version exists (or it was purged)."""

    def __init__(self, version: int) -> None:
        super().__init__(f"unknown key version {version}")
        self.version = version


class KeyVersionNotUsable(KeyProviderError):
    """The key version exists but its state forbids the operation (e.g. encrypting with a
    decrypt-only or deprecated version)."""


class KeyLockBusy(KeyProviderError):
    """Another process holds the provider's lock (a rotation is running elsewhere)."""


class KeyState(str, enum.Enum):
    """Lifecycle of a key version (seed: rotation with retention)."""

    ACTIVE = "active"  # may encrypt and decrypt; the current version is always active
    DECRYPT_ONLY = "decrypt-only"  # retained: decrypts old data, never encrypts new data
    DEPRECATED = "deprecated"  # beyond retention: kept only until an explicit purge


@dataclass(frozen=True)
class KeyVersionInfo:
    """Public facts about one key version; never the key itself."""

    version: int
    state: KeyState
    created_at: datetime


class VersionedKey:
    """A key version ready for use: ``version`` and ``cipher`` (an :class:`engine.AesGcm`)."""

    __slots__ = ("version", "cipher", "state")

    def __init__(self, version: int, cipher: AesGcm, state: KeyState = KeyState.ACTIVE) -> None:
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise InvalidArgument("key versions are positive integers")
        self.version = version
        self.cipher = cipher
        self.state = state

    def __repr__(self) -> str:
        return f"<VersionedKey version={self.version} state={self.state.value}>"

    def __reduce__(self):
        raise TypeError("keys cannot be pickled; fetch them from the provider in each process")


def refuse_pickle(provider: Any) -> None:
    """``__reduce__`` of every key provider: they hold key material."""
    raise TypeError("key providers hold key material and cannot be pickled")


@runtime_checkable
class KeyProvider(Protocol):
    """Where versioned keys come from (environment master key, Vault, a static map).

    Implementations are thread-safe, derive or unwrap each version at most once per process,
    and never put key material in ``repr``, logs, exceptions or pickles.
    """

    def get_current_key(self) -> VersionedKey:
        """The version new data is encrypted under."""
        ...

    def get_key(self, version: int) -> VersionedKey:
        """A specific version, for decryption. Raises :class:`UnknownKeyVersion`."""
        ...

    def list_versions(self) -> list[KeyVersionInfo]:
        """Every known version, ascending, with its state and creation time."""
        ...

    def create_version(self) -> KeyVersionInfo:
        """Makes a new version and makes it current (used by key rotation)."""
        ...
