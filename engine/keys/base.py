"""The key-provider contract: versioned keys, their lifecycle states, and what every provider does.

A provider hands out :class:`VersionedKey` objects: a version number and a ready native key
handle (:class:`engine.AesGcm`, or :class:`engine.XAesGcm` for a version made for XAES-256-GCM:
each version records its algorithm). Raw key bytes never leave the provider except into the native
handle; nothing here is printable or picklable. :class:`KeyProvider` declares the whole contract
that the encryption service, key rotation and the re-encryption workers rely on; the shared
argument checks live here too, so that every provider refuses the same things the same way.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ContextManager, Iterator, Mapping, NoReturn

from ..aead import AesGcm
from ..errors import EngineError, InvalidArgument
from ..locks import fork_safe_lock
from ..xaes import XAesGcm

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHM",
    "GCM_RANDOM_IV_LIMIT",
    "KeyLockBusy",
    "KeyProvider",
    "KeyProviderError",
    "KeyState",
    "KeyUsageExhausted",
    "KeyVersionInfo",
    "KeyVersionNotUsable",
    "KeyWrapper",
    "MasterKeyMismatch",
    "ProviderConfig",
    "ThreadRotationLock",
    "UnknownKeyVersion",
    "VersionedKey",
    "algorithm_from_environment",
    "check_algorithm",
    "check_count",
    "check_state",
    "check_version",
    "cipher_for",
    "derive_index_key",
    "next_usage",
    "require_active",
    "usage_limit",
]

GCM_RANDOM_IV_LIMIT = 2**32  # NIST SP 800-38D 8.3: encryptions per key with random IVs
ALGORITHMS = {AesGcm.ALGORITHM: AesGcm, XAesGcm.ALGORITHM: XAesGcm}
DEFAULT_ALGORITHM = AesGcm.ALGORITHM
INDEX_KEY_BYTES = 32


class KeyProviderError(EngineError):
    """A key provider could not do what was asked (its store is unreadable, unreachable, ...)."""


class UnknownKeyVersion(KeyProviderError, LookupError):
    """No key with this version exists (or it was purged)."""

    def __init__(self, version: int, hint: str = "") -> None:
        super().__init__(f"unknown key version {version}{hint}")
        self.version = version


class KeyVersionNotUsable(KeyProviderError):
    """The key version exists but its state forbids the operation (e.g. encrypting with a
    decrypt-only or deprecated version)."""


class KeyUsageExhausted(KeyVersionNotUsable):
    """The version has done as many encryptions as one AES-GCM key with random IVs allows
    (2**32, NIST SP 800-38D 8.3); rotate to a new version to encrypt again."""


class MasterKeyMismatch(KeyProviderError):
    """The key derived for a version does not match the key check value recorded when the
    version was created: the master secret (or its wrapping) has changed. Nothing is encrypted or
    decrypted under it; the message never shows either key."""


class KeyLockBusy(KeyProviderError):
    """Another process holds the provider's lock (a rotation is running elsewhere)."""


class KeyState(str, enum.Enum):
    """Lifecycle of a key version (rotation with retention)."""

    ACTIVE = "active"  # may encrypt and decrypt; the current version is always active
    DECRYPT_ONLY = "decrypt-only"  # retained: decrypts old data, never encrypts new data
    DEPRECATED = "deprecated"  # beyond retention: kept only until an explicit purge


@dataclass(frozen=True)
class KeyVersionInfo:
    """Public facts about one key version; never the key itself."""

    version: int
    state: KeyState
    created_at: datetime
    algorithm: str = DEFAULT_ALGORITHM


class VersionedKey:
    """A key version ready for use: ``version`` and ``cipher`` (an :class:`engine.AesGcm`, or
    its subclass :class:`engine.XAesGcm`)."""

    __slots__ = ("version", "cipher", "state")

    def __init__(self, version: int, cipher: AesGcm, state: KeyState = KeyState.ACTIVE) -> None:
        self.version = check_version(version)
        self.cipher = cipher
        self.state = state

    @property
    def algorithm(self) -> str:
        """``"aes-256-gcm"`` or ``"xaes-256-gcm"``."""
        return self.cipher.ALGORITHM

    @property
    def usage_limit(self) -> int | None:
        """Encryptions this version may do (None: no limit that usage counting must enforce)."""
        return _USAGE_LIMITS[self.cipher.ALGORITHM]  # read on every encryption: a dict lookup

    def __repr__(self) -> str:
        return (f"<VersionedKey version={self.version} state={self.state.value} "
                f"algorithm={self.algorithm}>")

    def __reduce__(self) -> NoReturn:
        raise TypeError("keys cannot be pickled; fetch them from the provider in each process")


# ---------------------------------------------------------------- shared checks


def check_version(version: Any) -> int:
    """``version`` if it is a positive int (not a bool).

    Raises:
        InvalidArgument: anything else.
    """
    if type(version) is not int or version < 1:
        raise InvalidArgument("key versions are positive integers")
    return version


