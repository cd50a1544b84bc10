"""The HTTP connection to Vault or OpenBao: one hvac client with authentication, TLS, timeouts,
bounded retries and the mapping of every failure to :mod:`engine.vault.errors`.

Authentication is a token, an AppRole login, a Kubernetes service-account login or a TLS client
certificate (the ``cert`` auth method); a login is repeated once when Vault answers 403 (an
expired login token). Only transport failures and
429/5xx answers are retried, with exponential backoff. Whatever fails (an HTTP status, a refused
or reset connection, a TLS handshake, an answer that is not Vault's JSON) leaves as an exception
of :mod:`engine.vault.errors` with no exception context attached, and the address it names has
its credentials removed (:func:`redact_url`).
"""

from __future__ import annotations

import random
import re
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar

try:
    import hvac
    import hvac.exceptions as hvac_errors
    import requests
    import urllib3.exceptions
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "engine.vault needs hvac: pip install 'engine[vault]' (or pip install hvac)"
    ) from _exc

from ..locks import fork_safe_lock
from ..settings import env_flag
from .errors import (
    VaultAuthError,
    VaultConfigurationError,
    VaultError,
    VaultPathNotFound,
    VaultPermissionDenied,
    VaultRequestRejected,
    VaultTLSError,
    VaultUnavailable,
)
from .failures import TLS_PROBLEMS, exception_chain, tls_problem, vault_reason

__all__ = ["DEFAULT_JWT_PATH", "RetryPolicy", "VaultConnection", "environment_number",
           "environment_settings", "redact_url"]

T = TypeVar("T")

DEFAULT_JWT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
_TOKEN = re.compile(r"[\x21-\x7e]+")  # what an HTTP header carries unchanged


