"""Keys whose root of trust is HashiCorp Vault or OpenBao (the seed's ``VaultKeyProvider``).

Envelope encryption: Vault never sees the data. Each key version's 256-bit data key comes from
Transit's ``datakey`` endpoint; only its wrapped form (``vault:vN:...``, encrypted under the Transit
key) is stored, in KV v2, one entry per version, beside a pointer to the current version::

    secret/data/intelliflow/encryption/v1        {wrapped_key, state, created_at, transit_key, kcv}
    secret/data/intelliflow/encryption/v2        ...
    secret/data/intelliflow/encryption/current   {version: 2}

Entries are created with check-and-set (``cas=0``) and updated with the KV version they were read
at, so two processes never both create version N and never overwrite each other's state changes.
At use a version is unwrapped once through Transit ``decrypt``, checked against its key check value
(``kcv``: an HMAC of the version number under the key, so a wrapped key moved between versions is
caught) and kept as a native :class:`~engine.AesGcm` for ``cache_ttl`` seconds. Encryption and
decryption then run entirely in the native engine, and keep running while Vault is unreachable
until the cache expires. Rotating the Transit key (:meth:`VaultKeyProvider.rotate_wrapping_key`)
rewraps the stored keys inside Vault; no data is re-encrypted.

Every HTTP call has a timeout and bounded retries with exponential backoff for transport errors and
5xx answers; failures map to the exception classes below, all :class:`KeyProviderError`. Tokens
and keys never appear in ``repr``, exceptions, logs or pickles.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import random
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Mapping, TypeVar

try:
    import hvac
    import hvac.exceptions as hvac_errors
    import requests
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "engine.keys.vault needs hvac: pip install 'engine[vault]' (or pip install hvac)"
    ) from _exc

from ..aead import KEY_BYTES, AesGcm
from ..errors import InvalidArgument
from .base import (
    KeyLockBusy,
    KeyProviderError,
    KeyState,
    KeyVersionInfo,
    KeyVersionNotUsable,
    UnknownKeyVersion,
    VersionedKey,
    check_count,
    check_state,
    check_version,
    next_usage,
)

__all__ = [
    "DEFAULT_JWT_PATH",
    "RetryPolicy",
    "RewrapReport",
    "VaultAuthError",
    "VaultConfigurationError",
    "VaultConflict",
    "VaultConnection",
    "VaultError",
    "VaultKeyMissing",
    "VaultKeyProvider",
    "VaultPermissionDenied",
    "VaultUnavailable",
    "WrappedKeyInvalid",
]

T = TypeVar("T")

DEFAULT_JWT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
ENTRY_FORMAT = 1
CAS_ATTEMPTS = 32
_KCV_DOMAIN = b"engine/vault/kcv/v1\x00version="
_VERSION_KEY = re.compile(r"v([1-9][0-9]{0,9})")


# ---- errors ----

class VaultError(KeyProviderError):
    """Base class of the Vault provider's errors."""


class VaultConfigurationError(VaultError, ValueError):
    """The provider's settings (arguments or ``VAULT_*`` variables) are missing or invalid."""


class VaultUnavailable(VaultError):
    """Vault did not answer (refused, timed out, sealed, 5xx) within the retry budget."""


class VaultAuthError(VaultError):
    """Vault rejected the credentials: an invalid, expired or revoked token, or a failed
    AppRole/Kubernetes login."""


class VaultPermissionDenied(VaultError):
    """The token is valid but its policies deny the operation on the path named."""


class VaultKeyMissing(VaultError, LookupError):
    """The Transit key does not exist (and the provider may not or could not create it)."""


class WrappedKeyInvalid(VaultError):
    """A stored wrapped data key does not unwrap, or unwraps to a key that fails its check value
    (tampered, moved between versions, or written by something else)."""


class VaultConflict(VaultError):
    """A check-and-set write lost to other writers more times than the retry budget allows."""


class _NotFound(Exception):
    """Internal: HTTP 404."""