def check_state(state: Any) -> KeyState:
    """A :class:`KeyState` from a member or its value (``"decrypt-only"``).

    Raises:
        InvalidArgument: not a state.
    """
    try:
        return KeyState(state)
    except ValueError:
        pass
    raise InvalidArgument("state must be one of: " + ", ".join(s.value for s in KeyState))


def check_algorithm(algorithm: Any) -> str:
    """``algorithm`` if it names one the engine has (``"aes-256-gcm"``, ``"xaes-256-gcm"``).

    Raises:
        InvalidArgument: anything else.
    """
    if isinstance(algorithm, str) and algorithm in ALGORITHMS:
        return algorithm
    raise InvalidArgument("algorithm must be one of: " + ", ".join(ALGORITHMS))


ALGORITHM_ENV = "ENCRYPTION_ALGORITHM"


def algorithm_from_environment(env: Mapping[str, str]) -> str:
    """The algorithm of new key versions: ``$ENCRYPTION_ALGORITHM``, else ``"aes-256-gcm"``.

    Raises:
        InvalidArgument: the variable names no algorithm the engine has.
    """
    algorithm = (env.get(ALGORITHM_ENV) or DEFAULT_ALGORITHM).strip().lower()
    if algorithm not in ALGORITHMS:
        raise InvalidArgument(f"{ALGORITHM_ENV} must be one of: {', '.join(ALGORITHMS)}")
    return algorithm


def cipher_for(algorithm: str, key: Any) -> AesGcm:
    """The native cipher of a key version: :class:`AesGcm` or :class:`XAesGcm` over ``key``."""
    return ALGORITHMS[check_algorithm(algorithm)](key)


def usage_limit(algorithm: str) -> int | None:
    """Encryptions one key may do with random nonces: 2**32 for AES-256-GCM (NIST SP 800-38D
    8.3). None for XAES-256-GCM: each message has a key of its own, derived from the first half
    of its 24-byte random nonce, and 2**80 messages keep the collision risk at 2**-32, a count
    no deployment reaches, so its versions are never rotated or refused for usage."""
    return None if check_algorithm(algorithm) == XAesGcm.ALGORITHM else GCM_RANDOM_IV_LIMIT


_USAGE_LIMITS = {algorithm: usage_limit(algorithm) for algorithm in ALGORITHMS}


def derive_index_key(secret: bytes, table: str, column: str, version: int) -> bytes:
    """A blind-index key: HMAC-SHA-256 under a provider's index secret of ``"engine blind index
    v1"``, the table and column names (UTF-8, each after its 4-byte length) and the version.

    Raises:
        InvalidArgument: a name that is not a non-empty str.
    """
    message = bytearray(b"engine blind index v1")
    for what, name in (("table", table), ("column", column)):
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"the {what} of a blind index must be a non-empty str")
        encoded = name.encode("utf-8", "surrogatepass")
        message += len(encoded).to_bytes(4, "big") + encoded
    message += check_version(version).to_bytes(4, "big")
    return hmac.new(secret, bytes(message), hashlib.sha256).digest()


def check_count(count: Any) -> int:
    """A usage count (an int, not a bool; negative to give back reserved encryptions).

    Raises:
        InvalidArgument: not an int.
    """
    if type(count) is not int:
        raise InvalidArgument("usage counts are integers")
    return count


def require_active(version: int, state: KeyState) -> None:
    """The rule for the current key: only an active version encrypts.

    Raises:
        KeyVersionNotUsable: the version is decrypt-only or deprecated.
    """
    if state is not KeyState.ACTIVE:
        raise KeyVersionNotUsable(
            f"current key version {version} is {state.value}; it cannot encrypt"
        )


def next_usage(version: int, used: int, count: int, limit: int | None) -> int:
    """The usage total after adding ``count`` (negative: encryptions given back) to ``used``.

    Raises:
        KeyUsageExhausted: the total would pass ``limit``.
    """
    total = max(used + count, 0)
    if limit is not None and count > 0 and total > limit:
        raise KeyUsageExhausted(
            f"key version {version} has done {used:,} of the {limit:,} encryptions one key may do "
            f"with random IVs; rotate the keys to encrypt again"
        )
    return total


# ---------------------------------------------------------------- the contract


class ProviderConfig(abc.ABC):
    """How to build a provider again in another process: picklable, and holding no secret (the
    new process reads its secrets itself, from its environment or from Vault)."""

    __slots__ = ()

    @abc.abstractmethod
    def build(self) -> "KeyProvider":
        """A new provider, in this process, from this configuration."""


class KeyWrapper(abc.ABC):
    """Wraps small secrets (the key-encryption keys of Parquet Modular Encryption) under a root
    of trust outside this process, such as Vault's Transit engine. Thread-safe."""

    __slots__ = ()

    @abc.abstractmethod
    def wrap(self, secret: bytes, associated_data: bytes) -> str:
        """``secret`` sealed with ``associated_data`` (needed again to unwrap), as text."""

    @abc.abstractmethod
    def unwrap(self, wrapped: str, associated_data: bytes) -> bytearray:
        """The secret of :meth:`wrap` (a bytearray the caller wipes).

        Raises:
            KeyProviderError: the wrapped secret or its associated data is not authentic.
        """


