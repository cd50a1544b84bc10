"""A key provider over keys managed elsewhere (a KMS, a secrets file, a test)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any, ContextManager, Mapping

from ..aead import KEY_BYTES, AesGcm
from ..errors import InvalidArgument
from ..locks import fork_safe_lock
from .base import (
    DEFAULT_ALGORITHM,
    KeyProvider,
    KeyProviderError,
    KeyState,
    KeyVersionInfo,
    KeyVersionNotUsable,
    ProviderConfig,
    ThreadRotationLock,
    UnknownKeyVersion,
    VersionedKey,
    check_algorithm,
    check_count,
    check_state,
    check_version,
    cipher_for,
    derive_index_key,
    next_usage,
    require_active,
)

__all__ = ["InvalidKeyMaterial", "StaticKeyProvider"]


class InvalidKeyMaterial(InvalidArgument):
    """A key given to a provider is not 32 bytes (AES-256). The message never shows the key."""


def _secret_bytes(key: Any, name: str) -> bytes:
    try:
        size = memoryview(key).nbytes
    except TypeError:
        size = -1
    if isinstance(key, str) or size < 32:
        raise InvalidKeyMaterial(f"{name} must be bytes-like, at least 32 bytes")
    return bytes(memoryview(key))


class StaticKeyProvider(KeyProvider):
    """Versioned keys given as bytes: ``StaticKeyProvider({1: key1, 2: key2})``.

    Behaves like the other providers: the current version is the highest unless ``current`` says
    otherwise, non-current versions start ``decrypt-only``, and the key bytes are turned into
    native handles at once and not kept in Python.

    Args:
        keys: version (positive int) -> 32-byte key (any bytes-like).
        current: the version to encrypt under (default: the highest).
        states: optional version -> :class:`KeyState` overrides.
        algorithm: the algorithm of the keys given and of versions created later
            (``"aes-256-gcm"``, or ``"xaes-256-gcm"``).
        algorithms: optional version -> algorithm overrides.

    Raises:
        InvalidKeyMaterial: a key is not 32 bytes or not bytes-like (the key is never shown).
        InvalidArgument: no keys, a bad version number, ``current`` not among them, or an
            unknown algorithm.

    ``audit_key`` (32+ bytes, optional) is the HMAC key of the audit trail; ``index_key``
    (32+ bytes, optional) the secret from which blind-index keys are derived.
    """

    __slots__ = ("_ciphers", "_infos", "_current", "_lock", "_usage", "_audit_key", "_rotation",
                 "_algorithm", "_index_secret")

    def __init__(self, keys: Mapping[int, Any], *, current: int | None = None,
                 states: Mapping[int, Any] | None = None, audit_key: bytes | None = None,
                 algorithm: str = DEFAULT_ALGORITHM,
                 algorithms: Mapping[int, str] | None = None,
                 index_key: bytes | None = None) -> None:
        if not isinstance(keys, Mapping) or not keys:
            raise InvalidArgument("StaticKeyProvider needs a non-empty {version: key} mapping")
        now = datetime.now(timezone.utc)
        self._algorithm = check_algorithm(algorithm)
        algorithms = dict(algorithms or {})
        if not set(algorithms) <= set(keys):
            raise InvalidArgument("algorithms names a version that is not among the keys")
        self._ciphers: dict[int, AesGcm] = {}
        for version, key in keys.items():
            check_version(version)
            try:
                size = memoryview(key).nbytes
            except TypeError:
                raise InvalidKeyMaterial(
                    f"key version {version} must be {KEY_BYTES} bytes (bytes-like), not {type(key).__name__}"
                ) from None
            if size != KEY_BYTES:
                raise InvalidKeyMaterial(
                    f"key version {version} must be {KEY_BYTES} bytes (AES-256), got {size} bytes"
                )
            self._ciphers[version] = cipher_for(algorithms.get(version, algorithm), key)
        self._current = max(self._ciphers) if current is None else check_version(current)
        if self._current not in self._ciphers:
            raise InvalidArgument(f"current version {current} is not among the keys given")
        self._infos = {
            v: KeyVersionInfo(v, KeyState.ACTIVE if v == self._current else KeyState.DECRYPT_ONLY,
                              now, c.ALGORITHM)
            for v, c in self._ciphers.items()
        }
        for v, s in (states or {}).items():
            if v not in self._infos:
                raise InvalidArgument(f"states names unknown version {v}")
            self._infos[v] = dataclasses.replace(self._infos[v], state=check_state(s))
        self._lock = fork_safe_lock()
        self._audit_key = None if audit_key is None else _secret_bytes(audit_key, "audit_key")
        self._index_secret = None if index_key is None else _secret_bytes(index_key, "index_key")
        self._usage: dict[int, int] = {}
        self._rotation = ThreadRotationLock()

    def __repr__(self) -> str:
        return f"<StaticKeyProvider versions={sorted(self._ciphers)} current={self._current}>"

    @property
    def current_version(self) -> int:
        """The version new data is encrypted under."""
        return self._current

    def get_current_key(self) -> VersionedKey:
        """The current version's key.

        Raises:
            KeyVersionNotUsable: the current version is not active.
        """
        info = self._infos[self._current]
        require_active(self._current, info.state)
        return VersionedKey(self._current, self._ciphers[self._current], info.state)

    def get_key(self, version: int) -> VersionedKey:
        """The key of ``version``, in whatever state (decryption).

        Raises:
            UnknownKeyVersion: no such version.
        """
        cipher = self._ciphers.get(version)
        if cipher is None:
            raise UnknownKeyVersion(version)
        return VersionedKey(version, cipher, self._infos[version].state)

    def list_versions(self) -> list[KeyVersionInfo]:
        """Every version, ascending, with its state and creation time."""
        return [self._infos[v] for v in sorted(self._infos)]

    def create_version(self) -> KeyVersionInfo:
        """Adds a random key as the next version, makes it current and active, and moves the
        previous active versions to ``decrypt-only``."""
        with self._lock:
            version = max(self._ciphers) + 1
            self._ciphers[version] = cipher_for(self._algorithm, AesGcm.generate_key())
            self._retire_active()
            info = KeyVersionInfo(version, KeyState.ACTIVE, datetime.now(timezone.utc),
                                  self._algorithm)
            self._infos[version] = info
            self._current = version
            return info

    def set_state(self, version: int, state: KeyState | str) -> KeyVersionInfo:
        """Changes a version's lifecycle state (rotation and retention use this).

        Raises:
            UnknownKeyVersion: no such version.
            InvalidArgument: not a valid state.
        """
        new_state = check_state(state)
        with self._lock:
            info = self._infos.get(version)
            if info is None:
                raise UnknownKeyVersion(version)
            info = dataclasses.replace(info, state=new_state)
            self._infos[version] = info
            return info

    def set_current(self, version: int) -> None:
        """Makes an existing version current and active (e.g. to roll back a rotation); the
        previous active versions become ``decrypt-only``.

        Raises:
            UnknownKeyVersion: no such version.
            KeyVersionNotUsable: the version is deprecated.
        """
        with self._lock:
            info = self._infos.get(version)
            if info is None:
                raise UnknownKeyVersion(version)
            if info.state is KeyState.DEPRECATED:
                raise KeyVersionNotUsable(f"key version {version} is deprecated")
            self._retire_active()
            self._infos[version] = dataclasses.replace(info, state=KeyState.ACTIVE)
            self._current = version

    def purge(self, version: int) -> None:
        """Forgets a version: data under it can no longer be decrypted.

        Raises:
            UnknownKeyVersion: no such version.
            KeyVersionNotUsable: it is the current version.
        """
        with self._lock:
            if version not in self._ciphers:
                raise UnknownKeyVersion(version)
            if version == self._current:
                raise KeyVersionNotUsable(f"key version {version} is current; it cannot be purged")
            del self._ciphers[version], self._infos[version]
            self._usage.pop(version, None)

    def audit_key(self) -> bytes:
        """The audit trail's HMAC key given to the constructor.

        Raises:
            KeyProviderError: none was given.
        """
        if self._audit_key is None:
            raise KeyProviderError("this StaticKeyProvider was built without an audit_key")
        return self._audit_key

    def index_key(self, table: str, column: str, version: int) -> bytes:
        """A blind-index key derived from the ``index_key`` given to the constructor.

        Raises:
            UnknownKeyVersion: no such version.
            KeyProviderError: no ``index_key`` was given.
        """
        if version not in self._ciphers:
            raise UnknownKeyVersion(version)
        if self._index_secret is None:
            raise KeyProviderError("this StaticKeyProvider was built without an index_key")
        return derive_index_key(self._index_secret, table, column, version)

    def record_usage(self, version: int, count: int, *, limit: int | None = None) -> int:
        """Adds ``count`` encryptions to a version's usage, in memory (see
        :meth:`KeyProvider.record_usage`); returns the total."""
        check_count(count)
        with self._lock:
            if version not in self._ciphers:
                raise UnknownKeyVersion(version)
            total = next_usage(version, self._usage.get(version, 0), count, limit)
            self._usage[version] = total
            return total

    def usage(self, version: int) -> int:
        """Encryptions recorded for a version."""
        if version not in self._ciphers:
            raise UnknownKeyVersion(version)
        return self._usage.get(version, 0)

    def rotation_lock(self, wait: bool = True) -> ContextManager[None]:
        """Serialises rotations of this provider between threads (its keys live only here)."""
        return self._rotation(wait)

    def config(self) -> ProviderConfig:
        """Not available: keys given in memory cannot be rebuilt in another process.

        Raises:
            KeyProviderError: always.
        """
        raise KeyProviderError(
            "a StaticKeyProvider's keys exist only in this process; give workers a provider "
            "they can build from configuration (environment or Vault)"
        )

    def _retire_active(self) -> None:
        for v, info in self._infos.items():
            if info.state is KeyState.ACTIVE:
                self._infos[v] = dataclasses.replace(info, state=KeyState.DECRYPT_ONLY)
