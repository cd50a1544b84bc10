"""The HTTP connection to Vault or OpenBao: one hvac client with authentication, timeouts,
bounded retries and the mapping of every failure to :mod:`engine.vault.errors`.

Authentication is a token, an AppRole login or a Kubernetes service-account login; a login is
repeated once when Vault answers 403 (an expired login token). Only transport failures and
429/5xx answers are retried, with exponential backoff.
"""

from __future__ import annotations

import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

try:
    import hvac
    import hvac.exceptions as hvac_errors
    import requests
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "engine.vault needs hvac: pip install 'engine[vault]' (or pip install hvac)"
    ) from _exc

from .errors import (
    VaultAuthError,
    VaultConfigurationError,
    VaultError,
    VaultPathNotFound,
    VaultPermissionDenied,
    VaultRequestRejected,
    VaultUnavailable,
)

__all__ = ["DEFAULT_JWT_PATH", "RetryPolicy", "VaultConnection"]

T = TypeVar("T")

DEFAULT_JWT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def _reason(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    text = str(errors[0]) if isinstance(errors, (list, tuple)) and errors else ""
    text = " ".join(text.replace("*", " ").split())
    # Batch answers carry whole response bodies; keep only a short, single-item reason.
    return text[:160] if not text.startswith("{") else "request rejected"



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

    Shared by :class:`~engine.vault.VaultKeyProvider` and :class:`~engine.vault.VaultSecrets`.
    Logging in with AppRole or Kubernetes happens here, and again once when Vault answers 403
    (expired login).

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
            except (VaultRequestRejected, VaultPathNotFound, VaultPermissionDenied):
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
            VaultUnavailable, VaultAuthError, VaultPermissionDenied, VaultPathNotFound (HTTP
            404), VaultRequestRejected (HTTP 400), VaultError (any other answer).
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
                raise VaultPathNotFound(f"Vault at {self.address} has nothing at {path!r} "
                                        f"(HTTP 404) to {what}") from None
            except hvac_errors.InvalidRequest as exc:
                reason = _reason(exc)
                raise VaultRequestRejected(f"Vault at {self.address} refused to {what} on "
                                           f"{path!r}: {reason or 'HTTP 400'}", reason) from None
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