class KeyProvider(abc.ABC):
    """Where versioned keys come from (environment master key, Vault, a static map).

    Implementations are thread-safe, derive or unwrap each version at most once per process,
    and never put key material in ``repr``, logs, exceptions or pickles.
    """

    __slots__ = ()

    # ---- reading keys and versions ----

    @abc.abstractmethod
    def get_current_key(self) -> VersionedKey:
        """The version new data is encrypted under.

        Raises:
            KeyVersionNotUsable: the current version is not active.
        """

    @abc.abstractmethod
    def get_key(self, version: int) -> VersionedKey:
        """A specific version, in whatever state, for decryption.

        Raises:
            UnknownKeyVersion: no such version.
        """

    @abc.abstractmethod
    def list_versions(self) -> list[KeyVersionInfo]:
        """Every known version, ascending, with its state and creation time."""

    @property
    @abc.abstractmethod
    def current_version(self) -> int | None:
        """The version new data is encrypted under, or None before the first one exists."""

    # ---- the lifecycle (used by key rotation) ----

    @abc.abstractmethod
    def create_version(self) -> KeyVersionInfo:
        """Makes a new version, makes it current and active, and moves the previously active
        versions to decrypt-only."""

    @abc.abstractmethod
    def set_state(self, version: int, state: KeyState | str) -> KeyVersionInfo:
        """Changes a version's lifecycle state.

        Raises:
            UnknownKeyVersion: no such version.
            InvalidArgument: not a state.
        """

    @abc.abstractmethod
    def set_current(self, version: int) -> None:
        """Makes an existing version current and active (a rotation rolled back); the previously
        active versions become decrypt-only.

        Raises:
            UnknownKeyVersion: no such version.
            KeyVersionNotUsable: the version is deprecated.
        """

    @abc.abstractmethod
    def purge(self, version: int) -> None:
        """Deletes a version: data still under it can no longer be decrypted.

        Raises:
            UnknownKeyVersion: no such version.
            KeyVersionNotUsable: it is the current version.
        """

    @abc.abstractmethod
    def rotation_lock(self, wait: bool = True) -> ContextManager[None]:
        """A lock that serialises rotations across threads and processes (across machines, for
        a shared store).

        Raises:
            KeyLockBusy: ``wait`` is False and another holder has it.
        """

    # ---- usage accounting (GCM allows 2**32 encryptions per key with random IVs) ----

    @abc.abstractmethod
    def record_usage(self, version: int, count: int, *, limit: int | None = None) -> int:
        """Adds ``count`` encryptions to a version's shared count (negative: gives back
        encryptions reserved earlier and not used; the count never goes below zero).

        Args:
            limit: refuse, changing nothing, when the count would pass it.

        Returns:
            The new total.

        Raises:
            UnknownKeyVersion: no such version.
            KeyUsageExhausted: ``limit`` would be passed.
        """

    @abc.abstractmethod
    def usage(self, version: int) -> int:
        """Encryptions recorded for a version.

        Raises:
            UnknownKeyVersion: no such version.
        """

    # ---- the rest of the provider's duties ----

    @abc.abstractmethod
    def audit_key(self) -> bytes:
        """The audit trail's HMAC key (32+ bytes), derived or stored by the provider; never a
        data key.

        Raises:
            KeyProviderError: this provider has none.
        """

    @abc.abstractmethod
    def index_key(self, table: str, column: str, version: int) -> bytes:
        """The HMAC key of blind indexes on ``column`` of ``table`` under key version
        ``version``: 32 bytes (:func:`derive_index_key` from a secret of the provider's that is
        neither a data key nor the audit key), a different key for each table, column and
        version. An index follows the key versions: its rows are indexed under the version of
        their ciphertext.

        Raises:
            UnknownKeyVersion: no such version.
            InvalidArgument: an empty table or column name.
            KeyProviderError: this provider has no index secret.
        """

    @abc.abstractmethod
    def config(self) -> ProviderConfig:
        """A picklable, secret-free configuration from which another process builds the same
        provider (``config().build()``); re-encryption workers use it.

        Raises:
            KeyProviderError: this provider cannot be rebuilt elsewhere (keys given in memory).
        """

    def key_wrapper(self) -> KeyWrapper | None:
        """A :class:`KeyWrapper` outside this process that wraps secrets under this provider's
        root of trust (Vault's Transit key), or None: they are then wrapped in this process under
        a key version (the default)."""
        return None

    @property
    def local_state_dir(self) -> Path | None:
        """A local directory where tools beside the provider (rotation canaries) may keep their
        files, or None when the provider keeps no local state."""
        return None

    def __reduce__(self) -> NoReturn:
        raise TypeError("key providers hold key material and cannot be pickled; "
                        "use provider.config() to build one in another process")


class ThreadRotationLock:
    """The rotation lock of a provider whose keys live only in this process."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = fork_safe_lock()

    @contextlib.contextmanager
    def __call__(self, wait: bool = True) -> Iterator[None]:
        if not self._lock.acquire(blocking=wait):
            raise KeyLockBusy("another thread is rotating this provider's keys")
        try:
            yield
        finally:
            self._lock.release()
