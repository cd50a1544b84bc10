"""The HTTP connection to Vault or OpenBao: one hvac client with authentication, TLS, timeouts,
bounded retries, the nodes of an HA cluster, and the mapping of every failure to
:mod:`engine.vault.errors`.

Authentication is a token, an AppRole login, a Kubernetes service-account login or a TLS client
certificate (the ``cert`` auth method); a login is repeated once when Vault answers 403 (an
expired login token). Whatever fails (an HTTP status, a refused or reset connection, a TLS
handshake, an answer that is not Vault's JSON) leaves as an exception of
:mod:`engine.vault.errors` with no exception context attached, and the address it names has its
credentials removed (:func:`redact_url`).

Retries (``docs/vault-ha.md`` says why each case is handled as it is): transport failures and
429/5xx answers are retried with exponential backoff, ``retries`` times or until a deadline, on
the next node when there are several. A request that changes state is sent with
``X-Vault-No-Request-Forwarding`` (a standby then answers with the active node's address,
having done nothing) and is never sent twice once it may have been received: such a failure
raises :class:`~engine.vault.VaultOutcomeUnknown` at once, and its caller reads the state back
(:mod:`engine.vault.kv`, :mod:`engine.vault.transit`).
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, NoReturn, Sequence, TypeVar

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
from .errors import (
    VaultAuthError,
    VaultConfigurationError,
    VaultError,
    VaultOutcomeUnknown,
    VaultPathNotFound,
    VaultPermissionDenied,
    VaultRequestRejected,
    VaultTLSError,
    VaultUnavailable,
)
from .failures import TLS_PROBLEMS, exception_chain, redact_url, tls_problem, vault_reason
from .nodes import NodeRedirect, NodeRouter, RouterStatus, RoutingAdapter
from .options import (
    check_addresses,
    check_client_cert,
    check_verify,
    environment_settings,
    read_jwt,
)

__all__ = ["DEFAULT_DEADLINE", "DEFAULT_JWT_PATH", "RetryPolicy", "VaultConnection",
           "environment_settings", "redact_url"]

T = TypeVar("T")

DEFAULT_JWT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
_TOKEN = re.compile(r"[\x21-\x7e]+")  # what an HTTP header carries unchanged


DEFAULT_DEADLINE = 15.0  # seconds a call keeps trying when several nodes are configured
HA_MAX_BACKOFF = 0.5  # the longest pause while polling for a new active node


@dataclass(frozen=True)
class RetryPolicy:
    """Timeout per HTTP call and bounded retries with exponential backoff.

    Only transport failures (refused, reset, timed out) and 429/5xx answers are retried, so one
    call takes at most about ``(retries + 1) * timeout + sum of backoffs`` seconds; with several
    nodes, one attempt tries each node once before the pause.

    Attributes:
        deadline: when set, failures are retried until this many seconds have passed since the
            call began (a leader election takes a few), whatever ``retries`` says; no attempt
            starts after it and no pause runs past it.
    """

    timeout: float = 5.0
    retries: int = 3
    backoff: float = 0.1
    max_backoff: float = 2.0
    deadline: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.timeout, (int, float)) or not self.timeout > 0:
            raise VaultConfigurationError("timeout must be a positive number of seconds")
        if type(self.retries) is not int or self.retries < 0:
            raise VaultConfigurationError("retries must be a non-negative integer")
        if not self.backoff >= 0 or not self.max_backoff >= 0:
            raise VaultConfigurationError("backoff times must be non-negative")
        if self.deadline is not None and (isinstance(self.deadline, bool) or not isinstance(
                self.deadline, (int, float)) or not 0 < self.deadline < float("inf")):
            raise VaultConfigurationError("deadline must be a positive number of seconds")

    def delay(self, attempt: int) -> float:
        """The pause after failed attempt ``attempt`` (0-based), with jitter in [50%, 100%]."""
        return min(self.max_backoff, self.backoff * (2 ** attempt)) * (0.5 + random.random() / 2)


_TRANSIENT_STATUS = {hvac_errors.RateLimitExceeded: 429, hvac_errors.InternalServerError: 500,
                     hvac_errors.VaultNotInitialized: 501, hvac_errors.BadGateway: 502,
                     hvac_errors.VaultDown: 503}
# Answers given before any handler ran (rate limited, not initialised), and Vault's reasons that
# say so for a 5xx: a sealed node, a standby that knows no active node (OpenBao's
# forwardRequest answers this before it looks at the request).
_REFUSED_STATUS = (hvac_errors.RateLimitExceeded, hvac_errors.VaultNotInitialized)
_NOTHING_DONE = ("vault is sealed", "active cluster node not found", "node is not active")
# KV v2 on a standby that has not yet seen its mount's upgrade (a mount created after the node
# unsealed): a 400 that only time, or the active node, cures.
_KV_UPGRADING = "waiting for the primary to upgrade"
MAX_REDIRECTS = 4  # hops per attempt: a standby names the active node; a loop is cut
CONFIRMED_FOR = 0.5  # seconds an active node's own word is trusted without asking again


@dataclass(frozen=True)
class _Transient:
    """A failure worth retrying. ``sent``: the request may have reached a handler that applies
    it (the connection broke or timed out after sending, or the node answered 5xx).
    ``node_failed``: False when the node itself answered properly (a redirect that cannot be
    followed yet): it is not set aside."""

    cause: str
    sent: bool
    node_failed: bool = True
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
            is not); or the nodes of an HA cluster, as a list or comma-separated (requests go to
            the active node, found and followed as leadership moves).
        token: a Vault token; or
        role_id, secret_id: AppRole credentials (``approle_mount``, default ``approle``); or
        role, jwt_path: Kubernetes auth (service-account JWT file; ``k8s_mount``); or
        client_cert alone: log in with the TLS client certificate (``cert_mount``, default
            ``cert``; ``cert_role`` names the certificate role, else Vault tries them all).
        policy: timeout, retries and deadline (default: 3 retries; with several nodes, a
            :data:`DEFAULT_DEADLINE` instead).
        verify: TLS verification: True (the system's CAs), False, or the path of a PEM file of
            CA certificates (``VAULT_CACERT``).
        client_cert, client_key: a client certificate and its unencrypted key, PEM files
            (``VAULT_CLIENT_CERT``, ``VAULT_CLIENT_KEY``; the key may be inside the certificate
            file): sent to listeners that ask for one, with any auth method.
        namespace: a Vault Enterprise namespace, if any.
        client: an existing ``hvac.Client`` to use instead of building one (its own address
            only: no node routing).

    Raises:
        VaultConfigurationError: a bad address, token, CA bundle or client certificate; not
            exactly one way to authenticate; or an address where no Vault server answers the
            token lookup.
        VaultTLSError: the TLS connection failed (the message says why).
        VaultUnavailable: Vault did not answer.
        VaultAuthError: the token is invalid or the login failed.
    """

    __slots__ = ("address", "policy", "_client", "_login", "_logged_in", "_lock", "_method",
                 "_owned", "_router")

    def __init__(self, address: str | Sequence[str], *, token: str | None = None,
                 role_id: str | None = None,
                 secret_id: str | None = None, approle_mount: str = "approle",
                 role: str | None = None, jwt_path: str = DEFAULT_JWT_PATH,
                 k8s_mount: str = "kubernetes", policy: RetryPolicy | None = None,
                 verify: bool | str = True, client_cert: str | None = None,
                 client_key: str | None = None, cert_role: str | None = None,
                 cert_mount: str = "cert", namespace: str | None = None,
                 client: "hvac.Client | None" = None) -> None:
        if client is not None:
            address = address or client.url
        addresses = check_addresses(address)
        if client is not None:
            addresses = addresses[:1]
        self._router = NodeRouter(addresses)
        self.address = ", ".join(redact_url(a) for a in addresses)
        self.policy = policy or (RetryPolicy(deadline=DEFAULT_DEADLINE, max_backoff=HA_MAX_BACKOFF)
                                 if len(addresses) > 1 else RetryPolicy())
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
            session.verify = check_verify(verify)
            session.cert = check_client_cert(client_cert, client_key)
            router = self._router
            client = hvac.Client(url=addresses[0], token=token, timeout=self.policy.timeout,
                                 verify=session.verify, cert=session.cert, namespace=namespace,
                                 session=session, allow_redirects=False,
                                 adapter=lambda **kw: RoutingAdapter(router=router, **kw))
        elif token:
            client.token = token
        self._router.prober = self._probe
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
                role=role, jwt=read_jwt(jwt_path), mount_point=k8s_mount, use_token=False)
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

    def __reduce__(self) -> NoReturn:
        raise TypeError("Vault connections hold credentials and cannot be pickled")

    @property
    def client(self) -> "hvac.Client":
        """The underlying hvac client (for operations this module does not wrap)."""
        return self._client

    @property
    def status(self) -> RouterStatus:
        """Whether Vault answered the last call, and how often the active node changed."""
        return self._router.status()

    @property
    def leader(self) -> str | None:
        """The address of the node taken for the active one (None: unknown at the moment)."""
        index = self._router.leader
        return None if index is None else self._router.shown(index)

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
             retries: int | None = None, idempotent: bool = True, consistent: bool = False,
             **kwargs: Any) -> T:
        """Calls ``fn(*args, **kwargs)`` (an hvac method) with retries and error mapping, on
        the node the router chooses (the active one when known).

        Args:
            what: the operation, for messages ("read the current version").
            path: the Vault path, for messages.
            forbidden: builds the exception for a 403 (default: probe the token, then
                :class:`VaultAuthError` or :class:`VaultPermissionDenied`).
            relogin: on a 403, log in again once first (AppRole, Kubernetes, certificate).
            retries: overrides the policy's retry count.
            idempotent: False for a request that changes state: it carries
                ``X-Vault-No-Request-Forwarding``, and a failure after it may have been
                received is raised at once as :class:`VaultOutcomeUnknown` instead of retried.
            consistent: send it to a node that has just said it is the active one (a read
                that must see every acknowledged write; standbys answer reads from a replica
                that may lag). With one configured address, the best that address offers.

        Raises:
            VaultUnavailable, VaultTLSError, VaultAuthError, VaultPermissionDenied,
            VaultPathNotFound (HTTP 404), VaultRequestRejected (HTTP 400), VaultError (any
            other answer); VaultOutcomeUnknown (``idempotent=False`` only).
        """
        policy = self.policy
        rounds = 1 + (policy.retries if retries is None else retries)
        start = time.monotonic()
        deadline = None if policy.deadline is None else start + policy.deadline
        router = self._router
        cause, attempt, tries, hops = "", 0, 0, 0
        tried: set[int] = set()
        while True:
            node = self._choose(tried, consistent, deadline, what)
            tried.add(node)
            tries += 1
            try:
                with router.pinned(node, no_forward=not idempotent):
                    result = fn(*args, **kwargs)
            except NodeRedirect as redirect:
                target = router.redirected(redirect.location)
                outcome: VaultError | _Transient | None = _Transient(
                    "redirected to an address that cannot be used", False, node_failed=False)
                if target is not None and router.is_down(target):
                    outcome = _Transient("a standby names an active node that does not answer "
                                         "(an election is under way)", False, node_failed=False)
                elif target is not None:
                    hops += 1
                    if hops <= MAX_REDIRECTS:
                        tried.discard(target)
                        continue
                    outcome = _Transient("redirected in a loop", False, node_failed=False)
            except hvac_errors.Forbidden:
                outcome = None
            except (hvac_errors.VaultError, requests.exceptions.RequestException,
                    urllib3.exceptions.HTTPError, OSError, ValueError, RecursionError) as exc:
                outcome = self._map(exc, what, path)
            else:
                router.answered(node)
                return result
            if (outcome is None or isinstance(outcome, (VaultPathNotFound, VaultRequestRejected))) \
                    and not consistent and node != router.leader:
                # A standby answers from a replica that may lag (and, during an election, misses
                # the last writes): its "not found", "check-and-set mismatch" or "denied" is
                # asked again of the active node before it is believed.
                router.answered(node)
                consistent = True
                continue
            # Raised here, after the except clauses, so that no exception context (hvac's
            # response, requests' request with its headers) travels with the engine's error.
            if outcome is None:
                router.answered(node)
                if relogin and self._login is not None:
                    relogin = False
                    self.login()
                    continue
                raise forbidden() if forbidden else self._denied(what, path)
            if isinstance(outcome, VaultError):
                raise outcome
            cause = outcome.cause
            if outcome.node_failed:
                router.unreachable(node)
            if outcome.sent and not idempotent:
                raise VaultOutcomeUnknown(
                    f"Vault at {router.shown(node)} failed after the request to {what} on "
                    f"{path!r} was sent ({cause}): it may or may not have been applied", what)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if len(tried) < len(router):
                continue  # the next node, at once
            attempt += 1
            tried.clear()
            if deadline is None and attempt >= rounds:
                break
            pause = policy.delay(attempt - 1)
            time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - now)))
        router.unavailable()
        raise VaultUnavailable(
            f"Vault at {self.address} is unavailable ({cause}); could not {what} after "
            f"{tries if len(router) > 1 else attempt} attempt(s) in "
            f"{time.monotonic() - start:.1f} s"
        )

    # ---- the active node ----

    def _choose(self, tried: set[int], consistent: bool, deadline: float | None,
                what: str) -> int:
        """The node for the next try (see :meth:`call`)."""
        router = self._router
        if consistent:
            return self._confirmed_active(deadline, what)
        if router.leader is None and (len(router) > 1 or not router.discovered_at):
            self._discover()
        return router.choose(tried)

    def _confirmed_active(self, deadline: float | None, what: str) -> int:
        """A node that has just answered ``sys/leader`` with ``is_self`` (within the last
        :data:`CONFIRMED_FOR` seconds, and not failed since); waits for an election to end,
        within the deadline (or the retries). With one configured address that no node
        confirms (a load balancer whose nodes' own addresses cannot be reached), that address."""
        router = self._router
        if router.leader is not None and time.monotonic() - router.confirmed_at < CONFIRMED_FOR:
            return router.leader
        if not router.several:
            index = self._discover(force=True)
            return index if index is not None else router.choose(set())
        policy = self.policy
        limit = deadline if deadline is not None else \
            time.monotonic() + sum(policy.delay(i) for i in range(policy.retries))
        attempt = 0
        while True:
            index = self._discover(force=True)
            if index is not None:
                return index
            now = time.monotonic()
            if now >= limit:
                router.unavailable()
                raise VaultUnavailable(f"no node of Vault at {self.address} says it is the "
                                       f"active one; could not {what}")
            time.sleep(max(0.0, min(policy.delay(attempt), limit - now)))
            attempt += 1

    def _discover(self, force: bool = False) -> int | None:
        """Leader discovery (:meth:`NodeRouter.discover`) through this connection's client."""
        timeout = min(self.policy.timeout, 2.0)

        def ask(index: int) -> Any:
            with self._router.pinned(index):
                return self._client.adapter.get("/v1/sys/leader", timeout=timeout)

        return self._router.discover(ask, force=force)

    def _probe(self) -> bool:
        """For the metrics: is there an active node this process can reach?"""
        if not self._router.several:
            try:
                with self._router.pinned(0):
                    self._client.adapter.get("/v1/sys/health",
                                             timeout=min(self.policy.timeout, 2.0))
                return True
            except hvac_errors.VaultError as exc:  # 429 standby, 472/473 DR/perf standby
                return isinstance(exc, (hvac_errors.RateLimitExceeded,)) or \
                    getattr(exc, "status_code", 500) < 500
            except Exception:
                return False
        return self._discover(force=True) is not None

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

    def _map(self, exc: BaseException, what: str, path: str) -> VaultError | _Transient:
        """The engine's exception for a failed call, or the cause of a retryable failure and
        whether the request may have been received."""
        where = f"Vault at {self.address}"
        if isinstance(exc, tuple(_TRANSIENT_STATUS)):
            reason = vault_reason(exc)
            refused = isinstance(exc, _REFUSED_STATUS) or \
                any(words in reason.lower() for words in _NOTHING_DONE)
            return _Transient(f"HTTP {_TRANSIENT_STATUS[type(exc)]}: {reason}", sent=not refused)
        if isinstance(exc, hvac_errors.Unauthorized):
            return self._bad_token()
        if isinstance(exc, hvac_errors.InvalidPath):
            reason = vault_reason(exc)
            return VaultPathNotFound(f"{where} answered HTTP 404 to {what} on {path!r}"
                                     f"{': ' + reason if reason else ''}")
        if isinstance(exc, hvac_errors.InvalidRequest):
            reason = vault_reason(exc)
            if _KV_UPGRADING in reason.lower():
                return _Transient(f"HTTP 400: {reason}", sent=False)
            return VaultRequestRejected(f"{where} refused to {what} on {path!r}: "
                                        f"{reason or 'HTTP 400'}", reason)
        if isinstance(exc, hvac_errors.VaultError):  # another status, or hvac's own checks
            return VaultError(f"{where} failed to {what} on {path!r}: "
                              f"{vault_reason(exc) or type(exc).__name__}")
        chain = list(exception_chain(exc))
        tls = tls_problem(exc)
        if tls is not None:
            problem, detail = tls
            if problem == "handshake" and detail.startswith("the server closed"):
                if self._client.adapter.session.cert:
                    # What a server that requires client certificates does with one it does
                    # not trust (OpenBao closes the connection without an alert).
                    problem = "client-certificate"
                else:  # a node going down mid-connection (killed, restarting)
                    return _Transient("connection closed by the server", sent=True)
            return VaultTLSError(f"TLS connection to {where} refused: "
                                 f"{TLS_PROBLEMS[problem]} (OpenSSL: {detail})", problem)
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return _Transient(f"connect timed out after {self.policy.timeout:g} s", sent=False)
        if isinstance(exc, requests.exceptions.Timeout):
            return _Transient(f"timed out after {self.policy.timeout:g} s", sent=True)
        if isinstance(exc, _UNUSABLE_REQUEST):
            return VaultConfigurationError(f"the request to {what} could not be sent to {where} "
                                           f"({type(exc).__name__})")
        if isinstance(exc, (ValueError, RecursionError)):  # JSON that does not parse
            return self._not_json(what, path)
        # No connection was made: nothing was sent.
        if any(isinstance(e, (ConnectionRefusedError, urllib3.exceptions.NewConnectionError))
               for e in chain):
            return _Transient("connection refused" if any(
                isinstance(e, ConnectionRefusedError) for e in chain) else "connection failed",
                sent=False)
        if any(isinstance(e, ConnectionResetError) for e in chain):
            return _Transient("connection reset", sent=True)
        if isinstance(exc, OSError) and not isinstance(exc, requests.exceptions.RequestException):
            return _Transient(f"connection failed: {exc.strerror or type(exc).__name__}",
                              sent=True)
        return _Transient("connection failed", sent=True)

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
        self._router.close()
        self.revoke_login()
        if not self._owned:
            return
        adapter = getattr(self._client, "adapter", None)
        close = getattr(adapter, "close", None)
        if close is not None:
            close()


