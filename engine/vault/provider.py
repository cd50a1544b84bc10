"""Keys whose root of trust is HashiCorp Vault or OpenBao (``VaultKeyProvider``).

Envelope encryption: Vault never sees the data. Each key version's 256-bit data key comes from
Transit's ``datakey`` endpoint (:mod:`engine.vault.transit`); only its wrapped form
(``vault:vN:...``, encrypted under the Transit key) is stored, in KV v2, one entry per version,
beside a pointer to the current version (:mod:`engine.vault.kv`).

At use a version is unwrapped once through Transit ``decrypt``, checked against its key check
value and kept as a native :class:`~engine.AesGcm` for ``cache_ttl`` seconds. Encryption and
decryption then run entirely in the native engine, and keep running while Vault is unreachable
until the cache expires. Rotating the Transit key (:meth:`VaultKeyProvider.rotate_wrapping_key`)
rewraps the stored keys inside Vault; no data is re-encrypted.

Every HTTP call has a timeout and bounded retries (:mod:`engine.vault.connection`); failures are
the exceptions of :mod:`engine.vault.errors`, all :class:`~engine.keys.KeyProviderError`. Tokens
and keys never appear in ``repr``, exceptions, logs or pickles.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from ..aead import AesGcm
from ..keys.base import (
    DEFAULT_ALGORITHM,
    KeyLockBusy,
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
    cipher_for,
    derive_index_key,
    next_usage,
)
from ..locks import fork_safe_lock
from ..settings import env_number
from .connection import (
    DEFAULT_DEADLINE,
    DEFAULT_JWT_PATH,
    HA_MAX_BACKOFF,
    RetryPolicy,
    VaultConnection,
)
from .errors import (
    VaultConfigurationError,
    VaultConflict,
    VaultError,
    WrappedKeyInvalid,
)
from .kv import (
    CAS_ATTEMPTS,
    KeyStore,
    check_entry_key,
    entry_algorithm,
    index_check_value,
    new_entry,
    parse_entry,
)
from .options import check_addresses, environment_settings
from .transit import TransitKey, TransitKeyWrapper, wipe

if TYPE_CHECKING:
    import hvac

__all__ = ["RewrapReport", "VaultKeyProvider"]


class _Cached:
    """One unwrapped version in the process cache."""

    __slots__ = ("cipher", "state", "created_at", "expires")

    def __init__(self, cipher: AesGcm, state: KeyState, created_at: datetime,
                 expires: float) -> None:
        self.cipher = cipher
        self.state = state
        self.created_at = created_at
        self.expires = expires


@dataclass(frozen=True)
class RewrapReport:
    """What :meth:`VaultKeyProvider.rotate_wrapping_key` did.

    Attributes:
        transit_version: the Transit key's latest version after rotation.
        rewrapped: the data-key versions whose wrapped key was rewritten.
        min_decryption_version: the Transit key's minimum decryption version afterwards.
    """

    transit_version: int
    rewrapped: tuple[int, ...]
    min_decryption_version: int


def _same_check(recorded: Any, computed: str) -> bool:
    return isinstance(recorded, str) and hmac.compare_digest(recorded.encode(), computed.encode())


def _iso_now() -> str:
    return datetime.now(timezone.utc).isoformat()


_PATH_RE = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*")


@dataclass(frozen=True)
class VaultProviderConfig(ProviderConfig):
    """What another process needs to build the same :class:`VaultKeyProvider`: Vault's address,
    the paths, TLS files and the auth method, never a credential. The new process logs in with
    the credentials of its own environment (``VAULT_TOKEN``, ``VAULT_ROLE_ID`` +
    ``VAULT_SECRET_ID``, its Kubernetes service account, or the client certificate named here)."""

    settings: tuple[tuple[str, Any], ...]

    def build(self) -> "VaultKeyProvider":
        return VaultKeyProvider.from_environment(os.environ, **dict(self.settings))


# Constructor arguments that are not secrets, and so may travel in a VaultProviderConfig.
_SHAREABLE = ("address", "key_name", "mount", "kv_mount", "kv_path", "cache_ttl", "timeout",
              "retries", "deadline", "approle_mount", "role", "jwt_path", "k8s_mount",
              "create_key", "verify", "namespace", "client_cert", "client_key", "cert_role",
              "cert_mount", "algorithm")


class VaultKeyProvider(KeyProvider):
    """Versioned AES-256 data keys wrapped by a Vault/OpenBao Transit key and stored in KV v2.

    Args:
        address: Vault's URL (``$VAULT_ADDR`` via :meth:`from_environment`); or the nodes of an
            HA cluster, as a list or separated by commas: requests go to the active node,
            found and followed as leadership moves (``docs/vault-ha.md``).
        token: a Vault token; or ``role_id`` + ``secret_id`` (AppRole); or ``role`` +
            ``jwt_path`` (Kubernetes auth); or ``client_cert`` + ``client_key`` without the
            others (TLS certificate login; ``cert_role``, ``cert_mount``).
        key_name: the Transit key that wraps the data keys.
        mount: the Transit mount.
        kv_mount: the KV v2 mount.
        kv_path: the folder for version entries and the ``current`` pointer.
        cache_ttl: seconds an unwrapped key (and the current-version pointer) stays cached;
            0 disables caching.
        timeout: seconds per HTTP call.
        retries: extra attempts after a transport error or 5xx, with exponential backoff.
        deadline: seconds a call keeps retrying (a leader election) instead of counting
            ``retries``; default None for one address, 15 for several (``VAULT_DEADLINE``).
        create_key: create the Transit key (``aes256-gcm96``) when it is missing.
        verify: TLS verification: True (the system's CAs), False, or the path of a CA bundle
            file or directory (``VAULT_CACERT``).
        namespace: Vault Enterprise namespace.
        client: an existing ``hvac.Client`` to use instead of building one.
        client_cert, client_key: a TLS client certificate and its key (PEM files), for
            listeners that require one and for the certificate login.
        cert_role, cert_mount: the certificate login's role and mount (see
            :class:`~engine.vault.VaultConnection`).
        algorithm: the algorithm of versions created from now on (``"aes-256-gcm"``, or
            ``"xaes-256-gcm"``); each version's KV entry records its own.

    Raises:
        VaultConfigurationError: invalid settings, or no Vault server at the address.
        VaultTLSError: the TLS connection failed (untrusted, expired or misnamed certificate,
            a client certificate required, ...).
        VaultUnavailable: Vault did not answer within the retry budget (the message names it).
        VaultAuthError: bad token or failed login.
        VaultKeyMissing: the Transit key is missing and ``create_key`` is False (or it could not
            be created).
    """

    __slots__ = ("_conn", "_store", "_transit", "_ttl", "_lock", "_entries", "_current",
                 "_closed", "_unwraps", "_conflicts", "_settings", "_algorithm", "_owner",
                 "_rotating", "_rotating_depth")

    def __init__(self, address: str | Sequence[str], *, token: str | None = None,
                 key_name: str = "engine-data-key", mount: str = "transit",
                 kv_mount: str = "secret", kv_path: str = "engine/encryption",
                 cache_ttl: float = 300.0, timeout: float = 5.0, retries: int = 3,
                 deadline: float | None = None, role_id: str | None = None,
                 secret_id: str | None = None,
                 approle_mount: str = "approle", role: str | None = None,
                 jwt_path: str = DEFAULT_JWT_PATH, k8s_mount: str = "kubernetes",
                 create_key: bool = True, verify: bool | str = True,
                 namespace: str | None = None, client: "hvac.Client | None" = None,
                 client_cert: str | None = None, client_key: str | None = None,
                 cert_role: str | None = None, cert_mount: str = "cert",
                 algorithm: str = DEFAULT_ALGORITHM) -> None:
        for name, value in (("key_name", key_name), ("mount", mount), ("kv_mount", kv_mount),
                            ("kv_path", kv_path)):
            if not isinstance(value, str) or not _PATH_RE.fullmatch(value.strip("/")):
                raise VaultConfigurationError(f"{name} must be a Vault path, got {value!r}")
        if not isinstance(cache_ttl, (int, float)) or cache_ttl < 0:
            raise VaultConfigurationError("cache_ttl must be a non-negative number of seconds")
        self._algorithm = check_algorithm(algorithm)
        arguments = dict(locals())
        self._settings = tuple((k, tuple(v) if isinstance(v, list) else v)
                               for k, v in ((k, arguments[k]) for k in _SHAREABLE))
        self._ttl = float(cache_ttl)
        self._lock = fork_safe_lock(threading.RLock)
        self._entries: dict[int, _Cached] = {}
        self._current: tuple[int, float] | None = None
        self._closed = False
        self._unwraps = 0
        self._conflicts = 0
        self._owner = os.urandom(16).hex()  # this provider, as the rotation lock's holder
        self._rotating = fork_safe_lock(threading.RLock)
        self._rotating_depth = 0
        if deadline is None and client is None and len(check_addresses(address)) > 1:
            deadline = DEFAULT_DEADLINE
        policy = RetryPolicy(timeout=timeout, retries=retries, deadline=deadline,
                             **({"max_backoff": HA_MAX_BACKOFF} if deadline else {}))
        self._conn = VaultConnection(
            address, token=token, role_id=role_id, secret_id=secret_id,
            approle_mount=approle_mount, role=role, jwt_path=jwt_path, k8s_mount=k8s_mount,
            policy=policy, verify=verify,
            client_cert=client_cert, client_key=client_key, cert_role=cert_role,
            cert_mount=cert_mount, namespace=namespace, client=client)
        self._store = KeyStore(self._conn, kv_mount.strip("/"), kv_path.strip("/"))
        self._transit = TransitKey(self._conn, mount.strip("/"), key_name)
        try:
            self._transit.ensure(create_key)
        except BaseException:
            self._conn.close()
            raise

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None,
                         **overrides: Any) -> "VaultKeyProvider":
        """A provider configured by the environment.

        Reads ``VAULT_ADDR`` (required) and credentials: ``VAULT_TOKEN``, or ``VAULT_ROLE_ID``
        + ``VAULT_SECRET_ID``, or ``VAULT_K8S_ROLE`` (+ ``VAULT_K8S_JWT_PATH``), or
        ``VAULT_CLIENT_CERT`` + ``VAULT_CLIENT_KEY`` (+ ``VAULT_CERT_ROLE``); and optionally
        ``VAULT_TRANSIT_KEY``, ``VAULT_TRANSIT_MOUNT``, ``VAULT_KV_MOUNT``, ``VAULT_KV_PATH``,
        ``VAULT_KEY_CACHE_TTL``, ``VAULT_TIMEOUT``, ``VAULT_RETRIES``, ``VAULT_CACERT``,
        ``VAULT_SKIP_VERIFY``, ``VAULT_NAMESPACE`` (see
        :func:`~engine.vault.connection.environment_settings`), and ``ENCRYPTION_ALGORITHM`` for
        new versions. Keyword arguments override them.

        Raises:
            VaultConfigurationError: ``VAULT_ADDR`` or credentials missing, or a bad number.
            (and whatever the constructor raises)
        """
        env = os.environ if env is None else env
        kw = environment_settings(env)
        for var, arg in (("VAULT_TRANSIT_KEY", "key_name"), ("VAULT_TRANSIT_MOUNT", "mount"),
                         ("VAULT_KV_MOUNT", "kv_mount"), ("VAULT_KV_PATH", "kv_path")):
            if env.get(var):
                kw[arg] = env[var]
        cache_ttl = env_number(env, "VAULT_KEY_CACHE_TTL", float,
                               error=VaultConfigurationError)
        if cache_ttl is not None:
            kw["cache_ttl"] = cache_ttl
        kw["algorithm"] = algorithm_from_environment(env)
        kw.update(overrides)
        address = kw.pop("address", None)
        if not address:
            raise VaultConfigurationError("VAULT_ADDR is not set; set it to Vault's URL")
        if not any(kw.get(k) for k in ("token", "role_id", "secret_id", "role", "client",
                                       "client_cert")):
            raise VaultConfigurationError(
                "no Vault credentials: set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID "
                "(AppRole), or VAULT_K8S_ROLE (Kubernetes auth), or VAULT_CLIENT_CERT and "
                "VAULT_CLIENT_KEY (TLS certificate login)"
            )
        return cls(address, **kw)

    def __repr__(self) -> str:
        return (f"<VaultKeyProvider address={self._conn.address!r} "
                f"transit={self._transit.mount}/{self._transit.name} "
                f"kv={self._store.mount}/{self._store.path}{' closed' if self._closed else ''}>")

    def __enter__(self) -> "VaultKeyProvider":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def config(self) -> VaultProviderConfig:
        """Address, paths, TLS files and auth method: a worker logs in with its own credentials
        (see :class:`VaultProviderConfig`)."""
        return VaultProviderConfig(self._settings)

    @property
    def address(self) -> str:
        """Vault's URL."""
        return self._conn.address

    @property
    def connection(self) -> VaultConnection:
        """The authenticated connection (shared with :class:`~engine.vault.VaultSecrets`)."""
        return self._conn

    @property
    def key_name(self) -> str:
        """The Transit key that wraps the data keys."""
        return self._transit.name

    @property
    def cache_ttl(self) -> float:
        """Seconds an unwrapped key stays in the process cache."""
        return self._ttl

    # ---- cache ----

    def key_wrapper(self) -> TransitKeyWrapper:
        """Secrets (Parquet Modular Encryption's key-encryption keys) are wrapped by the Transit
        key itself: only Vault can unwrap them."""
        self._check_open()
        return TransitKeyWrapper(self._transit)

    def _check_open(self) -> None:
        if self._closed:
            raise KeyProviderError("this VaultKeyProvider is closed")

    def _sweep(self, now: float) -> None:
        for v in [v for v, c in self._entries.items() if c.expires <= now]:
            del self._entries[v]

    def _remember(self, version: int, cached: _Cached) -> None:
        if self._ttl > 0:
            self._entries[version] = cached

    def _load(self, version: int) -> _Cached:
        """The cached version, unwrapping it through Transit on a miss or after the TTL."""
        cached = self._entries.get(version)
        if cached is not None and cached.expires > time.monotonic():
            return cached
        with self._lock:
            self._check_open()
            now = time.monotonic()
            self._sweep(now)
            cached = self._entries.get(version)
            if cached is not None:
                return cached
            found = self._store.entry(version)
            if found is None:
                raise UnknownKeyVersion(version)
            entry = found[0]
            state, created = parse_entry(version, entry)
            cached = _Cached(self._unwrap(version, entry), state, created, now + self._ttl)
            self._remember(version, cached)
            return cached

    def _unwrap(self, version: int, entry: dict[str, Any]) -> AesGcm:
        wrapped = entry.get("wrapped_key")
        if not isinstance(wrapped, str) or not wrapped:
            raise WrappedKeyInvalid(f"key version {version} has no wrapped key in Vault")
        if entry.get("transit_key", self._transit.name) != self._transit.name:
            raise WrappedKeyInvalid(f"key version {version} is wrapped by another Transit key "
                                    f"than {self._transit.name!r}")
        key = self._transit.unwrap(version, wrapped)
        try:
            check_entry_key(version, entry, key)
            self._unwraps += 1
            return cipher_for(entry_algorithm(version, entry), key)
        finally:
            wipe(key)

    def _current_version(self) -> int:
        cur = self._current
        if cur is not None and cur[1] > time.monotonic():
            return cur[0]
        with self._lock:
            self._check_open()
            self._sweep(time.monotonic())
            version, _ = self._store.pointer()
            if version is None:
                self._bootstrap()
                version, _ = self._store.pointer(consistent=True)
            if version is None:
                raise VaultError("the current-version pointer is missing after bootstrap")
            if version < max(self._entries, default=0):
                self._forget_vanished(version)
            self._current = (version, time.monotonic() + self._ttl)
            return version

    def _forget_vanished(self, current: int) -> None:
        """Empties the cache when a cached version above ``current`` has no entry any more:
        Vault was restored from a snapshot older than it, and every cached state may be stale.
        Encrypting on under such a version would write data that the restored Vault cannot
        decrypt. (A version above the pointer that still exists, after :meth:`set_current`
        rolled back, keeps the cache as it is.)"""
        for v in sorted((v for v in self._entries if v > current), reverse=True):
            if self._store.kv.read(self._store.entry_path(v), f"read key version {v}",
                                   consistent=True) is None:
                self._entries.clear()
                return

    def refresh(self) -> None:
        """Forgets the cached current version, so the next call reads Vault (keys stay cached
        until their TTL)."""
        with self._lock:
            self._current = None

    def stats(self) -> dict[str, int]:
        """Counters for tests and monitoring: unwraps done, versions cached now, version
        creations that lost a check-and-set race and retried, and changes of the active node
        seen (an HA cluster)."""
        return {"unwraps": self._unwraps, "cached_versions": len(self._entries),
                "cas_conflicts": self._conflicts,
                "leader_changes": self._conn.status.leader_changes}

    # ---- the KeyProvider protocol ----

    def get_current_key(self) -> VersionedKey:
        """The current version's key (creating version 1 in Vault on first use).

        Raises:
            KeyVersionNotUsable: the current version is not active.
            VaultUnavailable, VaultAuthError, VaultPermissionDenied, VaultKeyMissing,
            WrappedKeyInvalid: see the module docstring.
        """
        self._check_open()
        version = self._current_version()
        cached = self._load(version)
        if cached.state is not KeyState.ACTIVE:
            raise KeyVersionNotUsable(
                f"current key version {version} is {cached.state.value}; it cannot encrypt"
            )
        return VersionedKey(version, cached.cipher, cached.state)

    def get_key(self, version: int) -> VersionedKey:
        """The key of ``version`` in whatever state (decryption).

        Raises:
            UnknownKeyVersion: no such version in Vault.
            VaultUnavailable, WrappedKeyInvalid, ...: see :meth:`get_current_key`.
        """
        self._check_open()
        check_version(version)
        cached = self._load(version)
        return VersionedKey(version, cached.cipher, cached.state)

    def list_versions(self) -> list[KeyVersionInfo]:
        """Every version stored in Vault, ascending, with its state and creation time (read from
        Vault's active node, never a standby's replica that may lag: rotation and retention
        decide on it; no key is unwrapped)."""
        self._check_open()
        infos = []
        for v in self._store.versions(consistent=True):
            found = self._store.entry(v, consistent=True)
            if found is not None:
                infos.append(KeyVersionInfo(v, *parse_entry(v, found[0]),
                                            entry_algorithm(v, found[0])))
        return infos

    @property
    def current_version(self) -> int:
        """The current version (cached for ``cache_ttl``)."""
        self._check_open()
        return self._current_version()

    def create_version(self) -> KeyVersionInfo:
        """Creates the next version from a fresh Transit data key, makes it current, and moves
        older active versions to ``decrypt-only``.

        Safe across processes: the entry is created with ``cas=0``; a writer that loses retries
        with the next number, so each successful call adds exactly one version. Nothing is
        written to KV before Transit has produced the key.

        Raises:
            VaultPermissionDenied, VaultKeyMissing, VaultUnavailable, VaultConflict.
        """
        self._check_open()
        with self._lock:
            return self._create(only=None)

    def _bootstrap(self) -> None:
        existing = self._store.versions(consistent=True)
        if existing:  # a creator died before writing the pointer: adopt the newest
            self._store.set_pointer(existing[-1], only_up=True)
        else:
            self._create(only=1)

    def _create(self, only: int | None) -> KeyVersionInfo:
        """Creates a version (``only``: exactly that one, or nothing if it exists)."""
        key, wrapped = self._transit.new_data_key()
        try:
            for attempt in range(CAS_ATTEMPTS):
                version = only or (max(self._store.versions(consistent=attempt > 0),
                                       default=0) + 1)
                now = datetime.now(timezone.utc)
                entry = new_entry(version, key, wrapped, self._transit.name,
                                  self._transit.mount, now, self._algorithm)
                if self._store.create_entry(version, entry):
                    break
                self._conflicts += 1
                if only is not None:  # another process made it; its pointer may lag
                    self._store.set_pointer(only, only_up=True)
                    return KeyVersionInfo(only, KeyState.ACTIVE, now, self._algorithm)
            else:
                raise VaultConflict(f"could not create a key version in "
                                    f"{self._store.kv.shown(self._store.path)!r}: "
                                    f"{CAS_ATTEMPTS} check-and-set conflicts")
            cipher = cipher_for(self._algorithm, key)
        finally:
            wipe(key)
        current = self._store.set_pointer(version, only_up=True)
        self._retire_below(version)
        state = KeyState.ACTIVE if current == version else KeyState.DECRYPT_ONLY
        self._remember(version, _Cached(cipher, state, now, time.monotonic() + self._ttl))
        self._current = (current, time.monotonic() + self._ttl)
        return KeyVersionInfo(version, KeyState.ACTIVE, now, self._algorithm)

    def _retire_below(self, version: int) -> None:
        def retire(entry: dict[str, Any]) -> dict[str, Any] | None:
            if entry.get("state") != KeyState.ACTIVE.value:
                return None
            entry["state"] = KeyState.DECRYPT_ONLY.value
            return entry

        for v in self._store.versions():
            if v < version:
                self._store.update_entry(v, retire)
                cached = self._entries.get(v)
                if cached is not None and cached.state is KeyState.ACTIVE:
                    cached.state = KeyState.DECRYPT_ONLY

    def set_state(self, version: int, state: KeyState | str) -> KeyVersionInfo:
        """Changes a version's lifecycle state in Vault (rotation and retention use this).

        A current version that is not active refuses encryption until a new one is created.

        Raises:
            UnknownKeyVersion: no such version.
            InvalidArgument: not a valid state.
        """
        self._check_open()
        new_state = check_state(state)
        check_version(version)

        def change(entry: dict[str, Any]) -> dict[str, Any] | None:
            if entry.get("state") == new_state.value:
                return None
            entry["state"] = new_state.value
            return entry

        with self._lock:
            entry = self._store.update_entry(version, change)
            _, created = parse_entry(version, entry)
            cached = self._entries.get(version)
            if cached is not None:
                cached.state = new_state
            return KeyVersionInfo(version, new_state, created, entry_algorithm(version, entry))

    def set_current(self, version: int) -> None:
        """Makes an existing, active version current (e.g. to roll back a rotation).

        Raises:
            UnknownKeyVersion: no such version.
            KeyVersionNotUsable: the version is not active.
        """
        self._check_open()
        check_version(version)
        with self._lock:
            found = self._store.entry(version)
            if found is None:
                raise UnknownKeyVersion(version)
            state, _ = parse_entry(version, found[0])
            if state is not KeyState.ACTIVE:
                raise KeyVersionNotUsable(f"key version {version} is {state.value}")
            self._store.set_pointer(version, only_up=False)
            self._current = (version, time.monotonic() + self._ttl)

    # ---- key-encryption-key rotation ----

    def rotate_wrapping_key(self, *, set_min_decryption_version: bool = False) -> RewrapReport:
        """Rotates the Transit key and rewraps every stored data key with its newest version.

        Rewrapping happens inside Vault (Transit ``rewrap``): the data keys never leave it, stay
        the same, and no data is re-encrypted. Runs under the rotation lock, and is journaled in
        KV (``<kv_path>/wrapping-rotation``: the Transit version it started from) before the
        Transit key is rotated, so that a run that stopped half-way (Vault lost its leader, the
        process died) is completed by the next run, which rewraps without rotating again: one
        rotation, one new Transit version, however often it is re-run.

        Args:
            set_min_decryption_version: afterwards, refuse Transit decryption with older key
                versions (only once every entry has been rewrapped).

        Returns:
            A :class:`RewrapReport`.

        Raises:
            VaultPermissionDenied: the token may not rotate, rewrap or configure the key.
            WrappedKeyInvalid: a stored wrapped key is rejected by Transit (the versions
                rewrapped before it stay rewrapped; re-run after fixing it).
            VaultUnavailable, VaultOutcomeUnknown: Vault failed half-way; re-run.
        """
        self._check_open()
        with self.rotation_lock(), self._lock:
            journal, cas = self._store.journal()
            start = journal.get("from")
            latest = self._transit.latest_version()
            if not (journal.get("state") == "rotating" and type(start) is int
                    and latest > start):
                # Nothing half-done: record the start, then rotate (a run that stops between
                # the two leaves "rotating" from the current version: the next one rotates).
                if not self._store.write_journal({"state": "rotating", "from": latest,
                                                  "started_at": _iso_now()}, cas):
                    raise VaultConflict("the wrapping-key rotation journal changed under this "
                                        "run: another rotation is running")
                journal, cas = self._store.journal()
                latest = self._transit.rotate()
            prefix = f"vault:v{latest}:"
            rewrapped = []
            for v in self._store.versions(consistent=True):
                done: list[int] = []

                def rewrap(entry: dict[str, Any], v: int = v,
                           done: list[int] = done) -> dict[str, Any] | None:
                    wrapped = entry.get("wrapped_key")
                    if not isinstance(wrapped, str) or wrapped.startswith(prefix):
                        return None
                    entry["wrapped_key"] = self._transit.rewrap(v, wrapped)
                    entry["rewrapped_at"] = _iso_now()
                    done.append(v)
                    return entry

                self._store.update_entry(v, rewrap)
                if done:
                    rewrapped.append(v)
            min_dec = int(self._transit.info(consistent=True).get("min_decryption_version") or 1)
            if set_min_decryption_version and min_dec < latest:
                self._transit.set_min_decryption_version(latest)
                min_dec = latest
            self._store.write_journal({**journal, "state": "done", "to": latest,
                                       "finished_at": _iso_now()}, cas)
            return RewrapReport(latest, tuple(rewrapped), min_dec)

    # ---- usage, the rotation lock, the audit key, purge ----

    def record_usage(self, version: int, count: int, *, limit: int | None = None) -> int:
        """Adds ``count`` encryptions to a version's usage, stored in its KV entry
        (check-and-set, so every process adds to one count); see
        :meth:`KeyProvider.record_usage`. Returns the new total."""
        self._check_open()
        check_count(count)

        def change(entry: dict[str, Any]) -> dict[str, Any] | None:
            entry["usage"] = next_usage(version, int(entry.get("usage") or 0), count, limit)
            return entry

        return int(self._store.update_entry(version, change)["usage"])

    def usage(self, version: int) -> int:
        """Encryptions recorded for a version (see :meth:`record_usage`)."""
        self._check_open()
        found = self._store.entry(version)
        if found is None:
            raise UnknownKeyVersion(version)
        return int(found[0].get("usage") or 0)

    @contextlib.contextmanager
    def rotation_lock(self, wait: bool = True, ttl: float = 300.0,
                      timeout: float = 600.0) -> Iterator[None]:
        """A lock in KV (``<kv_path>/rotation-lock``) taken with check-and-set, so two processes
        on any machines never rotate at once. A holder that died frees it after ``ttl`` seconds;
        a lock this provider still holds because its release failed (Vault was unreachable) is
        taken again at once. Re-entrant within a thread; one thread of this process at a time.

        Raises:
            KeyLockBusy: ``wait`` is False (or ``timeout`` passed) and another process holds it.
        """
        self._check_open()
        if not self._rotating.acquire(timeout=timeout if wait else 0):
            raise KeyLockBusy("another thread of this process holds the key rotation lock")
        try:
            if self._rotating_depth:
                self._rotating_depth += 1
                try:
                    yield
                finally:
                    self._rotating_depth -= 1
                return
            deadline = time.monotonic() + timeout
            while not self._store.take_lock(self._owner, ttl):
                if not wait or time.monotonic() > deadline:
                    raise KeyLockBusy("another process holds the key rotation lock in Vault")
                time.sleep(0.2)
            self._rotating_depth = 1
            try:
                yield
            finally:
                self._rotating_depth = 0
                self._release_rotation_lock()
        finally:
            self._rotating.release()

    def _release_rotation_lock(self) -> None:
        try:
            self._store.release_lock(self._owner)
        except VaultError:
            # Vault is unreachable: the lock stays held by this provider, which takes it again
            # on its next rotation (others wait for its ttl). An exception from here would
            # replace the one that is leaving the rotation, if any.
            pass

    def audit_key(self) -> bytes:
        """The HMAC key of the audit trail: 32 random bytes kept in KV (``<kv_path>/audit``),
        created once with check-and-set."""
        self._check_open()
        return self._store.audit_key()

    def index_key(self, table: str, column: str, version: int) -> bytes:
        """A blind-index key derived from the version's index secret, 32 random bytes kept in KV
        (``<kv_path>/index-v<version>``, created with check-and-set on first use).

        Raises:
            UnknownKeyVersion: no such version in Vault.
        """
        self._check_open()
        check_version(version)
        found = self._store.entry(version)
        if found is None:
            raise UnknownKeyVersion(version)
        recorded = found[0].get("index_kcv")
        secret = self._store.index_secret(version, create=recorded is None)
        if secret is None or not _same_check(recorded or self._record_index_check(version, secret),
                                             index_check_value(secret, version)):
            raise MasterKeyMismatch(
                f"the blind-index secret of key version {version} in Vault is "
                f"{'missing' if secret is None else 'not the one'} its indexes were computed "
                f"with (replaced or recreated in KV): every lookup would find nothing, so no "
                f"index key is derived from it; restore the secret")
        return derive_index_key(secret, table, column, version)

    def _record_index_check(self, version: int, secret: bytes) -> str:
        """Records the index secret's check value in the version's entry at its first use (or
        returns the one another process recorded meanwhile)."""
        def change(entry: dict[str, Any]) -> dict[str, Any] | None:
            if entry.get("index_kcv") is not None:
                return None
            entry["index_kcv"] = index_check_value(secret, version)
            return entry

        return str(self._store.update_entry(version, change).get("index_kcv"))

    def purge(self, version: int) -> None:
        """Deletes a version's entry and every KV version of it, and its blind-index secret:
        data sealed under it can no longer be decrypted. Refuses the current version.

        Raises:
            UnknownKeyVersion: no such version.
            KeyVersionNotUsable: it is the current version.
        """
        self._check_open()
        if self._store.entry(version) is None:
            raise UnknownKeyVersion(version)
        if version == self._current_version():
            raise KeyVersionNotUsable(f"key version {version} is current; it cannot be purged")
        self._store.destroy_entry(version)
        self._store.destroy_index_secret(version)
        with self._lock:
            self._entries.pop(version, None)

    # ---- lifecycle ----

    def close(self) -> None:
        """Drops every cached key (their native key schedules are wiped when freed), revokes a
        token obtained by login, and closes the HTTP session. Later calls raise
        :class:`KeyProviderError`. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._entries.clear()
            self._current = None
        self._conn.close()