class _BadRequest(Exception):
    """Internal: HTTP 400; ``reason`` is Vault's first error string (never request data)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reason(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    text = str(errors[0]) if isinstance(errors, (list, tuple)) and errors else ""
    text = " ".join(text.replace("*", " ").split())
    # Batch answers carry whole response bodies; keep only a short, single-item reason.
    return text[:160] if not text.startswith("{") else "request rejected"


def _is_cas_mismatch(reason: str) -> bool:
    return "check-and-set" in reason


# ---- transport: one hvac client, timeouts, retries, error mapping ----

@dataclass(frozen=True)
class RetryPolicy:
    """Timeout per HTTP call and bounded retries with exponential backoff.

    Only transport failures (refused, reset, timed out) and 429/5xx answers are retried, so one
    call takes at most about ``(retries + 1) * timeout + sum of backoffs`` seconds.
    """

    timeout: float = 5.0
    retries: int = 3
    backoff: float = 0.1
    max_backoff: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.timeout, (int, float)) or not self.timeout > 0:
            raise VaultConfigurationError("timeout must be a positive number of seconds")
        if type(self.retries) is not int or self.retries < 0:
            raise VaultConfigurationError("retries must be a non-negative integer")
        if not self.backoff >= 0 or not self.max_backoff >= 0:
            raise VaultConfigurationError("backoff times must be non-negative")

    def delay(self, attempt: int) -> float:
        """The pause after failed attempt ``attempt`` (0-based), with jitter in [50%, 100%]."""
        return min(self.max_backoff, self.backoff * (2 ** attempt)) * (0.5 + random.random() / 2)


_TRANSIENT_STATUS = {hvac_errors.RateLimitExceeded: 429, hvac_errors.InternalServerError: 500,
                     hvac_errors.VaultNotInitialized: 501, hvac_errors.BadGateway: 502,
                     hvac_errors.VaultDown: 503}
_TRANSIENT_HTTP = tuple(_TRANSIENT_STATUS)


class VaultConnection:
    """An authenticated hvac client with timeouts, retries and exception mapping.

    Shared by :class:`VaultKeyProvider` and :class:`engine.secrets.VaultSecrets`. Logging in with
    AppRole or Kubernetes happens here, and again once when Vault answers 403 (expired login).

    Args:
        address: Vault's URL, e.g. ``https://vault.example.com:8200``.
        token: a Vault token; or
        role_id, secret_id: AppRole credentials (``approle_mount``, default ``approle``); or
        role, jwt_path: Kubernetes auth (service-account JWT file; ``k8s_mount``).
        policy: timeout and retries.
        verify: TLS verification: True, False, or a CA bundle path.
        namespace: a Vault Enterprise namespace, if any.

    Raises:
        VaultConfigurationError: no address, or not exactly one way to authenticate.
        VaultUnavailable: Vault did not answer.
        VaultAuthError: the token is invalid or the login failed.
    """

    __slots__ = ("address", "policy", "_client", "_login", "_logged_in", "_lock", "_method",
                 "_owned")

    def __init__(self, address: str, *, token: str | None = None, role_id: str | None = None,
                 secret_id: str | None = None, approle_mount: str = "approle",
                 role: str | None = None, jwt_path: str = DEFAULT_JWT_PATH,
                 k8s_mount: str = "kubernetes", policy: RetryPolicy | None = None,
                 verify: bool | str = True, namespace: str | None = None,
                 client: "hvac.Client | None" = None) -> None:
        if client is not None:
            address = address or client.url
        if not isinstance(address, str) or not re.match(r"^https?://[^\s/]+", address or ""):
            raise VaultConfigurationError(
                "Vault address must be an http(s) URL such as https://vault.example.com:8200 "
                "(argument address= or $VAULT_ADDR)"
            )
        self.address = address.rstrip("/")
        self.policy = policy or RetryPolicy()
        self._lock = threading.Lock()
        methods = [m for m, given in (("token", token), ("approle", role_id or secret_id),
                                      ("kubernetes", role)) if given]
        if client is not None and not methods:
            methods = ["client"]
        if len(methods) != 1:
            raise VaultConfigurationError(
                "give exactly one way to authenticate to Vault: token, role_id + secret_id "
                f"(AppRole), or role (Kubernetes); got {', '.join(methods) or 'none'}"
            )
        if methods == ["approle"] and not (role_id and secret_id):
            raise VaultConfigurationError("AppRole needs both role_id and secret_id")
        self._method = methods[0]
        self._owned = client is None
        if client is None:
            session = requests.Session()
            client = hvac.Client(url=self.address, token=token, timeout=self.policy.timeout,
                                 verify=verify, namespace=namespace, session=session)
        elif token:
            client.token = token
        self._client = client
        self._login: Callable[[], None] | None = None
        self._logged_in = False
        if methods == ["approle"]:
            self._login = lambda: self._client.auth.approle.login(
                role_id=role_id, secret_id=secret_id, mount_point=approle_mount)
        elif methods == ["kubernetes"]:
            self._login = lambda: self._client.auth.kubernetes.login(
                role=role, jwt=_read_jwt(jwt_path), mount_point=k8s_mount)
        try:
            if self._login is not None:
                self.login()
            else:
                self.call("look up the token", "auth/token/lookup-self",
                          self._client.auth.token.lookup_self, forbidden=self._bad_token)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<VaultConnection address={self.address!r}>"

    def __reduce__(self):
        raise TypeError("Vault connections hold credentials and cannot be pickled")

    @property
    def client(self) -> "hvac.Client":
        """The underlying hvac client (for operations this module does not wrap)."""
        return self._client

    def _bad_token(self) -> VaultAuthError:
        return VaultAuthError(
            f"Vault at {self.address} rejected the token (invalid, expired or revoked)"
        )

    def login(self) -> None:
        """Logs in with the configured auth method (AppRole or Kubernetes).

        Raises:
            VaultAuthError: the credentials were rejected, or the auth method is not enabled.
            VaultUnavailable: Vault did not answer.
        """
        if self._login is None:
            return

        def failed() -> VaultAuthError:
            return VaultAuthError(f"{self._method} login to Vault at {self.address} failed: "
                                  f"credentials rejected or the auth method is not enabled")

        with self._lock:
            try:
                self.call(f"log in with {self._method}", "auth/", self._login, forbidden=failed,
                          relogin=False)
            except (_BadRequest, _NotFound, VaultPermissionDenied):
                raise failed() from None
            self._logged_in = True

    def call(self, what: str, path: str, fn: Callable[..., T], /, *args: Any,
             forbidden: Callable[[], VaultError] | None = None, relogin: bool = True,
             retries: int | None = None, **kwargs: Any) -> T:
        """Calls ``fn(*args, **kwargs)`` (an hvac method) with retries and error mapping.

        Args:
            what: the operation, for messages ("read the current version").
            path: the Vault path, for messages.
            forbidden: builds the exception for a 403 (default: probe the token, then
                :class:`VaultAuthError` or :class:`VaultPermissionDenied`).
            relogin: on a 403, log in again once first (AppRole/Kubernetes only).
            retries: overrides the policy's retry count.

        Raises:
            VaultUnavailable, VaultAuthError, VaultPermissionDenied; ``_NotFound`` and
            ``_BadRequest`` for the caller to map.
        """
        policy = self.policy
        attempts = 1 + (policy.retries if retries is None else retries)
        start = time.monotonic()
        cause = ""
        for attempt in range(attempts):
            try:
                return fn(*args, **kwargs)
            except requests.exceptions.Timeout:
                cause = f"timed out after {policy.timeout:g} s"
            except requests.exceptions.RequestException as exc:
                cause = "connection refused" if "refused" in str(exc).lower() \
                    else "connection failed"
            except _TRANSIENT_HTTP as exc:
                cause = f"HTTP {_TRANSIENT_STATUS.get(type(exc), 'error')}: {_reason(exc)}"
            except hvac_errors.Forbidden:
                if relogin and self._login is not None:
                    relogin = False
                    self.login()
                    continue
                raise (forbidden() if forbidden else self._denied(what, path)) from None
            except hvac_errors.Unauthorized:
                raise self._bad_token() from None
            except hvac_errors.InvalidPath:
                raise _NotFound(path) from None
            except hvac_errors.InvalidRequest as exc:
                raise _BadRequest(_reason(exc)) from None
            except hvac_errors.VaultError as exc:
                raise VaultError(f"Vault at {self.address} failed to {what} on {path}: "
                                 f"{_reason(exc) or type(exc).__name__}") from None
            if attempt + 1 < attempts:
                time.sleep(policy.delay(attempt))
        raise VaultUnavailable(
            f"Vault at {self.address} is unavailable ({cause}); could not {what} after "
            f"{attempts} attempt(s) in {time.monotonic() - start:.1f} s"
        ) from None

    def _denied(self, what: str, path: str) -> VaultError:
        """A 403 means a bad token or a policy that denies the path; one probe tells which."""
        try:
            self._client.auth.token.lookup_self()
        except hvac_errors.Forbidden:
            return self._bad_token()
        except Exception:  # the probe is best effort
            pass
        return VaultPermissionDenied(
            f"Vault at {self.address} denied permission to {what} on {path!r}: the token's "
            f"policies do not allow it"
        )

    def revoke_login(self) -> None:
        """Revokes the token this connection obtained by logging in (best effort)."""
        if self._logged_in:
            try:
                self._client.auth.token.revoke_self()
            except Exception:
                pass
            self._logged_in = False

    def close(self) -> None:
        """Revokes a login token and closes the HTTP session (if this connection made it)."""
        self.revoke_login()
        if not self._owned:
            return
        adapter = getattr(self._client, "adapter", None)
        close = getattr(adapter, "close", None)
        if close is not None:
            close()


def _read_jwt(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            jwt = f.read().strip()
    except OSError as exc:
        raise VaultAuthError(
            f"cannot read the Kubernetes service-account token at {path!r}: "
            f"{exc.strerror or type(exc).__name__}"
        ) from None
    if not jwt:
        raise VaultAuthError(f"the Kubernetes service-account token at {path!r} is empty")
    return jwt


# ---- key material handling ----

def _wipe(buf: bytearray | None) -> None:
    if buf is not None:
        buf[:] = bytes(len(buf))


def _key_from_b64(value: Any) -> bytearray:
    """The 32-byte key as a bytearray (which the caller wipes). The transient ``bytes`` from the
    base64 decoder cannot be wiped from Python; it is dropped at once."""
    if not isinstance(value, str):
        raise ValueError("no plaintext")
    raw = binascii.a2b_base64(value)
    try:
        if len(raw) != KEY_BYTES:
            raise ValueError("wrong length")
        return bytearray(raw)
    finally:
        del raw


def _kcv(key: bytearray, version: int) -> bytes:
    return hmac.new(key, _KCV_DOMAIN + str(version).encode(), hashlib.sha256).digest()[:16]


def _iso_now() -> str:
    return datetime.now(timezone.utc).isoformat()


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


# ---- where things live in Vault: the KV layout and the Transit key ----

class _KeyStore:
    """The KV v2 layout: one entry per version (``<path>/v<N>``) and the ``current`` pointer.

    Every write is check-and-set: ``cas=0`` creates, ``cas=<KV version read>`` updates.
    """

    __slots__ = ("_conn", "mount", "path")

    def __init__(self, conn: VaultConnection, mount: str, path: str) -> None:
        self._conn, self.mount, self.path = conn, mount, path

    def entry_path(self, version: int) -> str:
        return f"{self.path}/v{version}"

    @property
    def pointer_path(self) -> str:
        return f"{self.path}/current"

    def shown(self, path: str) -> str:
        """The API path, for messages."""
        return f"{self.mount}/data/{path}"

    def read(self, path: str, what: str) -> tuple[dict[str, Any], int] | None:
        """(data, KV version) of the latest version at ``path``, or None if absent."""
        kv = self._conn.client.secrets.kv.v2
        try:
            resp = self._conn.call(what, self.shown(path), kv.read_secret_version, path=path,
                                   mount_point=self.mount, raise_on_deleted_version=True)
        except _NotFound:
            return None
        except _BadRequest as exc:
            raise VaultError(f"Vault refused to {what} at {self.shown(path)!r}: "
                             f"{exc.reason}") from None
        data = resp.get("data") or {}
        return data.get("data") or {}, int((data.get("metadata") or {}).get("version") or 0)

    def write(self, path: str, data: dict[str, Any], cas: int, what: str) -> bool:
        """Writes with check-and-set; False when ``cas`` no longer matches."""
        kv = self._conn.client.secrets.kv.v2
        try:
            self._conn.call(what, self.shown(path), kv.create_or_update_secret, path=path,
                            secret=data, cas=cas, mount_point=self.mount)
        except _BadRequest as exc:
            if _is_cas_mismatch(exc.reason):
                return False
            raise VaultError(f"Vault refused to {what} at {self.shown(path)!r}: "
                             f"{exc.reason}") from None
        return True

    def versions(self) -> list[int]:
        """The version numbers that have an entry, ascending."""
        kv = self._conn.client.secrets.kv.v2
        try:
            resp = self._conn.call("list key versions", f"{self.mount}/metadata/{self.path}",
                                   kv.list_secrets, path=self.path, mount_point=self.mount)
        except _NotFound:
            return []
        keys = (resp.get("data") or {}).get("keys") or []
        return sorted(int(m.group(1)) for k in keys if (m := _VERSION_KEY.fullmatch(k)))

    def entry(self, version: int) -> tuple[dict[str, Any], int] | None:
        return self.read(self.entry_path(version), f"read key version {version}")

    def create_entry(self, version: int, entry: dict[str, Any]) -> bool:
        return self.write(self.entry_path(version), entry, 0, f"create key version {version}")

    def update_entry(self, version: int,
                     change: Callable[[dict[str, Any]], dict | None]) -> dict[str, Any]:
        """Read-modify-write of one entry; ``change`` returns the new entry or None (no write).

        Raises:
            UnknownKeyVersion: no such entry.
            VaultConflict: lost the check-and-set race too often.
        """
        for _ in range(CAS_ATTEMPTS):
            found = self.entry(version)
            if found is None:
                raise UnknownKeyVersion(version)
            entry, kv_version = found
            new = change(dict(entry))
            if new is None:
                return entry
            if self.write(self.entry_path(version), new, kv_version,
                          f"update key version {version}"):
                return new
        raise VaultConflict(f"could not update key version {version}: too many conflicts")

    def pointer(self) -> tuple[int | None, int]:
        """(current version or None, the pointer's KV version or 0)."""
        found = self.read(self.pointer_path, "read the current key version")
        if found is None:
            return None, 0
        version = found[0].get("version")
        if type(version) is not int or version < 1:
            raise VaultError(f"the current-version pointer at {self.shown(self.pointer_path)!r} "
                             f"is invalid")
        return version, found[1]

    def set_pointer(self, version: int, *, only_up: bool) -> int:
        """Sets ``current`` to ``version`` (with ``only_up``, never lowers it); returns the
        pointer's value afterwards."""
        for _ in range(CAS_ATTEMPTS):
            cur, kv_version = self.pointer()
            if only_up and cur is not None and cur >= version:
                return cur
            if self.write(self.pointer_path, {"version": version, "updated_at": _iso_now()},
                          kv_version, "set the current key version"):
                return version
        raise VaultConflict("could not update the current-version pointer: too many conflicts")


class _TransitKey:
    """The Transit key that wraps the data keys: datakey, decrypt, rewrap, rotate."""

    __slots__ = ("_conn", "mount", "name")

    def __init__(self, conn: VaultConnection, mount: str, name: str) -> None:
        self._conn, self.mount, self.name = conn, mount, name

    def _call(self, what: str, endpoint: str, fn: Callable[..., T], /, **kwargs: Any) -> T:
        try:
            return self._conn.call(what, f"{self.mount}/{endpoint}/{self.name}", fn,
                                   name=self.name, mount_point=self.mount, **kwargs)
        except (_NotFound, _BadRequest) as exc:
            if isinstance(exc, _NotFound) or "key not found" in exc.reason:
                raise self.missing() from None
            raise

    def missing(self) -> VaultKeyMissing:
        return VaultKeyMissing(f"Transit key {self.name!r} does not exist at {self.mount}/ on "
                               f"{self._conn.address}")

    @property
    def _api(self) -> Any:
        return self._conn.client.secrets.transit

    def ensure(self, create: bool) -> None:
        """Checks that the key exists; creates it (``aes256-gcm96``) when missing and allowed.
        A token that may not read key metadata is let through: use will tell."""
        try:
            self._call("read the Transit key", "keys", self._api.read_key)
            return
        except VaultPermissionDenied:
            return
        except VaultKeyMissing:
            if not create:
                raise
        try:
            self._call("create the Transit key", "keys", self._api.create_key,
                       key_type="aes256-gcm96")
        except (_BadRequest, VaultKeyMissing):
            raise VaultKeyMissing(
                f"Transit key {self.name!r} is missing and could not be created at "
                f"{self.mount}/ on {self._conn.address} (is the Transit engine mounted?)"
            ) from None

    def new_data_key(self) -> tuple[bytearray, str]:
        """(key, wrapped key) from ``datakey/plaintext``; the caller wipes the key."""
        resp = self._call("generate a data key", "datakey/plaintext",
                          self._api.generate_data_key, key_type="plaintext")
        data = resp.get("data") or {}
        wrapped = data.get("ciphertext")
        try:
            key = _key_from_b64(data.get("plaintext"))
        except (ValueError, binascii.Error):
            raise VaultError("Transit datakey returned no usable 256-bit key") from None
        finally:
            data.clear()
        if not isinstance(wrapped, str) or not wrapped.startswith("vault:"):
            _wipe(key)
            raise VaultError("Transit datakey returned no wrapped key")
        return key, wrapped

    def unwrap(self, version: int, wrapped: str) -> bytearray:
        """The data key of ``version``; the caller wipes it.

        Raises:
            WrappedKeyInvalid: Transit rejects the ciphertext, or it is not a 256-bit key.
        """
        try:
            resp = self._call("unwrap a data key", "decrypt", self._api.decrypt_data,
                              ciphertext=wrapped)
        except _BadRequest as exc:
            raise WrappedKeyInvalid(
                f"Transit key {self.name!r} rejected the wrapped key of version {version} "
                f"(tampered, or not wrapped by this key: {exc.reason})"
            ) from None
        data = resp.get("data") or {}
        try:
            return _key_from_b64(data.get("plaintext"))
        except (ValueError, binascii.Error):
            raise WrappedKeyInvalid(
                f"the wrapped key of version {version} does not unwrap to a 256-bit key"
            ) from None
        finally:
            data.clear()

    def rewrap(self, version: int, wrapped: str) -> str:
        try:
            resp = self._call("rewrap a data key", "rewrap", self._api.rewrap_data,
                              ciphertext=wrapped)
        except _BadRequest as exc:
            raise WrappedKeyInvalid(
                f"Transit could not rewrap key version {version}: {exc.reason}"
            ) from None
        return resp["data"]["ciphertext"]

    def rotate(self) -> None:
        self._call("rotate the Transit key", "keys", self._api.rotate_key)

    def info(self) -> dict[str, Any]:
        return self._call("read the Transit key", "keys", self._api.read_key).get("data") or {}

    def set_min_decryption_version(self, version: int) -> None:
        self._call("set the minimum decryption version", "keys",
                   self._api.update_key_configuration, min_decryption_version=version)


# ---- the provider ----

_PATH_RE = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*")


class VaultKeyProvider:
    """Versioned AES-256 data keys wrapped by a Vault/OpenBao Transit key and stored in KV v2.

    Args:
        address: Vault's URL (``$VAULT_ADDR`` via :meth:`from_environment`).
        token: a Vault token; or ``role_id`` + ``secret_id`` (AppRole); or ``role`` +
            ``jwt_path`` (Kubernetes auth).
        key_name: the Transit key that wraps the data keys.
        mount: the Transit mount.
        kv_mount: the KV v2 mount.
        kv_path: the folder for version entries and the ``current`` pointer.
        cache_ttl: seconds an unwrapped key (and the current-version pointer) stays cached;
            0 disables caching.
        timeout: seconds per HTTP call.
        retries: extra attempts after a transport error or 5xx, with exponential backoff.
        create_key: create the Transit key (``aes256-gcm96``) when it is missing.
        verify: TLS verification (True, False, or a CA bundle path).
        namespace: Vault Enterprise namespace.
        client: an existing ``hvac.Client`` to use instead of building one.

    Raises:
        VaultConfigurationError: invalid settings.
        VaultUnavailable: Vault did not answer within the retry budget (the message names it).
        VaultAuthError: bad token or failed login.
        VaultKeyMissing: the Transit key is missing and ``create_key`` is False (or it could not
            be created).
    """

    __slots__ = ("_conn", "_store", "_transit", "_ttl", "_lock", "_entries", "_current",
                 "_closed", "_unwraps", "_conflicts")

    def __init__(self, address: str, *, token: str | None = None,
                 key_name: str = "intelliflow-data-key", mount: str = "transit",
                 kv_mount: str = "secret", kv_path: str = "intelliflow/encryption",
                 cache_ttl: float = 300.0, timeout: float = 5.0, retries: int = 3,
                 role_id: str | None = None, secret_id: str | None = None,
                 approle_mount: str = "approle", role: str | None = None,
                 jwt_path: str = DEFAULT_JWT_PATH, k8s_mount: str = "kubernetes",
                 create_key: bool = True, verify: bool | str = True,
                 namespace: str | None = None, client: "hvac.Client | None" = None) -> None:
        for name, value in (("key_name", key_name), ("mount", mount), ("kv_mount", kv_mount),
                            ("kv_path", kv_path)):
            if not isinstance(value, str) or not _PATH_RE.fullmatch(value.strip("/")):
                raise VaultConfigurationError(f"{name} must be a Vault path, got {value!r}")
        if not isinstance(cache_ttl, (int, float)) or cache_ttl < 0:
            raise VaultConfigurationError("cache_ttl must be a non-negative number of seconds")
        self._ttl = float(cache_ttl)
        self._lock = threading.RLock()
        self._entries: dict[int, _Cached] = {}
        self._current: tuple[int, float] | None = None
        self._closed = False
        self._unwraps = 0
        self._conflicts = 0
        self._conn = VaultConnection(
            address, token=token, role_id=role_id, secret_id=secret_id,
            approle_mount=approle_mount, role=role, jwt_path=jwt_path, k8s_mount=k8s_mount,
            policy=RetryPolicy(timeout=timeout, retries=retries), verify=verify,
            namespace=namespace, client=client)
        self._store = _KeyStore(self._conn, kv_mount.strip("/"), kv_path.strip("/"))
        self._transit = _TransitKey(self._conn, mount.strip("/"), key_name)
        try:
            self._transit.ensure(create_key)
        except BaseException:
            self._conn.close()
            raise

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None,
                         **overrides: Any) -> "VaultKeyProvider":
        """A provider configured by the environment.

        Reads ``VAULT_ADDR`` (required); ``VAULT_TOKEN``, or ``VAULT_ROLE_ID`` +
        ``VAULT_SECRET_ID``, or ``VAULT_K8S_ROLE`` (+ ``VAULT_K8S_JWT_PATH``); and optionally
        ``VAULT_TRANSIT_KEY``, ``VAULT_TRANSIT_MOUNT``, ``VAULT_KV_MOUNT``, ``VAULT_KV_PATH``,
        ``VAULT_KEY_CACHE_TTL``, ``VAULT_TIMEOUT``, ``VAULT_RETRIES``, ``VAULT_CACERT``,
        ``VAULT_SKIP_VERIFY``, ``VAULT_NAMESPACE``. Keyword arguments override them.

        Raises:
            VaultConfigurationError: ``VAULT_ADDR`` or credentials missing, or a bad number.
            (and whatever the constructor raises)
        """
        env = os.environ if env is None else env
        kw: dict[str, Any] = {}
        for var, arg in (("VAULT_TRANSIT_KEY", "key_name"), ("VAULT_TRANSIT_MOUNT", "mount"),
                         ("VAULT_KV_MOUNT", "kv_mount"), ("VAULT_KV_PATH", "kv_path"),
                         ("VAULT_NAMESPACE", "namespace"), ("VAULT_K8S_JWT_PATH", "jwt_path")):
            if env.get(var):
                kw[arg] = env[var]
        for var, arg, conv in (("VAULT_KEY_CACHE_TTL", "cache_ttl", float),
                               ("VAULT_TIMEOUT", "timeout", float),
                               ("VAULT_RETRIES", "retries", int)):
            if env.get(var):
                try:
                    kw[arg] = conv(env[var])
                except ValueError:
                    raise VaultConfigurationError(f"{var} must be a number") from None
        if env.get("VAULT_CACERT"):
            kw["verify"] = env["VAULT_CACERT"]
        if env.get("VAULT_SKIP_VERIFY", "").strip().lower() in ("1", "true", "yes"):
            kw["verify"] = False
        if env.get("VAULT_TOKEN"):
            kw["token"] = env["VAULT_TOKEN"]
        elif env.get("VAULT_ROLE_ID") or env.get("VAULT_SECRET_ID"):
            kw["role_id"], kw["secret_id"] = env.get("VAULT_ROLE_ID"), env.get("VAULT_SECRET_ID")
        elif env.get("VAULT_K8S_ROLE"):
            kw["role"] = env["VAULT_K8S_ROLE"]
        kw.update(overrides)
        address = kw.pop("address", None) or env.get("VAULT_ADDR")
        if not address:
            raise VaultConfigurationError("VAULT_ADDR is not set; set it to Vault's URL")
        if not any(kw.get(k) for k in ("token", "role_id", "secret_id", "role", "client")):
            raise VaultConfigurationError(
                "no Vault credentials: set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID "
                "(AppRole), or VAULT_K8S_ROLE (Kubernetes auth)"
            )
        return cls(address, **kw)

    def __repr__(self) -> str:
        return (f"<VaultKeyProvider address={self._conn.address!r} "
                f"transit={self._transit.mount}/{self._transit.name} "
                f"kv={self._store.mount}/{self._store.path}{' closed' if self._closed else ''}>")

    def __reduce__(self):
        raise TypeError("key providers hold key material and cannot be pickled")

    def __enter__(self) -> "VaultKeyProvider":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def address(self) -> str:
        """Vault's URL."""
        return self._conn.address

    @property
    def connection(self) -> VaultConnection:
        """The authenticated connection (shared with :class:`engine.secrets.VaultSecrets`)."""
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
            state, created = _parse_entry(version, entry)
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
            try:
                expected = base64.b64decode(entry.get("kcv") or "", validate=True)
            except (binascii.Error, TypeError, ValueError):
                expected = b""
            if not hmac.compare_digest(_kcv(key, version), expected):
                raise WrappedKeyInvalid(f"the wrapped key of version {version} fails its key "
                                        f"check value (tampered or moved from another version)")
            self._unwraps += 1
            return AesGcm(key)
        finally:
            _wipe(key)

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
                version, _ = self._store.pointer()
            if version is None:
                raise VaultError("the current-version pointer is missing after bootstrap")
            self._current = (version, time.monotonic() + self._ttl)
            return version

    def refresh(self) -> None:
        """Forgets the cached current version, so the next call reads Vault (keys stay cached
        until their TTL)."""
        with self._lock:
            self._current = None

    def stats(self) -> dict[str, int]:
        """Counters for tests and monitoring: unwraps done, versions cached now, and version
        creations that lost a check-and-set race and retried."""
        return {"unwraps": self._unwraps, "cached_versions": len(self._entries),
                "cas_conflicts": self._conflicts}

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
        Vault; no key is unwrapped)."""
        self._check_open()
        infos = []
        for v in self._store.versions():
            found = self._store.entry(v)
            if found is not None:
                infos.append(KeyVersionInfo(v, *_parse_entry(v, found[0])))
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
        existing = self._store.versions()
        if existing:  # a creator died before writing the pointer: adopt the newest
            self._store.set_pointer(existing[-1], only_up=True)
        else:
            self._create(only=1)

    def _create(self, only: int | None) -> KeyVersionInfo:
        """Creates a version (``only``: exactly that one, or nothing if it exists)."""
        key, wrapped = self._transit.new_data_key()
        try:
            for _ in range(CAS_ATTEMPTS):
                version = only or (max(self._store.versions(), default=0) + 1)
                now = datetime.now(timezone.utc)
                entry = {
                    "format": ENTRY_FORMAT, "version": version, "wrapped_key": wrapped,
                    "transit_key": self._transit.name, "transit_mount": self._transit.mount,
                    "state": KeyState.ACTIVE.value, "created_at": now.isoformat(),
                    "kcv": base64.b64encode(_kcv(key, version)).decode("ascii"),
                }
                if self._store.create_entry(version, entry):
                    break
                self._conflicts += 1
                if only is not None:  # another process made it; its pointer may lag
                    self._store.set_pointer(only, only_up=True)
                    return KeyVersionInfo(only, KeyState.ACTIVE, now)
            else:
                raise VaultConflict(f"could not create a key version in "
                                    f"{self._store.shown(self._store.path)!r}: "
                                    f"{CAS_ATTEMPTS} check-and-set conflicts")
            cipher = AesGcm(key)
        finally:
            _wipe(key)
        current = self._store.set_pointer(version, only_up=True)
        self._retire_below(version)
        state = KeyState.ACTIVE if current == version else KeyState.DECRYPT_ONLY
        self._remember(version, _Cached(cipher, state, now, time.monotonic() + self._ttl))
        self._current = (current, time.monotonic() + self._ttl)
        return KeyVersionInfo(version, KeyState.ACTIVE, now)

    def _retire_below(self, version: int) -> None:
        def retire(entry: dict[str, Any]) -> dict | None:
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

        def change(entry: dict[str, Any]) -> dict | None:
            if entry.get("state") == new_state.value:
                return None
            entry["state"] = new_state.value
            return entry

        with self._lock:
            entry = self._store.update_entry(version, change)
            _, created = _parse_entry(version, entry)
            cached = self._entries.get(version)
            if cached is not None:
                cached.state = new_state
            return KeyVersionInfo(version, new_state, created)

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
            state, _ = _parse_entry(version, found[0])
            if state is not KeyState.ACTIVE:
                raise KeyVersionNotUsable(f"key version {version} is {state.value}")
            self._store.set_pointer(version, only_up=False)
            self._current = (version, time.monotonic() + self._ttl)

    # ---- key-encryption-key rotation ----

    def rotate_wrapping_key(self, *, set_min_decryption_version: bool = False) -> RewrapReport:
        """Rotates the Transit key and rewraps every stored data key with its newest version.

        Rewrapping happens inside Vault (Transit ``rewrap``): the data keys never leave it, stay
        the same, and no data is re-encrypted. Safe to re-run after a failure.

        Args:
            set_min_decryption_version: afterwards, refuse Transit decryption with older key
                versions (only once every entry has been rewrapped).

        Returns:
            A :class:`RewrapReport`.

        Raises:
            VaultPermissionDenied: the token may not rotate, rewrap or configure the key.
            WrappedKeyInvalid: a stored wrapped key is rejected by Transit (the versions
                rewrapped before it stay rewrapped; re-run after fixing it).
        """
        self._check_open()
        with self._lock:
            self._transit.rotate()
            latest = int(self._transit.info().get("latest_version") or 1)
            prefix = f"vault:v{latest}:"
            rewrapped = []
            for v in self._store.versions():
                done: list[int] = []

                def rewrap(entry: dict[str, Any], v: int = v) -> dict | None:
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
            min_dec = int(self._transit.info().get("min_decryption_version") or 1)
            if set_min_decryption_version and min_dec < latest:
                self._transit.set_min_decryption_version(latest)
                min_dec = latest
            return RewrapReport(latest, tuple(rewrapped), min_dec)

    # ---- usage, the rotation lock, the audit key, purge ----

    def record_usage(self, version: int, count: int, *, limit: int | None = None) -> int:
        """Adds ``count`` encryptions to a version's usage, stored in its KV entry
        (check-and-set, so every process adds to one count); a negative count gives back
        reserved encryptions. Returns the new total.

        Raises:
            UnknownKeyVersion: no such version.
            KeyUsageExhausted: the total would pass ``limit``.
        """
        self._check_open()
        check_count(count)

        def change(entry: dict[str, Any]) -> dict | None:
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
        on any machines never rotate at once. A holder that died frees it after ``ttl`` seconds.

        Raises:
            KeyLockBusy: ``wait`` is False (or ``timeout`` passed) and another process holds it.
        """
        self._check_open()
        path, owner = f"{self._store.path}/rotation-lock", os.urandom(16).hex()
        deadline = time.monotonic() + timeout
        while True:
            found = self._store.read(path, "read the rotation lock")
            held, cas = (found[0], found[1]) if found else ({}, 0)
            if float(held.get("expires") or 0) < time.time() and self._store.write(
                    path, {"owner": owner, "expires": time.time() + ttl}, cas,
                    "take the rotation lock"):
                break
            if not wait or time.monotonic() > deadline:
                raise KeyLockBusy("another process holds the key rotation lock in Vault")
            time.sleep(0.2)
        try:
            yield
        finally:
            found = self._store.read(path, "read the rotation lock")
            if found and found[0].get("owner") == owner:
                self._store.write(path, {"owner": None, "expires": 0}, found[1],
                                  "release the rotation lock")

    def audit_key(self) -> bytes:
        """The HMAC key of the audit trail: 32 random bytes kept in KV (``<kv_path>/audit``),
        created once with check-and-set."""
        self._check_open()
        path = f"{self._store.path}/audit"
        for _ in range(CAS_ATTEMPTS):
            found = self._store.read(path, "read the audit key")
            if found is not None:
                try:
                    key = base64.b64decode(found[0]["key"], validate=True)
                except (KeyError, TypeError, binascii.Error):
                    raise WrappedKeyInvalid("the audit key entry in Vault is malformed") from None
                if len(key) != 32:
                    raise WrappedKeyInvalid("the audit key entry in Vault is malformed")
                return key
            fresh = base64.b64encode(os.urandom(32)).decode()
            self._store.write(path, {"key": fresh}, 0, "create the audit key")
        raise VaultConflict("could not create the audit key: too many conflicts")

    def purge(self, version: int) -> None:
        """Deletes a version's entry and every KV version of it: data sealed under it can no
        longer be decrypted. Refuses the current version.

        Raises:
            UnknownKeyVersion: no such version.
            KeyVersionNotUsable: it is the current version.
        """
        self._check_open()
        if self._store.entry(version) is None:
            raise UnknownKeyVersion(version)
        if version == self._current_version():
            raise KeyVersionNotUsable(f"key version {version} is current; it cannot be purged")
        kv = self._conn.client.secrets.kv.v2
        path = self._store.entry_path(version)
        self._conn.call(f"purge key version {version}", self._store.shown(path),
                        kv.delete_metadata_and_all_versions, path=path,
                        mount_point=self._store.mount)
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


def _parse_entry(version: int, entry: dict[str, Any]) -> tuple[KeyState, datetime]:
    try:
        state = KeyState(entry.get("state"))
        created = datetime.fromisoformat(str(entry.get("created_at")))
    except (ValueError, TypeError):
        raise WrappedKeyInvalid(
            f"key version {version}'s entry in Vault has an invalid state or timestamp"
        ) from None
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return state, created
