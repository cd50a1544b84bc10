"""Keys derived from a master secret in the environment (``EnvironmentKeyProvider``).

Each version's 256-bit key is PBKDF2-HMAC-SHA512(master, salt_v, iterations_v). The salt of a
version is itself derived from the master secret and the version number, so every version's key
can be derived again from the master secret alone: the local key-state file (see
:mod:`engine.keys._state`) records which versions exist, their states, usage counts and a key
check value per version, and losing it loses no key. Derivation runs once per version per
process; every later use is a dictionary lookup.

The key check value of each version is compared, in constant time, with the key derived in this
process before the key is used: a different ``ENCRYPTION_MASTER_KEY`` (one with a trailing
newline, say) is refused instead of silently encrypting under keys nobody can reproduce.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping

from ..aead import KEY_BYTES, AesGcm
from ..errors import InvalidArgument, InvalidArgumentType
from ..locks import fork_safe_lock
from ..settings import env_number
from . import _state
from ._state import KeyStateCorrupted, StateSnapshot, VersionRecord
from .base import (
    DEFAULT_ALGORITHM,
    KeyProvider,
    KeyProviderError,
    KeyState,
    KeyVersionInfo,
    KeyVersionNotUsable,
    MasterKeyMismatch,
    ProviderConfig,
    UnknownKeyVersion,
    VersionedKey,
    algorithm_from_environment,
    check_algorithm,
    check_count,
    check_state,
    check_version,
    derive_index_key,
    next_usage,
    require_active,
)

__all__ = [
    "DerivationPolicy",
    "EnvironmentKeyProvider",
    "EnvironmentProviderConfig",
    "KeyStateCorrupted",
    "MasterKeyError",
]

MASTER_KEY_ENV = "ENCRYPTION_MASTER_KEY"
ITERATIONS_ENV = "ENCRYPTION_KDF_ITERATIONS"
MASTER_KEY_MIN_BYTES = 32
# How long a read of the state file is trusted before the file is looked at again: versions made
# or switched by another process are seen within this time, and a single encryption costs no
# stat() call.
STATE_RECHECK_SECONDS = 0.25

_log = logging.getLogger("engine.keys")


class MasterKeyError(KeyProviderError, ValueError):
    """``ENCRYPTION_MASTER_KEY`` is missing, too short or of the wrong type. The message says
    what to set and never shows what was read."""


@dataclass(frozen=True)
class DerivationPolicy:
    """How new versions' keys are derived (PBKDF2-SHA512 with 100,000 iterations by default)
    and the algorithm they encrypt with (``"aes-256-gcm"`` by default, or ``"xaes-256-gcm"``).

    Existing versions keep the iteration count and algorithm recorded for them in the state file.
    """

    iterations: int = 100_000
    salt_bytes: int = 16
    algorithm: str = DEFAULT_ALGORITHM

    def __post_init__(self) -> None:
        if type(self.iterations) is not int or self.iterations < 1:
            raise InvalidArgument("iterations must be a positive integer")
        if type(self.salt_bytes) is not int or not 16 <= self.salt_bytes <= 64:
            raise InvalidArgument("salt_bytes must be an integer from 16 to 64")
        check_algorithm(self.algorithm)

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> "DerivationPolicy":
        """From ``$ENCRYPTION_KDF_ITERATIONS`` and ``$ENCRYPTION_ALGORITHM`` (defaults when unset).

        Raises:
            InvalidArgument: a value that is not a positive integer or an algorithm.
        """
        algorithm = algorithm_from_environment(env)
        iterations = env_number(env, ITERATIONS_ENV, int)
        if iterations is None:
            return cls(algorithm=algorithm)
        return cls(iterations=iterations, algorithm=algorithm)


def _master_key(value: Any) -> bytes:
    if value is None or value == "" or value == b"":
        raise MasterKeyError(
            f"{MASTER_KEY_ENV} is not set; set it to a random secret of at least "
            f"{MASTER_KEY_MIN_BYTES} bytes (e.g. the output of `openssl rand -base64 48`)"
        )
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
    else:  # bytes(40) would be forty zero bytes: only text and bytes-like keys are keys
        raise InvalidArgumentType(
            f"the master key must be str or bytes-like, not {type(value).__name__}"
        )
    if len(raw) < MASTER_KEY_MIN_BYTES:
        raise MasterKeyError(
            f"{MASTER_KEY_ENV} is too short; set it to a random secret of at least "
            f"{MASTER_KEY_MIN_BYTES} bytes (e.g. the output of `openssl rand -base64 48`)"
        )
    if raw.count(raw[:1]) == len(raw) or (isinstance(value, str) and len(set(value)) == 1):
        raise MasterKeyError(
            f"{MASTER_KEY_ENV} is one byte value repeated, which anyone can guess; set it to a "
            f"random secret (e.g. the output of `openssl rand -base64 48`)"
        )
    if raw != raw.strip():
        _log.warning("%s begins or ends with whitespace (a newline from a file, say); it is "
                     "used as given, and a value without it is another master key",
                     MASTER_KEY_ENV)
    return raw


@dataclass(frozen=True)
class EnvironmentProviderConfig(ProviderConfig):
    """What another process needs to build the same :class:`EnvironmentKeyProvider`: the state
    file and the derivation policy. The master secret is not here: the new process reads it
    from its own environment (``master_key_env``), and the key check values refuse a different
    one."""

    state_path: str
    iterations: int
    salt_bytes: int
    master_key_env: str = MASTER_KEY_ENV
    algorithm: str = DEFAULT_ALGORITHM

    def build(self) -> "EnvironmentKeyProvider":
        return EnvironmentKeyProvider(
            master_key=os.environ.get(self.master_key_env),
            state_path=self.state_path,
            policy=DerivationPolicy(self.iterations, self.salt_bytes, self.algorithm),
        )


class EnvironmentKeyProvider(KeyProvider):
    """Versioned keys derived from ``$ENCRYPTION_MASTER_KEY`` and a local key-state file.

    The state file (default: ``$ENGINE_KEY_STATE_FILE``, else ``$ENGINE_STATE_DIR/keys.json``,
    else ``~/.local/state/engine/keys.json``) records each version's state, creation time, salt,
    usage and key check value, and the current version. It is looked at again when it may have
    changed (at most every 0.25 s), so versions created by other processes are seen; writers hold
    an ``flock`` so two processes never both create the same version.

    Version 1 is created on first use when the file is missing or lists no version; as every
    key derives from the master secret and the version, that is the same key as any earlier
    version 1, and nothing encrypted before is lost. Versions above 1 that a lost file no longer
    lists are put back with :meth:`restore_versions`.

    Args:
        master_key: the master secret (str as UTF-8, or bytes-like); default
            ``$ENCRYPTION_MASTER_KEY``.
        state_path: the state file; default as above.
        policy: derivation parameters and algorithm for new versions; default from
            ``$ENCRYPTION_KDF_ITERATIONS`` and ``$ENCRYPTION_ALGORITHM``
            or 100,000 iterations and 16-byte salts.
        env: the environment to read (default ``os.environ``).

    Raises:
        MasterKeyError: no master key, or one under 32 bytes.
        InvalidArgumentType: a master key that is neither str nor bytes-like.
    """

    __slots__ = ("_master", "_path", "_policy", "_lock", "_snap", "_sig", "_checked_at",
                 "_keys", "_current_key")

    def __init__(self, *, master_key: str | bytes | None = None,
                 state_path: str | os.PathLike[str] | None = None,
                 policy: DerivationPolicy | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._master = _master_key(master_key if master_key is not None
                                   else env.get(MASTER_KEY_ENV))
        self._path = Path(state_path) if state_path is not None else _state.default_state_path(env)
        self._policy = policy if policy is not None else DerivationPolicy.from_environment(env)
        self._lock = fork_safe_lock()
        self._snap: StateSnapshot = _state.EMPTY
        self._sig: Any = False
        self._checked_at = -1.0
        self._keys: dict[int, VersionedKey] = {}  # checked keys of the current snapshot
        self._current_key: VersionedKey | None = None

    def __repr__(self) -> str:
        return f"<EnvironmentKeyProvider state_path={str(self._path)!r}>"

    @property
    def state_path(self) -> Path:
        """The key-state file this provider reads and writes."""
        return self._path

    @property
    def local_state_dir(self) -> Path:
        """The state file's directory (rotation keeps its canaries and lock there)."""
        return self._path.parent

    @property
    def policy(self) -> DerivationPolicy:
        """Derivation parameters used for new versions."""
        return self._policy

    def config(self) -> EnvironmentProviderConfig:
        """The state file and derivation policy; a worker reads the master secret itself."""
        return EnvironmentProviderConfig(str(self._path.resolve()), self._policy.iterations,
                                         self._policy.salt_bytes,
                                         algorithm=self._policy.algorithm)

    # ---- reading ----

    def _snapshot(self) -> StateSnapshot:
        """The state, read again when the file's inode, mtime or size changed (looked at no more
        often than every STATE_RECHECK_SECONDS)."""
        now = time.monotonic()
        if now - self._checked_at < STATE_RECHECK_SECONDS:
            return self._snap
        sig = _state.signature(self._path)
        if sig == self._sig:
            self._checked_at = now
            return self._snap
        with self._lock:
            snap, sig = _state.read_state(self._path)
            self._current_key = None  # first: no reader pairs it with the new snapshot's time
            self._snap, self._sig, self._keys, self._checked_at = snap, sig, {}, now
            return snap

    def refresh(self) -> None:
        """Reads the state file again at the next use (after changing it by other means)."""
        with self._lock:
            self._sig, self._checked_at, self._current_key = False, -1.0, None

    def _salt(self, version: int, size: int) -> bytes:
        return hmac.new(self._master, b"engine environment key salt v1" + version.to_bytes(4, "big"),
                        hashlib.sha512).digest()[:size]

    def _derived(self, version: int, salt: bytes, iterations: int,
                 algorithm: str) -> tuple[AesGcm, bytes]:
        """(cipher, key check value) of a version, derived once per process."""
        # The cache key is a keyed hash: it identifies (master, salt, iterations, version) without
        # letting anyone who sees it test guesses of the master key cheaply.
        cache_key = hmac.new(self._master, salt + iterations.to_bytes(8, "big")
                             + version.to_bytes(4, "big"), hashlib.sha256).digest()
        return _state.cached_cipher(
            cache_key, version,
            lambda: hashlib.pbkdf2_hmac("sha512", self._master, salt, iterations, KEY_BYTES),
            algorithm,
        )

    def _key(self, rec: VersionRecord) -> VersionedKey:
        """The checked key of a version record (derived once per process)."""
        key = self._keys.get(rec.version)
        if key is not None and key.state is rec.state:
            return key
        cipher, check = self._derived(rec.version, rec.salt, rec.iterations, rec.algorithm)
        if rec.check is None:
            self._record_check(rec.version, check)
        elif not hmac.compare_digest(rec.check, check):
            raise MasterKeyMismatch(
                f"key version {rec.version} in {str(self._path)!r} was created under another "
                f"{MASTER_KEY_ENV}: the key derived here does not match its key check value, so "
                f"no key is derived from it (neither to encrypt or decrypt, nor for blind "
                f"indexes or the audit trail){self._whitespace_hint(rec)}"
            )
        key = VersionedKey(rec.version, cipher, rec.state)
        self._keys[rec.version] = key
        return key

    def _whitespace_hint(self, rec: VersionRecord) -> str:
        """Why a master key failed a key check value, when whitespace at its ends is the whole
        difference (derived again on this failure path only; nothing about either key shown)."""
        master = self._master
        for candidate, what in (
                (master.strip(), "the value given here has whitespace at its ends (a trailing "
                                 "newline?) that the one the state was created under has not"),
                (master + b"\n", "the value the state was created under ended with a newline "
                                  "that the one given here lacks"),
                (master.rstrip(b"\r\n") + b"\r\n", "the value the state was created under "
                                                     "ended with CR LF")):
            if candidate == master or len(candidate) < MASTER_KEY_MIN_BYTES:
                continue
            key = hashlib.pbkdf2_hmac("sha512", candidate, rec.salt, rec.iterations, KEY_BYTES)
            if rec.check is not None and hmac.compare_digest(
                    _state.key_check_value(key, rec.version, rec.algorithm), rec.check):
                return f"; {what}"
        return ("; check the variable for a changed value or stray whitespace, and the file "
                "for an edited record")

    def _check_master(self, version: int | None = None) -> None:
        """Refuses to derive anything more from a master key that fails the key check value of
        ``version`` (default: the current version; nothing to check before the first).

        Raises:
            UnknownKeyVersion: ``version`` is not listed.
            MasterKeyMismatch: the master key is not the one the version was created under.
        """
        snap = self._snapshot()
        if version is None:
            version = snap.current
            if version is None:
                return
        rec = snap.versions.get(version)
        if rec is None:
            raise UnknownKeyVersion(version)
        self._key(rec)

    def _record_check(self, version: int, check: bytes) -> None:
        """Writes the key check value of a version listed by an older state file (trusting this
        first use); a read-only state file is left as it is."""
        def change(snap: StateSnapshot) -> tuple[StateSnapshot, Any]:
            rec = snap.versions.get(version)
            if rec is None or rec.check is not None:
                return snap, None
            rec = dataclasses.replace(rec, check=check)
            return StateSnapshot(snap.current, {**snap.versions, version: rec}), None

        try:
            self._update(change)
        except KeyProviderError:
            pass

    def get_current_key(self) -> VersionedKey:
        """The current version's key (creating version 1 if the state file lists none).

        Raises:
            KeyVersionNotUsable: the current version is not active.
            MasterKeyMismatch: the master secret is not the one the version was created under.
            KeyStateCorrupted: the state file cannot be parsed.
        """
        key = self._current_key  # the single-value path: no stat(), no lookup
        if key is not None and time.monotonic() - self._checked_at < STATE_RECHECK_SECONDS:
            return key
        snap = self._snapshot()
        if snap.current is None:
            self._bootstrap()
            snap = self._snapshot()
        if snap.current is None:
            raise KeyStateCorrupted(f"the key state file {self._path} names no current version")
        rec = snap.versions[snap.current]
        require_active(rec.version, rec.state)
        key = self._current_key = self._key(rec)
        return key

    def get_key(self, version: int) -> VersionedKey:
        """The key of ``version`` in whatever state (decryption).

        Raises:
            UnknownKeyVersion: the state file does not list this version.
            MasterKeyMismatch: the master secret is not the one the version was created under.
        """
        key = self._keys.get(version)  # checked earlier, and the state file not due for a look
        if key is not None and time.monotonic() - self._checked_at < STATE_RECHECK_SECONDS:
            return key
        snap = self._snapshot()
        rec = snap.versions.get(version)
        if rec is None:
            newest = max(snap.versions, default=0)
            hint = (f" (the key state file {str(self._path)!r} lists versions up to {newest}; if "
                    f"it was lost or replaced, restore_versions(through={version}) lists the "
                    f"missing versions again: their keys derive from the master key)"
                    if type(version) is int and version > newest else "")
            raise UnknownKeyVersion(version, hint)
        return self._key(rec)

    def list_versions(self) -> list[KeyVersionInfo]:
        """Every version, ascending, with its state and creation time."""
        snap = self._snapshot()
        return [snap.versions[v].info() for v in sorted(snap.versions)]

    @property
    def current_version(self) -> int | None:
        """The current version, or None before the first one is created."""
        return self._snapshot().current

    # ---- writing (under the file lock, from a fresh read) ----

    def _update(self, change: Callable[[StateSnapshot], tuple[StateSnapshot, Any]]) -> Any:
        with _state.locked(self._path):
            snap, _ = _state.read_state(self._path)
            new_snap, result = change(snap)
            if new_snap is not snap:
                _state.write_state_atomic(self._path, new_snap)
        self.refresh()
        return result

    def _new_record(self, version: int, state: KeyState = KeyState.ACTIVE) -> VersionRecord:
        salt = self._salt(version, self._policy.salt_bytes)
        _, check = self._derived(version, salt, self._policy.iterations, self._policy.algorithm)
        return VersionRecord(version, state, datetime.now(timezone.utc), salt,
                             self._policy.iterations, 0, check, self._policy.algorithm)

    def _bootstrap(self) -> None:
        def change(snap: StateSnapshot) -> tuple[StateSnapshot, Any]:
            if snap.current is not None:
                return snap, None
            _log.warning("no key version in %s (a new or a lost key state file): created version "
                         "1, the same key as any earlier version 1 under this master key",
                         self._path)
            return StateSnapshot(1, {1: self._new_record(1)}), None

        self._update(change)

    @staticmethod
    def _retired(snap: StateSnapshot) -> dict[int, VersionRecord]:
        return {
            v: (dataclasses.replace(r, state=KeyState.DECRYPT_ONLY)
                if r.state is KeyState.ACTIVE else r)
            for v, r in snap.versions.items()
        }

    def create_version(self) -> KeyVersionInfo:
        """Adds the next version, makes it current, and moves the previous active versions to
        ``decrypt-only``. Safe against concurrent callers in other processes."""
        def change(snap: StateSnapshot) -> tuple[StateSnapshot, Any]:
            version = max(snap.versions, default=0) + 1
            versions = self._retired(snap)
            rec = self._new_record(version)
            versions[version] = rec
            return StateSnapshot(version, versions), rec.info()

        return self._update(change)

    def restore_versions(self, through: int) -> list[int]:
        """Lists versions 1..``through`` again in a state file that lost them (their keys derive
        from the master key and the version, so data under them decrypts again). Restored
        versions are decrypt-only, except that the highest becomes current and active when the
        file named a lower current version.

        Returns:
            The versions added.

        Raises:
            InvalidArgument: ``through`` is not a positive integer.
        """
        check_version(through)

        def change(snap: StateSnapshot) -> tuple[StateSnapshot, Any]:
            missing = [v for v in range(1, through + 1) if v not in snap.versions]
            if not missing:
                return snap, []
            versions = dict(snap.versions)
            for v in missing:
                versions[v] = self._new_record(v, KeyState.DECRYPT_ONLY)
            current = snap.current
            if current is None or current < through:
                versions = self._retired(StateSnapshot(current, versions))
                versions[through] = dataclasses.replace(versions[through], state=KeyState.ACTIVE)
                current = through
            _log.warning("restored key versions %s in %s", missing, self._path)
            return StateSnapshot(current, versions), missing

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

        def change(snap: StateSnapshot) -> tuple[StateSnapshot, Any]:
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
        def change(snap: StateSnapshot) -> tuple[StateSnapshot, Any]:
            rec = snap.versions.get(version)
            if rec is None:
                raise UnknownKeyVersion(version)
            if rec.state is KeyState.DEPRECATED:
                raise KeyVersionNotUsable(f"key version {version} is deprecated")
            versions = self._retired(snap)
            versions[version] = dataclasses.replace(rec, state=KeyState.ACTIVE)
            return StateSnapshot(version, versions), None

        self._update(change)

    def purge(self, version: int) -> None:
        """Deletes a version from the state file: this provider no longer decrypts under it.

        The key itself derives from the master key and the version, so whoever holds the master
        key can derive it again (:meth:`restore_versions`): destroying data by destroying its
        key takes a new master key (or the Vault provider, which deletes wrapped keys).

        Raises:
            UnknownKeyVersion: no such version.
            KeyVersionNotUsable: it is the current version.
        """
        def change(snap: StateSnapshot) -> tuple[StateSnapshot, Any]:
            if version not in snap.versions:
                raise UnknownKeyVersion(version)
            if version == snap.current:
                raise KeyVersionNotUsable(f"key version {version} is current; it cannot be purged")
            versions = {v: r for v, r in snap.versions.items() if v != version}
            return StateSnapshot(snap.current, versions), None

        self._update(change)

    def rotation_lock(self, wait: bool = True) -> ContextManager[None]:
        """An ``flock`` on ``rotation.lock`` beside the state file: one rotation at a time across
        the processes that share the file.

        Raises:
            KeyLockBusy: ``wait`` is False and another process holds it.
        """
        return _state.flocked(self._path.parent / "rotation.lock", wait=wait, what="lock")

    def audit_key(self) -> bytes:
        """The audit trail's HMAC key, derived from the master key (never the key itself).

        Raises:
            MasterKeyMismatch: the master key fails the current version's key check value (a
                wrong key would make every entry look edited, and sign new ones nobody can
                check).
        """
        try:
            self._check_master()
        except MasterKeyMismatch:
            raise
        except KeyProviderError:
            pass  # an unreadable state file holds nothing to check against; verify logs anyway
        return hmac.new(self._master, b"engine audit trail v1", hashlib.sha256).digest()

    def index_key(self, table: str, column: str, version: int) -> bytes:
        """A blind-index key, derived from the master key (a secret of its own, separate from
        the data keys and the audit key) for a version the state file lists.

        Raises:
            UnknownKeyVersion: the state file does not list this version.
            MasterKeyMismatch: the master key fails that version's key check value (under a
                wrong one every lookup would find nothing, silently).
        """
        check_version(version)
        self._check_master(version)
        secret = hmac.new(self._master, b"engine blind index secret v1", hashlib.sha256).digest()
        return derive_index_key(secret, table, column, version)

    def record_usage(self, version: int, count: int, *, limit: int | None = None) -> int:
        """Adds ``count`` encryptions to a version's usage, kept in the state file so that every
        process adds to the same count (see :meth:`KeyProvider.record_usage`)."""
        check_count(count)

        def change(snap: StateSnapshot) -> tuple[StateSnapshot, Any]:
            rec = snap.versions.get(version)
            if rec is None:
                raise UnknownKeyVersion(version)
            rec = dataclasses.replace(rec, usage=next_usage(version, rec.usage, count, limit))
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

