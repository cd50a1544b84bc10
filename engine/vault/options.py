"""The connection's settings, checked before any request: Vault's addresses, the CA bundle, the
client certificate, the Kubernetes service-account token, and the ``VAULT_*`` environment.

Messages never repeat an address (it may hold a password) nor a file's content. Standard library
only.
"""

from __future__ import annotations

import re
import ssl
import urllib.parse
from typing import Any, Callable, Mapping, Sequence, TypeVar

from ..settings import env_flag, env_number
from .errors import VaultAuthError, VaultConfigurationError

__all__ = ["check_address", "check_addresses", "check_client_cert", "check_verify",
           "environment_settings", "read_jwt"]

T = TypeVar("T")


def check_address(address: Any) -> str:
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


def check_addresses(address: Any) -> list[str]:
    """The addresses of the nodes: one URL, several separated by commas (``$VAULT_ADDR`` may be
    ``https://vault-0:8200,https://vault-1:8200``), or a list or tuple of URLs; each checked by
    :func:`check_address`, duplicates dropped.

    Raises:
        VaultConfigurationError: no address, or one that is not a usable URL.
    """
    if isinstance(address, str):
        items: Sequence[Any] = [a.strip() for a in address.split(",")] if "," in address \
            else [address]
    elif isinstance(address, (list, tuple)):
        items = list(address)
    else:
        items = [address]
    checked: list[str] = []
    for item in items:
        url = check_address(item)
        if url.lower() not in (c.lower() for c in checked):
            checked.append(url)
    if not checked:
        raise VaultConfigurationError("no Vault address given (argument address= or $VAULT_ADDR)")
    return checked


def _load_problem(load: Callable[[], object], invalid: str) -> str:
    """"" when ``load()`` reads its TLS files, else why not (never their content)."""
    try:
        load()
        return ""
    except FileNotFoundError:
        return "does not exist"
    except (ssl.SSLError, OSError, ValueError):
        return invalid


def check_verify(verify: Any) -> bool | str:
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


def environment_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The connection's keyword arguments given by ``VAULT_*`` variables (unset ones are left
    out).

    ``VAULT_ADDR`` (address); ``VAULT_TOKEN``, or ``VAULT_ROLE_ID`` + ``VAULT_SECRET_ID``, or
    ``VAULT_K8S_ROLE`` (+ ``VAULT_K8S_JWT_PATH``), or else ``VAULT_CLIENT_CERT`` (+
    ``VAULT_CERT_ROLE``) logs in with the certificate; ``VAULT_CACERT`` or
    ``VAULT_SKIP_VERIFY`` (verify); ``VAULT_CLIENT_CERT``, ``VAULT_CLIENT_KEY``;
    ``VAULT_NAMESPACE``; ``VAULT_TIMEOUT``, ``VAULT_RETRIES``, ``VAULT_DEADLINE`` (timeout,
    retries, deadline). ``VAULT_ADDR`` may list several nodes, separated by commas.

    Raises:
        VaultConfigurationError: ``VAULT_TIMEOUT`` or ``VAULT_RETRIES`` is not a number.
    """
    kw: dict[str, Any] = {}
    for var, arg in (("VAULT_ADDR", "address"), ("VAULT_NAMESPACE", "namespace"),
                     ("VAULT_K8S_JWT_PATH", "jwt_path"), ("VAULT_CACERT", "verify"),
                     ("VAULT_CLIENT_CERT", "client_cert"), ("VAULT_CLIENT_KEY", "client_key")):
        if env.get(var):
            kw[arg] = env[var]
    for var, arg, conv in (("VAULT_TIMEOUT", "timeout", float), ("VAULT_RETRIES", "retries", int),
                           ("VAULT_DEADLINE", "deadline", float)):
        number = env_number(env, var, conv, error=VaultConfigurationError)
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


def check_client_cert(cert: Any, key: Any) -> str | tuple[str, str] | None:
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


def read_jwt(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            jwt = f.read().strip()
        problem = "" if jwt else "is empty"
    except (OSError, UnicodeDecodeError) as exc:
        problem = f"cannot be read: {getattr(exc, 'strerror', None) or type(exc).__name__}"
    if problem:
        raise VaultAuthError(f"the Kubernetes service-account token at {path!r} {problem}")
    return jwt
