"""KV version 2 with check-and-set, and the key provider's layout in it.

:class:`KVStore` is the one implementation of KV v2 reads, writes, lists and deletes: the key
store below and :class:`~engine.vault.VaultSecrets` both use it. :class:`KeyStore` is where the
key provider keeps its versions::

    <mount>/data/<path>/v1              {format, version, wrapped_key, transit_key, transit_mount,
                                         state, created_at, kcv, usage, algorithm, index_kcv}
    <mount>/data/<path>/v2              ...
    <mount>/data/<path>/current         {version: 2, updated_at}
    <mount>/data/<path>/rotation-lock   {owner, expires}
    <mount>/data/<path>/audit           {key}
    <mount>/data/<path>/index-v1        {key}   (the blind-index secret of version 1)

Entries are created with check-and-set (``cas=0``) and updated with the KV version they were read
at, so two processes never both create version N and never overwrite each other's changes.

A write is never sent twice once it may have been received (the node died or timed out after
the request left): :meth:`KVStore.write` reads the path back from the active node instead, and
takes the write as applied when the latest version holds exactly what it wrote (each
read-modify-write stores a fresh random ``revision``, so two writers' data never look alike).
Only when the read shows the old version does it write again, and check-and-set then refuses
a second application. Each
entry's ``kcv`` (key check value) is an HMAC of the version number (and, for XAES-256-GCM, the
algorithm) under the data key: a data key copied into another version's entry, alone or with the
whole entry, fails it, and so does an entry whose algorithm was edited. Entries written before
``algorithm`` existed are AES-256-GCM. ``index_kcv``, recorded at the first use of the version's
blind-index secret, does the same for that secret: one replaced or recreated (every lookup would
find nothing) is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import time
from datetime import datetime, timezone
from typing import Any, Callable

from ..keys.base import ALGORITHMS, DEFAULT_ALGORITHM, KeyState, UnknownKeyVersion
from .connection import VaultConnection
from .errors import (
    VaultConflict,
    VaultError,
    VaultOutcomeUnknown,
    VaultPathNotFound,
    VaultRequestRejected,
    VaultUnavailable,
    WrappedKeyInvalid,
)

__all__ = [
    "CAS_ATTEMPTS",
    "ENTRY_FORMAT",
    "KVStore",
    "KeyStore",
    "check_entry_key",
    "entry_algorithm",
    "index_check_value",
    "key_check_value",
    "new_entry",
    "parse_entry",
]

ENTRY_FORMAT = 1
CAS_ATTEMPTS = 32
_KCV_DOMAIN = b"engine/vault/kcv/v1\x00version="
_INDEX_KCV_DOMAIN = b"engine/vault/index-kcv/v1\x00version="
_VERSION_KEY = re.compile(r"v([1-9][0-9]{0,9})")
_SECRET_BYTES = 32  # the audit key and the index secrets

Change = Callable[[dict[str, Any]], "dict[str, Any] | None"]


def _iso_now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _fields(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name)
    return value if isinstance(value, dict) else {}


def _kv_version(metadata: dict[str, Any]) -> int:
    version = metadata.get("version")
    return version if type(version) is int else 0


def _canonical(data: dict[str, Any]) -> str:
    """``data`` as Vault will give it back (JSON), in a form that compares exactly."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


