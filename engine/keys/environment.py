"""Keys derived from a master secret in the environment (the seed's ``EnvironmentKeyProvider``).

Each version's 256-bit key is PBKDF2-HMAC-SHA512(master, salt_v, iterations_v), with a random
per-version salt kept in the local key-state file (see :mod:`engine.keys._state`). Derivation
runs once per version per process; every later use is a dictionary lookup.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from ..aead import KEY_BYTES, random_bytes
from ..errors import InvalidArgument
from . import _state
from ._state import KeyStateCorrupted, StateSnapshot, VersionRecord
from .base import (
    KeyProviderError,
    KeyState,
    KeyVersionInfo,
    KeyVersionNotUsable,
    UnknownKeyVersion,
    VersionedKey,
    refuse_pickle,
)
from .static import check_state, check_version

__all__ = ["DerivationPolicy", "EnvironmentKeyProvider", "KeyStateCorrupted", "MasterKeyError"]

MASTER_KEY_ENV = "ENCRYPTION_MASTER_KEY"
ITERATIONS_ENV = "ENCRYPTION_KDF_ITERATIONS"
MASTER_KEY_MIN_BYTES = 32


class MasterKeyError(KeyProviderError, ValueError):
    """``ENCRYPTION_MASTER_KEY`` is missing or too short. The message says what to set and never
    shows what was read."""


@dataclass(frozen=True)
class DerivationPolicy:
    """How new versions' keys are derived (the seed's figures by default).

    Existing versions keep the iteration count recorded for them in the state file.
    """

    iterations: int = 100_000
    salt_bytes: int = 16

    def __post_init__(self) -> None:
        if type(self.iterations) is not int or self.iterations < 1:
            raise InvalidArgument("iterations must be a positive integer")
        if type(self.salt_bytes) is not int or self.salt_bytes < 16:
            raise InvalidArgument("salt_bytes must be an integer of at least 16")

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> "DerivationPolicy":
        raw = env.get(ITERATIONS_ENV)
        if not raw:
            return cls()
        try:
            return cls(iterations=int(raw))
        except ValueError:
            raise InvalidArgument(f"{ITERATIONS_ENV} must be a positive integer") from None


def _master_key(value: str | bytes | None) -> bytes:
    if value is None or value == "" or value == b"":
        raise MasterKeyError(
            f"{MASTER_KEY_ENV} is not set; set it to a random secret of at least "
            f"{MASTER_KEY_MIN_BYTES} bytes (e.g. the output of `openssl rand -base64 48`)"
        )
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if len(raw) < MASTER_KEY_MIN_BYTES:
        raise MasterKeyError(
            f"{MASTER_KEY_ENV} is too short; set it to a random secret of at least "
            f"{MASTER_KEY_MIN_BYTES} bytes (e.g. the output of `openssl rand -base64 48`)"
        )
    return raw


class EnvironmentKeyProvider:
    """Versioned keys derived from ``$ENCRYPTION_MASTER_KEY`` and a local key-state file.

    The state file (default: ``$ENGINE_KEY_STATE_FILE``, else ``$ENGINE_STATE_DIR/keys.json``,
    else ``~/.local/state/engine/keys.json``) records each version's state, creation time and
    salt, and the current version. It is re-read whenever it changes on disk, so versions created
    by other processes are seen; writers hold an ``flock`` so two processes never both create the
    same version. Version 1 is created on first use.

    Args:
        master_key: the master secret (str as UTF-8, or bytes); default ``$ENCRYPTION_MASTER_KEY``.
        state_path: the state file; default as above.
        policy: derivation parameters for new versions; default from ``$ENCRYPTION_KDF_ITERATIONS``
            or 100,000 iterations and 16-byte salts.
        env: the environment to read (default ``os.environ``).

    Raises:
        MasterKeyError: no master key, or one under 32 bytes.
    """

    __slots__ = ("_master", "_path", "_policy", "_lock", "_snap", "_sig")

    def __init__(self, *, master_key: str | bytes | None = None,
                 state_path: str | os.PathLike[str] | None = None,
                 policy: DerivationPolicy | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._master = _master_key(master_key if master_key is not None
                                   else env.get(MASTER_KEY_ENV))
        self._path = Path(state_path) if state_path is not None else _state.default_state_path(env)
        self._policy = policy if policy is not None else DerivationPolicy.from_environment(env)
        self._lock = threading.Lock()
        self._snap: StateSnapshot = _state.EMPTY
        self._sig: Any = False

    def __repr__(self) -> str:
        return f"<EnvironmentKeyProvider state_path={str(self._path)!r}>"

    __reduce__ = refuse_pickle

    @property
    def state_path(self) -> Path:
        """The key-state file this provider reads and writes."""
        return self._path

    @property
    def policy(self) -> DerivationPolicy:
        """Derivation parameters used for new versions."""
        return self._policy

    # ---- reading ----

    def _snapshot(self) -> StateSnapshot:
        """The state, re-read only when the file's inode, mtime or size changed."""
        sig = _state.signature(self._path)
        if sig == self._sig:
            return self._snap
        with self._lock:
            snap, sig = _state.read_state(self._path)
            self._snap, self._sig = snap, sig
            return snap

    def _cipher(self, rec: VersionRecord):
        # The cache key is a keyed hash: it identifies (master, salt, iterations) without
        # letting anyone who sees it test guesses of the master key cheaply.
        cache_key = hmac.new(self._master, rec.salt + rec.iterations.to_bytes(8, "big"),
                             hashlib.sha256).digest()
        return _state.cached_cipher(
            cache_key,
            lambda: hashlib.pbkdf2_hmac("sha512", self._master, rec.salt, rec.iterations,
                                        KEY_BYTES),
        )

    def get_current_key(self) -> VersionedKey:
        """The current version's key (creating version 1 if there is no state yet).

        Raises:
            KeyVersionNotUsable: the current version is not active.
            KeyStateCorrupted: the state file cannot be parsed.
        """
        snap = self._snapshot()
        if snap.current is None:
            self._bootstrap()
            snap = self._snapshot()
        rec = snap.versions[snap.current]
        if rec.state is not KeyState.ACTIVE:
            raise KeyVersionNotUsable(
                f"current key version {rec.version} is {rec.state.value}; it cannot encrypt"
            )
        return VersionedKey(rec.version, self._cipher(rec), rec.state)

    def get_key(self, version: int) -> VersionedKey:
        """The key of ``version`` in whatever state (decryption).

        Raises:
            UnknownKeyVersion: the state file does not list this version.
        """
        rec = self._snapshot().versions.get(version)
        if rec is None:
            raise UnknownKeyVersion(version)
        return VersionedKey(rec.version, self._cipher(rec), rec.state)

    def list_versions(self) -> list[KeyVersionInfo]:
        """Every version, ascending, with its state and creation time."""
        snap = self._snapshot()
        return [snap.versions[v].info() for v in sorted(snap.versions)]

    @property
    def current_version(self) -> int | None:
        """The current version, or None before the first one is created."""
        return self._snapshot().current

    # ---- writing (under the file lock, from a fresh read) ----

    def _update(self, change) -> Any:
        with _state.locked(self._path):
            snap, _ = _state.read_state(self._path)
            new_snap, result = change(snap)
            if new_snap is not snap:
                _state.write_state_atomic(self._path, new_snap)
        with self._lock:
            self._sig = False  # force a re-read on next use
        return result

    def _new_record(self, version: int) -> VersionRecord:
        return VersionRecord(version, KeyState.ACTIVE, datetime.now(timezone.utc),
                             random_bytes(self._policy.salt_bytes), self._policy.iterations)

    def _bootstrap(self) -> None:
        def change(snap: StateSnapshot):
            if snap.current is not None:
                return snap, None
            return StateSnapshot(1, {1: self._new_record(1)}), None

        self._update(change)

    def create_version(self) -> KeyVersionInfo:
        """Adds the next version with a fresh salt, makes it current, and moves the previous
        active versions to ``decrypt-only``. Safe against concurrent callers in other processes.
        """
        def change(snap: StateSnapshot):
            version = max(snap.versions, default=0) + 1
            versions = {
                v: (dataclasses.replace(r, state=KeyState.DECRYPT_ONLY)
                    if r.state is KeyState.ACTIVE else r)
                for v, r in snap.versions.items()
            }
            rec = self._new_record(version)
            versions[version] = rec
            return StateSnapshot(version, versions), rec.info()

        return self._update(change)

    def set_state(self, version: int, state: KeyState | str) -> KeyVersionInfo:
        """Changes a version's lifecycle state (for rotation and retention).

        A current version that is not active refuses encryption until a new version is created.

        Raises:
            UnknownKeyVersion: no such version.
            InvalidArgument: not a valid state.
        """
        new_state = check_state(state)
        check_version(version)

        def change(snap: StateSnapshot):
            rec = snap.versions.get(version)
            if rec is None:
                raise UnknownKeyVersion(version)
            rec = dataclasses.replace(rec, state=new_state)
            return StateSnapshot(snap.current, {**snap.versions, version: rec}), rec.info()

        return self._update(change)

    def set_current(self, version: int) -> None:
        """Makes an existing version current and active (e.g. to roll back a rotation); the
        previous active versions become ``decrypt-only``.

        Raises:
            UnknownKeyVersion: no such version.
            KeyVersionNotUsable: the version is deprecated.
        """
        def change(snap: StateSnapshot):
            rec = snap.versions.get(version)
            if rec is None:
                raise UnknownKeyVersion(version)
            if rec.state is KeyState.DEPRECATED:
                raise KeyVersionNotUsable(f"key version {version} is deprecated")
            versions = {
                v: (dataclasses.replace(r, state=KeyState.DECRYPT_ONLY)
                    if r.state is KeyState.ACTIVE else r)
                for v, r in snap.versions.items()
            }
            versions[version] = dataclasses.replace(rec, state=KeyState.ACTIVE)
            return StateSnapshot(version, versions), None

        self._update(change)

    def purge(self, version: int) -> None:
        """Deletes a version from the state file: data under it can no longer be decrypted.

        Raises:
            UnknownKeyVersion: no such version.
            KeyVersionNotUsable: it is the current version.
        """
        def change(snap: StateSnapshot):
            if version not in snap.versions:
                raise UnknownKeyVersion(version)
            if version == snap.current:
                raise KeyVersionNotUsable(f"key version {version} is current; it cannot be purged")
            versions = {v: r for v, r in snap.versions.items() if v != version}
            return StateSnapshot(snap.current, versions), None

        self._update(change)

    def audit_key(self) -> bytes:
        """The audit trail's HMAC key, derived from the master key (never the key itself)."""
        return hmac.new(self._master, b"engine audit trail v1", hashlib.sha256).digest()

    def record_usage(self, version: int, count: int) -> int:
        """Adds ``count`` encryptions to a version's usage (kept in the state file, so every
        process adds to the same count; GCM with random IVs allows 2**32 per key).

        Returns:
            The new total.

        Raises:
            UnknownKeyVersion: no such version.
        """
        if type(count) is not int or count < 0:
            raise InvalidArgument("count must be a non-negative integer")

        def change(snap: StateSnapshot):
            rec = snap.versions.get(version)
            if rec is None:
                raise UnknownKeyVersion(version)
            rec = dataclasses.replace(rec, usage=rec.usage + count)
            return StateSnapshot(snap.current, {**snap.versions, version: rec}), rec.usage

        return self._update(change)

    def usage(self, version: int) -> int:
        """Encryptions recorded for a version (see :meth:`record_usage`).

        Raises:
            UnknownKeyVersion: no such version.
        """
        rec = self._snapshot().versions.get(version)
        if rec is None:
            raise UnknownKeyVersion(version)
        return rec.usage
