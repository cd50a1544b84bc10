"""The seed's other Vault paths: application secrets in KV v2 under ``secret/data/intelliflow/``.

``config``, ``openai``, ``supabase`` and ``redis`` (seed, "Vault Integration") are read and written
as small dictionaries, each write a new KV version. Values never appear in ``repr``, exception
messages or logs; a read returns a :class:`SecretData`, a ``dict`` whose ``repr`` shows the field
names only.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from .errors import InvalidArgument
from .keys.vault import (
    RetryPolicy,
    VaultConnection,
    VaultConflict,
    VaultError,
    VaultKeyProvider,
    _BadRequest,
    _is_cas_mismatch,
    _NotFound,
)

__all__ = ["SEED_SECRET_NAMES", "SecretData", "SecretNotFound", "SecretVersionConflict",
           "VaultSecrets"]

SEED_SECRET_NAMES = ("config", "openai", "supabase", "redis")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_RESERVED = frozenset({"encryption"})  # the key provider's folder


class SecretNotFound(VaultError, LookupError):
    """No secret (or no such version of it) exists under that name."""


class SecretVersionConflict(VaultConflict):
    """A write with ``cas=N`` found another latest version (someone else wrote first)."""


class SecretData(dict):
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

    def __reduce__(self):
        return (type(self), (dict(self), self.version))


class VaultSecrets:
    """Reads and writes named secrets in KV v2 (``<mount>/data/<base_path>/<name>``).

    Args:
        source: a :class:`~engine.keys.vault.VaultKeyProvider` (its connection is shared), a
            :class:`~engine.keys.vault.VaultConnection`, or an authenticated ``hvac.Client``.
        mount: the KV v2 mount (seed: ``secret``).
        base_path: the folder of the secrets (seed: ``intelliflow``).
        timeout, retries: for an ``hvac.Client`` source only.

    Raises:
        InvalidArgument: an unusable source or path.
    """

    __slots__ = ("_conn", "_mount", "_base")

    def __init__(self, source: Any, *, mount: str = "secret", base_path: str = "intelliflow",
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
        self._mount = mount.strip("/")
        self._base = base_path.strip("/")
        if not self._mount or not self._base:
            raise InvalidArgument("mount and base_path must not be empty")

    def __repr__(self) -> str:
        return f"<VaultSecrets address={self._conn.address!r} path={self._mount}/{self._base}>"

    def __reduce__(self):
        raise TypeError("VaultSecrets holds Vault credentials and cannot be pickled")

    def _path(self, name: str) -> str:
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name in _RESERVED:
            raise InvalidArgument(
                "secret names are 1-128 letters, digits, '.', '_' or '-' "
                f"(not {', '.join(sorted(_RESERVED))}); e.g. one of {', '.join(SEED_SECRET_NAMES)}"
            )
        return f"{self._base}/{name}"

    def _shown(self, path: str) -> str:
        return f"{self._mount}/data/{path}"

    def read(self, name: str, version: int | None = None) -> SecretData:
        """The secret's fields (the latest version, or ``version``).

        Raises:
            SecretNotFound: no such secret or version (or it was deleted).
            VaultPermissionDenied, VaultAuthError, VaultUnavailable.
        """
        path = self._path(name)
        if version is not None and (type(version) is not int or version < 1):
            raise InvalidArgument("secret versions are positive integers")
        kv = self._conn.client.secrets.kv.v2
        try:
            resp = self._conn.call(f"read secret {name!r}", self._shown(path),
                                   kv.read_secret_version, path=path, version=version,
                                   mount_point=self._mount, raise_on_deleted_version=True)
        except _NotFound:
            at = "" if version is None else f" version {version}"
            raise SecretNotFound(f"no secret {name!r}{at} at {self._shown(path)!r}") from None
        except _BadRequest as exc:
            raise VaultError(f"Vault refused to read {self._shown(path)!r}: {exc.reason}") \
                from None
        data = resp.get("data") or {}
        return SecretData(data.get("data") or {},
                          int((data.get("metadata") or {}).get("version") or 0))

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
        kv = self._conn.client.secrets.kv.v2
        try:
            resp = self._conn.call(f"write secret {name!r}", self._shown(path),
                                   kv.create_or_update_secret, path=path, secret=dict(data),
                                   cas=cas, mount_point=self._mount)
        except _BadRequest as exc:
            if _is_cas_mismatch(exc.reason):
                raise SecretVersionConflict(
                    f"secret {name!r} was not written: check-and-set version {cas} is not the "
                    f"latest"
                ) from None
            raise VaultError(f"Vault refused to write {self._shown(path)!r}: {exc.reason}") \
                from None
        except TypeError:
            raise InvalidArgument(f"secret {name!r}: data is not JSON-serialisable") from None
        return int((resp.get("data") or {}).get("version") or 0)

    def list(self) -> list[str]:
        """The names of the secrets under ``base_path``, sorted (sub-folders are left out).

        Raises:
            VaultPermissionDenied, VaultAuthError, VaultUnavailable.
        """
        kv = self._conn.client.secrets.kv.v2
        try:
            resp = self._conn.call("list secrets", f"{self._mount}/metadata/{self._base}",
                                   kv.list_secrets, path=self._base, mount_point=self._mount)
        except _NotFound:
            return []
        keys = (resp.get("data") or {}).get("keys") or []
        return sorted(k for k in keys if not k.endswith("/"))
