"""An application's own secrets in KV v2, beside the key provider's folder: by default under
``secret/data/engine/<name>`` (``VAULT_KV_MOUNT``, ``VAULT_SECRETS_PATH``).

Each secret is a small dictionary, each write a new KV version. Which names an application uses
is its configuration (``names=``, ``VAULT_SECRET_NAMES``), not the library's. Values never appear
in ``repr``, exception messages or logs; a read returns a :class:`SecretData`, a ``dict`` whose
``repr`` shows the field names only.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Mapping, NoReturn

from ..errors import InvalidArgument
from .connection import RetryPolicy, VaultConnection
from .errors import SecretNotFound, SecretVersionConflict
from .kv import KVStore
from .provider import VaultKeyProvider

__all__ = ["DEFAULT_SECRETS_PATH", "SecretData", "VaultSecrets"]

DEFAULT_SECRETS_PATH = "engine"  # the folder that also holds the key provider's "encryption"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_RESERVED = frozenset({"encryption"})  # the key provider's folder


class SecretData(dict[str, Any]):
    """A secret's fields: a plain ``dict`` whose ``repr`` and ``str`` show the field names only.

    Attributes:
        version: the KV version this data was read at (or written as).
    """

    __slots__ = ("version",)

    def __init__(self, data: Mapping[str, Any], version: int = 0) -> None:
        super().__init__(data)
        self.version = version

    def __repr__(self) -> str:
        return f"<SecretData version={self.version} fields={sorted(self)}>"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (dict(self), self.version))


class VaultSecrets:
    """Reads and writes named secrets in KV v2 (``<mount>/data/<base_path>/<name>``).

    Args:
        source: a :class:`~engine.vault.VaultKeyProvider` (its connection is shared), a
            :class:`~engine.vault.VaultConnection`, or an authenticated ``hvac.Client``.
        mount: the KV v2 mount (default ``secret``).
        base_path: the folder of the secrets (default :data:`DEFAULT_SECRETS_PATH`).
        names: the names this application reads and writes; any other is refused (a typo
            fails at once instead of reading a secret that is not there). None: any name.
        timeout, retries: for an ``hvac.Client`` source only.

    Raises:
        InvalidArgument: an unusable source, path or name.
    """

    __slots__ = ("_conn", "_kv", "_base", "_names")

    def __init__(self, source: Any, *, mount: str = "secret",
                 base_path: str = DEFAULT_SECRETS_PATH, names: Iterable[str] | None = None,
                 timeout: float = 5.0, retries: int = 3) -> None:
        if isinstance(source, VaultKeyProvider):
            self._conn = source.connection
        elif isinstance(source, VaultConnection):
            self._conn = source
        elif hasattr(source, "secrets") and hasattr(source, "url"):
            self._conn = VaultConnection(source.url, client=source,
                                         policy=RetryPolicy(timeout=timeout, retries=retries))
        else:
            raise InvalidArgument("VaultSecrets needs a VaultKeyProvider, a VaultConnection or an "
                                  f"hvac.Client, not {type(source).__name__}")
        self._kv = KVStore(self._conn, mount.strip("/"))
        self._base = base_path.strip("/")
        if not self._kv.mount or not self._base:
            raise InvalidArgument("mount and base_path must not be empty")
        self._names: frozenset[str] | None = None
        if names is not None:
            chosen = [names] if isinstance(names, str) else list(names)
            for name in chosen:
                self._check_name(name)
            self._names = frozenset(chosen)

    @classmethod
    def from_environment(cls, source: Any, env: Mapping[str, str] | None = None,
                         **overrides: Any) -> "VaultSecrets":
        """Secrets where the environment says: ``VAULT_KV_MOUNT`` (mount), ``VAULT_SECRETS_PATH``
        (base_path) and ``VAULT_SECRET_NAMES`` (names, separated by commas); keyword arguments
        override them.

        Raises:
            InvalidArgument: as the constructor.
        """
        env = os.environ if env is None else env
        kw: dict[str, Any] = {}
        if env.get("VAULT_KV_MOUNT"):
            kw["mount"] = env["VAULT_KV_MOUNT"]
        if env.get("VAULT_SECRETS_PATH"):
            kw["base_path"] = env["VAULT_SECRETS_PATH"]
        if env.get("VAULT_SECRET_NAMES", "").strip():
            kw["names"] = [n.strip() for n in env["VAULT_SECRET_NAMES"].split(",") if n.strip()]
        kw.update(overrides)
        return cls(source, **kw)

    def __repr__(self) -> str:
        return f"<VaultSecrets address={self._conn.address!r} path={self._kv.mount}/{self._base}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("VaultSecrets holds Vault credentials and cannot be pickled")

    @staticmethod
    def _check_name(name: Any) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name in _RESERVED:
            raise InvalidArgument(
                "secret names are 1-128 letters, digits, '.', '_' or '-' "
                f"(not {', '.join(sorted(_RESERVED))})")

    def _path(self, name: str) -> str:
        self._check_name(name)
        if self._names is not None and name not in self._names:
            raise InvalidArgument(f"{name!r} is not one of this application's secrets "
                                  f"({', '.join(sorted(self._names))})")
        return f"{self._base}/{name}"

    def read(self, name: str, version: int | None = None) -> SecretData:
        """The secret's fields (the latest version, or ``version``).

        Raises:
            SecretNotFound: no such secret or version (or it was deleted).
            VaultPermissionDenied, VaultAuthError, VaultUnavailable.
        """
        path = self._path(name)
        if version is not None and (type(version) is not int or version < 1):
            raise InvalidArgument("secret versions are positive integers")
        found = self._kv.read(path, f"read secret {name!r}", version)
        if found is None:
            at = "" if version is None else f" version {version}"
            raise SecretNotFound(f"no secret {name!r}{at} at {self._kv.shown(path)!r}")
        return SecretData(*found)

    def write(self, name: str, data: Mapping[str, Any], cas: int | None = None) -> int:
        """Stores ``data`` as a new version of the secret.

        Args:
            data: a JSON-serialisable mapping of field names to values.
            cas: check-and-set: 0 to create only if absent, N to write only if N is the latest.

        Returns:
            The new KV version.

        Raises:
            SecretVersionConflict: ``cas`` did not match.
            InvalidArgument: ``data`` is not a mapping with string keys.
            VaultPermissionDenied, VaultAuthError, VaultUnavailable.
        """
        path = self._path(name)
        if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
            raise InvalidArgument("secret data must be a mapping with string keys")
        if cas is not None and (type(cas) is not int or cas < 0):
            raise InvalidArgument("cas must be a non-negative integer")
        try:
            json.dumps(dict(data))
            serialisable = True
        except (TypeError, ValueError, RecursionError):
            serialisable = False
        if not serialisable:  # raised here so that no exception context holds the data
            raise InvalidArgument(f"secret {name!r}: data is not JSON-serialisable")
        written = self._kv.write(path, dict(data), f"write secret {name!r}", cas)
        if written is None:
            raise SecretVersionConflict(
                f"secret {name!r} was not written: check-and-set version {cas} is not the latest")
        return written

    def list(self) -> list[str]:
        """The names of the secrets under ``base_path``, sorted (sub-folders are left out).

        Raises:
            VaultPermissionDenied, VaultAuthError, VaultUnavailable.
        """
        keys = self._kv.list(self._base, "list secrets")
        return sorted(k for k in keys if not k.endswith("/"))