class KVStore:
    """One KV version 2 mount: read, write with check-and-set, read-modify-write, list, delete.

    Args:
        conn: the authenticated connection.
        mount: the KV v2 mount (``secret``).
    """

    __slots__ = ("_conn", "mount")

    def __init__(self, conn: VaultConnection, mount: str) -> None:
        self._conn, self.mount = conn, mount

    def shown(self, path: str) -> str:
        """The API path of a secret, for messages."""
        return f"{self.mount}/data/{path}"

    @property
    def _api(self) -> Any:
        return self._conn.client.secrets.kv.v2

    def read(self, path: str, what: str, version: int | None = None, *,
             consistent: bool = False) -> tuple[dict[str, Any], int] | None:
        """(data, KV version) of the latest version at ``path`` (or of ``version``), or None
        when there is none (or it was deleted).

        Args:
            consistent: read it from the active node (see :meth:`VaultConnection.call`).

        Raises:
            VaultRequestRejected, VaultPermissionDenied, VaultUnavailable, ...: see
            :meth:`VaultConnection.call`.
        """
        try:
            data = self._conn.call_data(what, self.shown(path), self._api.read_secret_version,
                                        path=path, version=version, mount_point=self.mount,
                                        raise_on_deleted_version=True, consistent=consistent)
        except VaultPathNotFound:
            return None
        return _fields(data, "data"), _kv_version(_fields(data, "metadata"))

    def write(self, path: str, data: dict[str, Any], what: str,
              cas: int | None = None) -> int | None:
        """Writes ``data`` as a new version: with ``cas`` = 0 only if ``path`` is empty, with
        ``cas`` = N only if N is its latest version, with None unconditionally. Never applied
        twice (see the module docstring).

        Returns:
            The new KV version, or None when ``cas`` no longer matches.

        Raises:
            VaultOutcomeUnknown: the write may have applied and Vault could not be asked
                whether it did within the retry budget (or, without ``cas``, a newer version
                by another writer hides it).
        """
        try:
            return self._send(path, data, what, cas)
        except VaultOutcomeUnknown as exc:
            unknown = exc
        return self._settle(path, data, what, cas, unknown)

    def _send(self, path: str, data: dict[str, Any], what: str, cas: int | None) -> int | None:
        try:
            written = self._conn.call_data(what, self.shown(path),
                                           self._api.create_or_update_secret, path=path,
                                           secret=data, cas=cas, mount_point=self.mount,
                                           idempotent=False)
        except VaultRequestRejected as exc:
            if not exc.cas_mismatch:
                raise
            return None
        return _kv_version(written)

    def _settle(self, path: str, data: dict[str, Any], what: str, cas: int | None,
                unknown: VaultOutcomeUnknown) -> int | None:
        """After a write that may or may not have applied: the active node says whether it did;
        if it did not and ``cas`` still holds, the write is sent again (check-and-set refuses
        it should the first one land late)."""
        expected = _canonical(data)
        for _ in range(CAS_ATTEMPTS):
            found: tuple[dict[str, Any], int] | None = None
            try:
                found = self.read(
                    path, f"read back {self.shown(path)!r} to see whether a write applied",
                    consistent=True)
                readable = True
            except VaultUnavailable:
                readable = False
            if not readable:  # raised here: no exception context travels with it
                raise unknown
            stored, version = found if found is not None else ({}, 0)
            if found is not None and _canonical(stored) == expected and \
                    (cas is None or version == cas + 1):
                return version
            if cas is None:
                raise unknown  # the latest version is another writer's: ours is unknowable
            if version != cas:
                return None  # another writer got there first: a check-and-set mismatch
            try:
                written = self._send(path, data, what, cas)
            except VaultOutcomeUnknown as again:
                unknown = again
                continue
            if written is not None:
                return written
        raise unknown

    def update(self, path: str, change: Change, what: str,
               missing: Callable[[], Exception]) -> dict[str, Any]:
        """Read-modify-write with check-and-set, retried when another writer got in first.

        Args:
            change: gets a copy of the data; returns the new data, or None to write nothing.
            missing: builds the exception for an absent ``path``.

        Returns:
            The data now stored.

        Raises:
            VaultConflict: lost the check-and-set race :data:`CAS_ATTEMPTS` times.
        """
        for attempt in range(CAS_ATTEMPTS):
            found = self.read(path, what, consistent=attempt > 0)
            if found is None:
                raise missing()
            data, kv_version = found
            new = change(dict(data))
            if new is None:
                return data
            new["revision"] = os.urandom(8).hex()  # no two writers' versions look alike
            if self.write(path, new, what, cas=kv_version) is not None:
                return new
        raise VaultConflict(f"could not {what} at {self.shown(path)!r}: {CAS_ATTEMPTS} "
                            f"check-and-set conflicts")

    def list(self, path: str, what: str, *, consistent: bool = False) -> list[str]:
        """The names in the folder ``path`` (sub-folders end with ``/``); [] when empty."""
        try:
            data = self._conn.call_data(what, f"{self.mount}/metadata/{path}",
                                        self._api.list_secrets, path=path, mount_point=self.mount,
                                        consistent=consistent)
        except VaultPathNotFound:
            return []
        keys = data.get("keys") or []
        return [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else []

    def destroy(self, path: str, what: str) -> None:
        """Deletes every version of ``path`` and its metadata."""
        self._conn.call(what, self.shown(path), self._api.delete_metadata_and_all_versions,
                        path=path, mount_point=self.mount)


# ---- the key provider's entries ----

def key_check_value(key: bytes | bytearray, version: int,
                    algorithm: str = DEFAULT_ALGORITHM) -> bytes:
    """16 bytes that tie a data key to its version number and algorithm (see the module
    docstring; AES-256-GCM keys keep the value they always had)."""
    label = _KCV_DOMAIN + str(version).encode()
    if algorithm != DEFAULT_ALGORITHM:
        label += b"\x00algorithm=" + algorithm.encode("ascii")
    return hmac.new(key, label, hashlib.sha256).digest()[:16]


def index_check_value(secret: bytes, version: int) -> str:
    """The ``index_kcv`` of a version's blind-index secret (base64): 16 bytes of an HMAC of the
    version number under the secret, which shows whether a secret read later is the same one
    and nothing about it."""
    mac = hmac.new(secret, _INDEX_KCV_DOMAIN + str(version).encode(), hashlib.sha256).digest()
    return base64.b64encode(mac[:16]).decode("ascii")


def new_entry(version: int, key: bytearray, wrapped: str, transit_name: str,
              transit_mount: str, created: datetime,
              algorithm: str = DEFAULT_ALGORITHM) -> dict[str, Any]:
    """The KV entry of a new, active version."""
    return {
        "format": ENTRY_FORMAT, "version": version, "wrapped_key": wrapped,
        "transit_key": transit_name, "transit_mount": transit_mount,
        "state": KeyState.ACTIVE.value, "created_at": created.isoformat(),
        "kcv": base64.b64encode(key_check_value(key, version, algorithm)).decode("ascii"),
        "algorithm": algorithm,
    }


def entry_algorithm(version: int, entry: dict[str, Any]) -> str:
    """The algorithm of an entry (AES-256-GCM for entries written before it was recorded).

    Raises:
        WrappedKeyInvalid: an algorithm the engine does not have.
    """
    algorithm = entry.get("algorithm", DEFAULT_ALGORITHM)
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise WrappedKeyInvalid(f"key version {version}'s entry in Vault names an unknown "
                                f"algorithm")
    return algorithm


def parse_entry(version: int, entry: dict[str, Any]) -> tuple[KeyState, datetime]:
    """(state, creation time) of an entry.

    Raises:
        WrappedKeyInvalid: the entry's state or timestamp is not valid.
    """
    try:
        parsed = KeyState(entry.get("state")), datetime.fromisoformat(str(entry.get("created_at")))
    except (ValueError, TypeError):
        parsed = None
    if parsed is None:
        raise WrappedKeyInvalid(
            f"key version {version}'s entry in Vault has an invalid state or timestamp")
    state, created = parsed
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return state, created


def check_entry_key(version: int, entry: dict[str, Any], key: bytearray) -> None:
    """Checks an unwrapped data key against the entry's key check value.

    Raises:
        WrappedKeyInvalid: it does not match (tampered, or moved from another version).
    """
    try:
        expected = base64.b64decode(entry.get("kcv") or "", validate=True)
    except (binascii.Error, TypeError, ValueError):
        expected = b""
    if not hmac.compare_digest(key_check_value(key, version, entry_algorithm(version, entry)),
                               expected):
        raise WrappedKeyInvalid(f"the wrapped key of version {version} fails its key check "
                                f"value (tampered, moved from another version, or its algorithm "
                                f"edited)")


class KeyStore:
    """The key provider's folder in KV v2 (layout in the module docstring).

    Args:
        conn: the authenticated connection.
        mount: the KV v2 mount.
        path: the folder (``engine/encryption`` by default).
    """

    __slots__ = ("kv", "path")

    def __init__(self, conn: VaultConnection, mount: str, path: str) -> None:
        self.kv, self.path = KVStore(conn, mount), path

    @property
    def mount(self) -> str:
        """The KV v2 mount."""
        return self.kv.mount

    def entry_path(self, version: int) -> str:
        """The path of a version's entry."""
        return f"{self.path}/v{version}"

    @property
    def pointer_path(self) -> str:
        """The path of the current-version pointer."""
        return f"{self.path}/current"

    def versions(self, *, consistent: bool = False) -> list[int]:
        """The version numbers that have an entry, ascending."""
        keys = self.kv.list(self.path, "list key versions", consistent=consistent)
        return sorted(int(m.group(1)) for k in keys if (m := _VERSION_KEY.fullmatch(k)))

    def entry(self, version: int, *, consistent: bool = False
              ) -> tuple[dict[str, Any], int] | None:
        """(entry, KV version) of a version, or None."""
        return self.kv.read(self.entry_path(version), f"read key version {version}",
                            consistent=consistent)

    def create_entry(self, version: int, entry: dict[str, Any]) -> bool:
        """Creates a version's entry; False when it already exists."""
        return self.kv.write(self.entry_path(version), entry, f"create key version {version}",
                             cas=0) is not None

    def update_entry(self, version: int, change: Change) -> dict[str, Any]:
        """Read-modify-write of one entry; ``change`` returns the new entry or None (no write).

        Raises:
            UnknownKeyVersion: no such entry.
            VaultConflict: lost the check-and-set race too often.
        """
        return self.kv.update(self.entry_path(version), change, f"update key version {version}",
                              missing=lambda: UnknownKeyVersion(version))

    def destroy_entry(self, version: int) -> None:
        """Deletes a version's entry and all its KV versions."""
        self.kv.destroy(self.entry_path(version), f"purge key version {version}")

    def pointer(self, *, consistent: bool = False) -> tuple[int | None, int]:
        """(current version or None, the pointer's KV version or 0)."""
        found = self.kv.read(self.pointer_path, "read the current key version",
                             consistent=consistent)
        if found is None:
            return None, 0
        version = found[0].get("version")
        if type(version) is not int or version < 1:
            raise VaultError(f"the current-version pointer at "
                             f"{self.kv.shown(self.pointer_path)!r} is invalid")
        return version, found[1]

    def set_pointer(self, version: int, *, only_up: bool) -> int:
        """Sets ``current`` to ``version`` (with ``only_up``, never lowers it); returns the
        pointer's value afterwards."""
        for attempt in range(CAS_ATTEMPTS):
            cur, kv_version = self.pointer(consistent=attempt > 0)
            if only_up and cur is not None and cur >= version:
                return cur
            if self.kv.write(self.pointer_path, {"version": version, "updated_at": _iso_now()},
                             "set the current key version", cas=kv_version) is not None:
                return version
        raise VaultConflict("could not update the current-version pointer: too many conflicts")

    # ---- the rotation lock and the audit key ----

    @property
    def _lock_path(self) -> str:
        return f"{self.path}/rotation-lock"

    def take_lock(self, owner: str, ttl: float) -> bool:
        """Takes the rotation lock for ``ttl`` seconds unless another owner holds it (a lock
        ``owner`` itself still holds, its release having failed, is taken again)."""
        found = self.kv.read(self._lock_path, "read the rotation lock")
        held, cas = found if found else ({}, 0)
        try:
            expires = float(held.get("expires") or 0)
        except (TypeError, ValueError):
            expires = 0.0  # unreadable: treat as free, the write below is still check-and-set
        free = expires < time.time() or held.get("owner") == owner
        return free and self.kv.write(
            self._lock_path, {"owner": owner, "expires": time.time() + ttl},
            "take the rotation lock", cas=cas) is not None

    def release_lock(self, owner: str) -> None:
        """Releases the rotation lock if ``owner`` still holds it."""
        found = self.kv.read(self._lock_path, "read the rotation lock")
        if found and found[0].get("owner") == owner:
            self.kv.write(self._lock_path, {"owner": None, "expires": 0},
                          "release the rotation lock", cas=found[1])

    @property
    def journal_path(self) -> str:
        """The path of the wrapping-key rotation's journal."""
        return f"{self.path}/wrapping-rotation"

    def journal(self) -> tuple[dict[str, Any], int]:
        """(the wrapping-key rotation's journal, its KV version); ({}, 0) when there is none.
        Read from the active node."""
        found = self.kv.read(self.journal_path, "read the wrapping-key rotation journal",
                             consistent=True)
        return found if found is not None else ({}, 0)

    def write_journal(self, data: dict[str, Any], cas: int) -> bool:
        """Writes the journal with check-and-set; False when another writer got there first."""
        return self.kv.write(self.journal_path, data, "write the wrapping-key rotation journal",
                             cas=cas) is not None

    def audit_key(self) -> bytes:
        """The audit trail's HMAC key: 32 random bytes at ``<path>/audit``, created once with
        check-and-set.

        Raises:
            WrappedKeyInvalid: the stored entry is malformed.
            VaultConflict: too many concurrent creators.
        """
        key = self._random_secret("audit", "the audit key")
        assert key is not None  # created when missing
        return key

    def index_secret(self, version: int, *, create: bool = True) -> bytes | None:
        """The secret blind-index keys of a version derive from: 32 random bytes at
        ``<path>/index-v<version>``, created once with check-and-set (unless ``create`` is
        False: None when there is none).

        Raises:
            WrappedKeyInvalid: the stored entry is malformed.
            VaultConflict: too many concurrent creators.
        """
        return self._random_secret(f"index-v{version}", f"the index secret of version {version}",
                                   create=create)

    def destroy_index_secret(self, version: int) -> None:
        """Deletes a version's blind-index secret and all its KV versions."""
        self.kv.destroy(f"{self.path}/index-v{version}", f"purge the index secret of {version}")

    def _random_secret(self, name: str, what: str, *, create: bool = True) -> bytes | None:
        path = f"{self.path}/{name}"
        for attempt in range(CAS_ATTEMPTS):
            found = self.kv.read(path, f"read {what}", consistent=attempt > 0)
            if found is not None:
                try:
                    key = base64.b64decode(found[0]["key"], validate=True)
                except (KeyError, TypeError, binascii.Error):
                    key = b""
                if len(key) != _SECRET_BYTES:
                    raise WrappedKeyInvalid(f"{what} in Vault is malformed")
                return key
            if not create:
                return None
            fresh = base64.b64encode(os.urandom(_SECRET_BYTES)).decode()
            self.kv.write(path, {"key": fresh}, f"create {what}", cas=0)
        raise VaultConflict(f"could not create {what}: too many conflicts")