def redact_url(url: str) -> str:
    """``url`` as it may be shown: user name and password replaced by ``***``, the query
    replaced by ``***``, and no fragment.

    >>> redact_url("https://user:pw@vault:8200/x?token=s.abc")
    'https://***@vault:8200/x?***'
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = "***" if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _check_address(address: Any) -> str:
    """The address without a trailing ``/``; refuses what hvac cannot use as a base URL. The
    message never repeats the address: it may hold a password."""
    try:
        parts = urllib.parse.urlsplit(address) if isinstance(address, str) else None
        usable = parts is not None and parts.scheme in ("http", "https") and \
            bool(parts.hostname) and (parts.port is None or parts.port > 0) and \
            not parts.query and not parts.fragment and not re.search(r"\s", address)
    except ValueError:  # a port that is not a number
        usable = False
    if not usable:
        raise VaultConfigurationError(
            "Vault address must be an http(s) URL such as https://vault.example.com:8200, "
            "with an optional path and no query (argument address= or $VAULT_ADDR)")
    return address.rstrip("/")


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
# Requests that requests/urllib3 could not even build: retrying cannot help.
_UNUSABLE_REQUEST = (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                     requests.exceptions.MissingSchema, requests.exceptions.InvalidHeader,
                     requests.exceptions.InvalidJSONError, urllib3.exceptions.LocationValueError)


class VaultConnection:
    """An authenticated hvac client with timeouts, retries and exception mapping.

    Shared by :class:`~engine.vault.VaultKeyProvider` and :class:`~engine.vault.VaultSecrets`.
    Logging in (AppRole, Kubernetes, TLS certificate) happens here, and again once when Vault
    answers 403 (expired login).

    Args:
        address: Vault's URL, e.g. ``https://vault.example.com:8200`` (a path is allowed, a query
            is not).
        token: a Vault token; or
        role_id, secret_id: AppRole credentials (``approle_mount``, default ``approle``); or
        role, jwt_path: Kubernetes auth (service-account JWT file; ``k8s_mount``); or
        client_cert alone: log in with the TLS client certificate (``cert_mount``, default
            ``cert``; ``cert_role`` names the certificate role, else Vault tries them all).
        policy: timeout and retries.
        verify: TLS verification: True (the system's CAs), False, or the path of a PEM file of
            CA certificates (``VAULT_CACERT``).
        client_cert, client_key: a client certificate and its unencrypted key, PEM files
            (``VAULT_CLIENT_CERT``, ``VAULT_CLIENT_KEY``; the key may be inside the certificate
            file): sent to listeners that ask for one, with any auth method.
        namespace: a Vault Enterprise namespace, if any.
        client: an existing ``hvac.Client`` to use instead of building one.

    Raises:
        VaultConfigurationError: a bad address, token, CA bundle or client certificate; not
            exactly one way to authenticate; or an address where no Vault server answers the
            token lookup.
        VaultTLSError: the TLS connection failed (the message says why).
        VaultUnavailable: Vault did not answer.
        VaultAuthError: the token is invalid or the login failed.
    """

    __slots__ = ("address", "policy", "_client", "_login", "_logged_in", "_lock", "_method",
                 "_owned")

    def __init__(self, address: str, *, token: str | None = None, role_id: str | None = None,
                 secret_id: str | None = None, approle_mount: str = "approle",
                 role: str | None = None, jwt_path: str = DEFAULT_JWT_PATH,
                 k8s_mount: str = "kubernetes", policy: RetryPolicy | None = None,
                 verify: bool | str = True, client_cert: str | None = None,
                 client_key: str | None = None, cert_role: str | None = None,
                 cert_mount: str = "cert", namespace: str | None = None,
                 client: "hvac.Client | None" = None) -> None:
        if client is not None:
            address = address or client.url
        real_address = _check_address(address)
        self.address = redact_url(real_address)
        self.policy = policy or RetryPolicy()
        self._lock = fork_safe_lock()
        methods = [m for m, given in (("token", token), ("approle", role_id or secret_id),
                                      ("kubernetes", role)) if given]
        if client is not None and not methods:
            methods = ["client"]
        elif client_cert and not methods:
            methods = ["cert"]
        if len(methods) != 1:
            raise VaultConfigurationError(
                "give exactly one way to authenticate to Vault: token, role_id + secret_id "
                "(AppRole), role (Kubernetes), or client_cert alone (TLS certificate); got "
                f"{', '.join(methods) or 'none'}"
            )
        if cert_role is not None and methods != ["cert"]:
            raise VaultConfigurationError("cert_role is for the TLS certificate login only")
        if methods == ["approle"] and not (role_id and secret_id):
            raise VaultConfigurationError("AppRole needs both role_id and secret_id")
        if token is not None and not (isinstance(token, str) and _TOKEN.fullmatch(token)):
            raise VaultConfigurationError(
                "the Vault token must be printable ASCII without spaces or line breaks")
        self._method = methods[0]
        self._owned = client is None
        if client is None:
            # hvac takes TLS settings from a session it is given, not from its own arguments
            # (verify= was silently ignored): they are set on the session.
            session = requests.Session()
            session.verify = _check_verify(verify)
            session.cert = _check_client_cert(client_cert, client_key)
            client = hvac.Client(url=real_address, token=token, timeout=self.policy.timeout,
                                 verify=session.verify, cert=session.cert, namespace=namespace,
                                 session=session)
        elif token:
            client.token = token
        self._client = client
        self._login: Callable[[], None] | None = None
        self._logged_in = False
        # Each login returns Vault's answer; login() takes the token from it (use_token=False:
        # hvac's own extraction fails with TypeError on an answer that is not Vault's JSON).
        if methods == ["approle"]:
            self._login = lambda: self._client.auth.approle.login(
                role_id=role_id, secret_id=secret_id, mount_point=approle_mount, use_token=False)
        elif methods == ["kubernetes"]:
            self._login = lambda: self._client.auth.kubernetes.login(
                role=role, jwt=_read_jwt(jwt_path), mount_point=k8s_mount, use_token=False)
        elif methods == ["cert"]:
            # hvac's auth.cert.login refuses verify=False and wants the files again; the
            # session already presents the certificate, so the login is a plain POST.
            body = {"name": cert_role} if cert_role else {}
            self._login = lambda: self._client.adapter.post(
                f"/v1/auth/{cert_mount.strip('/')}/login", json=body)
        try:
            if self._login is not None:
                self.login()
            else:
                self._look_up_token()
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

    def _look_up_token(self) -> None:
        """Checks the token, and that a Vault server answers at the address at all."""
        try:
            self.call_data("look up the token", "auth/token/lookup-self",
                           self._client.auth.token.lookup_self, forbidden=self._bad_token)
            return
        except (VaultAuthError, VaultPermissionDenied, VaultUnavailable, VaultTLSError,
                VaultConfigurationError):
            raise
        except VaultError as exc:  # 404, 400, another status, or an answer that is not JSON
            problem = str(exc)
        raise VaultConfigurationError(
            f"{problem}; is {self.address} the base URL of a Vault or OpenBao server (and the "
            f"namespace, if any, right)?")

    def login(self) -> None:
        """Logs in with the configured auth method (AppRole, Kubernetes, TLS certificate).

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
                answer = self.call(f"log in with {self._method}", "auth/", self._login,
                                   forbidden=failed, relogin=False)
            except (VaultRequestRejected, VaultPathNotFound, VaultPermissionDenied):
                answer = None
            auth = answer.get("auth") if isinstance(answer, dict) else None
            token = auth.get("client_token") if isinstance(auth, dict) else None
            if isinstance(token, str) and _TOKEN.fullmatch(token):
                self._client.token = token
                self._logged_in = True
                return
        raise failed()

    def call(self, what: str, path: str, fn: Callable[..., T], /, *args: Any,
             forbidden: Callable[[], VaultError] | None = None, relogin: bool = True,
             retries: int | None = None, **kwargs: Any) -> T:
        """Calls ``fn(*args, **kwargs)`` (an hvac method) with retries and error mapping.

        Args:
            what: the operation, for messages ("read the current version").
            path: the Vault path, for messages.
            forbidden: builds the exception for a 403 (default: probe the token, then
                :class:`VaultAuthError` or :class:`VaultPermissionDenied`).
            relogin: on a 403, log in again once first (AppRole, Kubernetes, certificate).
            retries: overrides the policy's retry count.

        Raises:
            VaultUnavailable, VaultTLSError, VaultAuthError, VaultPermissionDenied,
            VaultPathNotFound (HTTP 404), VaultRequestRejected (HTTP 400), VaultError (any
            other answer).
        """
        policy = self.policy
        attempts = 1 + (policy.retries if retries is None else retries)
        start = time.monotonic()
        cause = ""
        for attempt in range(attempts):
            try:
                return fn(*args, **kwargs)
            except hvac_errors.Forbidden:
                outcome: VaultError | str | None = None
            except (hvac_errors.VaultError, requests.exceptions.RequestException,
                    urllib3.exceptions.HTTPError, OSError, ValueError, RecursionError) as exc:
                outcome = self._map(exc, what, path)
            # Raised here, after the except clauses, so that no exception context (hvac's
            # response, requests' request with its headers) travels with the engine's error.
            if outcome is None:
                if relogin and self._login is not None:
                    relogin = False
                    self.login()
                    continue
                raise forbidden() if forbidden else self._denied(what, path)
            if isinstance(outcome, VaultError):
                raise outcome
            cause = outcome
            if attempt + 1 < attempts:
                time.sleep(policy.delay(attempt))
        raise VaultUnavailable(
            f"Vault at {self.address} is unavailable ({cause}); could not {what} after "
            f"{attempts} attempt(s) in {time.monotonic() - start:.1f} s"
        )

    def call_data(self, what: str, path: str, fn: Callable[..., Any], /, *args: Any,
                  **kwargs: Any) -> dict[str, Any]:
        """:meth:`call`, then the ``data`` object of Vault's JSON answer ({} when it has none).

        Raises:
            VaultError: the answer is not Vault's JSON (the address leads to another server);
            and what :meth:`call` raises.
        """
        answer = self.call(what, path, fn, *args, **kwargs)
        data = answer.get("data") if isinstance(answer, dict) else None
        if isinstance(data, dict) or (isinstance(answer, dict) and data is None):
            return data or {}
        raise self._not_json(what, path)

    def _not_json(self, what: str, path: str) -> VaultError:
        return VaultError(f"Vault at {self.address} answered the request to {what} on {path!r} "
                          f"with something other than Vault's JSON")

    def _map(self, exc: BaseException, what: str, path: str) -> VaultError | str:
        """The engine's exception for a failed call, or the cause of a retryable failure."""
        where = f"Vault at {self.address}"
        if isinstance(exc, tuple(_TRANSIENT_STATUS)):
            return f"HTTP {_TRANSIENT_STATUS[type(exc)]}: {vault_reason(exc)}"
        if isinstance(exc, hvac_errors.Unauthorized):
            return self._bad_token()
        if isinstance(exc, hvac_errors.InvalidPath):
            reason = vault_reason(exc)
            return VaultPathNotFound(f"{where} answered HTTP 404 to {what} on {path!r}"
                                     f"{': ' + reason if reason else ''}")
        if isinstance(exc, hvac_errors.InvalidRequest):
            reason = vault_reason(exc)
            return VaultRequestRejected(f"{where} refused to {what} on {path!r}: "
                                        f"{reason or 'HTTP 400'}", reason)
        if isinstance(exc, hvac_errors.VaultError):  # another status, or hvac's own checks
            return VaultError(f"{where} failed to {what} on {path!r}: "
                              f"{vault_reason(exc) or type(exc).__name__}")
        tls = tls_problem(exc)
        if tls is not None:
            problem, detail = tls
            if problem == "handshake" and detail.startswith("the server closed") and \
                    self._client.adapter.session.cert:
                # What a server that requires client certificates does with one it does not
                # trust (OpenBao closes the connection without an alert).
                problem = "client-certificate"
            return VaultTLSError(f"TLS connection to {where} refused: "
                                 f"{TLS_PROBLEMS[problem]} (OpenSSL: {detail})", problem)
        if isinstance(exc, requests.exceptions.Timeout):
            return f"timed out after {self.policy.timeout:g} s"
        if isinstance(exc, _UNUSABLE_REQUEST):
            return VaultConfigurationError(f"the request to {what} could not be sent to {where} "
                                           f"({type(exc).__name__})")
        if isinstance(exc, (ValueError, RecursionError)):  # JSON that does not parse
            return self._not_json(what, path)
        chain = list(exception_chain(exc))
        if any(isinstance(e, ConnectionRefusedError) for e in chain):
            return "connection refused"
        if any(isinstance(e, ConnectionResetError) for e in chain):
            return "connection reset"
        if isinstance(exc, OSError) and not isinstance(exc, requests.exceptions.RequestException):
            return f"connection failed: {exc.strerror or type(exc).__name__}"
        return "connection failed"

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


def _load_problem(load: Callable[[], object], invalid: str) -> str:
    """"" when ``load()`` reads its TLS files, else why not (never their content)."""
    try:
        load()
        return ""
    except FileNotFoundError:
        return "does not exist"
    except (ssl.SSLError, OSError, ValueError):
        return invalid


def _check_verify(verify: Any) -> bool | str:
    """``verify`` as requests takes it, once the CA bundle is known to load."""
    if isinstance(verify, bool):
        return verify
    if not isinstance(verify, str) or not verify:
        raise VaultConfigurationError("verify must be True, False or the path of a CA bundle")
    problem = _load_problem(lambda: ssl.create_default_context().load_verify_locations(verify),
                            "holds no PEM certificate that loads")
    if problem:
        raise VaultConfigurationError(f"the CA bundle {verify!r} (VAULT_CACERT or verify=) "
                                      f"{problem}")
    return verify


def environment_number(env: Mapping[str, str], var: str, conv: Callable[[str], T]) -> T | None:
    """``conv(env[var])``, or None when the variable is unset or empty.

    Raises:
        VaultConfigurationError: the value is not a number.
    """
    text = env.get(var)
    if not text:
        return None
    try:
        number = conv(text)
    except ValueError:
        number = None
    if number is None:
        raise VaultConfigurationError(f"{var} must be a number")
    return number


def environment_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The connection's keyword arguments given by ``VAULT_*`` variables (unset ones are left
    out).

    ``VAULT_ADDR`` (address); ``VAULT_TOKEN``, or ``VAULT_ROLE_ID`` + ``VAULT_SECRET_ID``, or
    ``VAULT_K8S_ROLE`` (+ ``VAULT_K8S_JWT_PATH``), or else ``VAULT_CLIENT_CERT`` (+
    ``VAULT_CERT_ROLE``) logs in with the certificate; ``VAULT_CACERT`` or
    ``VAULT_SKIP_VERIFY`` (verify); ``VAULT_CLIENT_CERT``, ``VAULT_CLIENT_KEY``;
    ``VAULT_NAMESPACE``; ``VAULT_TIMEOUT``, ``VAULT_RETRIES`` (timeout, retries).

    Raises:
        VaultConfigurationError: ``VAULT_TIMEOUT`` or ``VAULT_RETRIES`` is not a number.
    """
    kw: dict[str, Any] = {}
    for var, arg in (("VAULT_ADDR", "address"), ("VAULT_NAMESPACE", "namespace"),
                     ("VAULT_K8S_JWT_PATH", "jwt_path"), ("VAULT_CACERT", "verify"),
                     ("VAULT_CLIENT_CERT", "client_cert"), ("VAULT_CLIENT_KEY", "client_key")):
        if env.get(var):
            kw[arg] = env[var]
    for var, arg, conv in (("VAULT_TIMEOUT", "timeout", float), ("VAULT_RETRIES", "retries", int)):
        number = environment_number(env, var, conv)
        if number is not None:
            kw[arg] = number
    if env_flag(env, "VAULT_SKIP_VERIFY", False, error=VaultConfigurationError):
        kw["verify"] = False
    if env.get("VAULT_TOKEN"):
        kw["token"] = env["VAULT_TOKEN"]
    elif env.get("VAULT_ROLE_ID") or env.get("VAULT_SECRET_ID"):
        kw["role_id"], kw["secret_id"] = env.get("VAULT_ROLE_ID"), env.get("VAULT_SECRET_ID")
    elif env.get("VAULT_K8S_ROLE"):
        kw["role"] = env["VAULT_K8S_ROLE"]
    elif env.get("VAULT_CLIENT_CERT") and env.get("VAULT_CERT_ROLE"):
        kw["cert_role"] = env["VAULT_CERT_ROLE"]
    return kw


def _no_password() -> bytes:
    """For an encrypted key: fail instead of OpenSSL's interactive prompt."""
    return b""


def _check_client_cert(cert: Any, key: Any) -> str | tuple[str, str] | None:
    """The ``cert`` setting of requests, once the certificate and key are known to load."""
    if cert is None:
        if key is not None:
            raise VaultConfigurationError("client_key needs client_cert")
        return None
    if not isinstance(cert, str) or not cert or not (key is None or isinstance(key, str) and key):
        raise VaultConfigurationError("client_cert and client_key must be paths of PEM files")
    problem = _load_problem(
        lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, _no_password),
        "is not a PEM certificate with its unencrypted private key")
    if problem:
        files = repr(cert) if key is None else f"{cert!r} + {key!r}"
        raise VaultConfigurationError(f"the client certificate {files} (VAULT_CLIENT_CERT, "
                                      f"VAULT_CLIENT_KEY) {problem}")
    return cert if key is None else (cert, key)


def _read_jwt(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            jwt = f.read().strip()
        problem = "" if jwt else "is empty"
    except (OSError, UnicodeDecodeError) as exc:
        problem = f"cannot be read: {getattr(exc, 'strerror', None) or type(exc).__name__}"
    if problem:
        raise VaultAuthError(f"the Kubernetes service-account token at {path!r} {problem}")
    return jwt
