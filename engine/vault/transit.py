"""The Transit key that wraps the data keys: ``datakey``, ``decrypt``, ``rewrap``, ``rotate``.

Data keys cross Python only as ``bytearray`` objects that the caller wipes once the native key
handle is built; Vault's answers holding a plaintext key are cleared as soon as it is read.

``rotate`` is the one request here that changes state: it is never sent twice once it may have
been received; the key's ``latest_version`` is read back from the active node instead.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Callable

from ..aead import KEY_BYTES
from ..keys.base import KeyWrapper
from .connection import VaultConnection
from .errors import (
    VaultError,
    VaultKeyMissing,
    VaultOutcomeUnknown,
    VaultPathNotFound,
    VaultPermissionDenied,
    VaultRequestRejected,
    VaultUnavailable,
    WrappedKeyInvalid,
)

__all__ = ["TransitKey", "TransitKeyWrapper", "wipe"]


def wipe(buf: bytearray | None) -> None:
    """Overwrites a key held in a ``bytearray`` with zeros (None is ignored)."""
    if buf is not None:
        buf[:] = bytes(len(buf))


def _key_from_b64(value: Any) -> bytearray | None:
    """The 32-byte key as a bytearray (which the caller wipes), or None if ``value`` is not one.
    The transient ``bytes`` from the base64 decoder cannot be wiped from Python; it is dropped at
    once."""
    try:
        raw = binascii.a2b_base64(value) if isinstance(value, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    try:
        return bytearray(raw) if len(raw) == KEY_BYTES else None
    finally:
        del raw


class TransitKey:
    """The Transit key that wraps the data keys: datakey, decrypt, rewrap, rotate.

    Args:
        conn: the authenticated connection.
        mount: the Transit mount (``transit``).
        name: the key's name.
    """

    __slots__ = ("_conn", "mount", "name")

    def __init__(self, conn: VaultConnection, mount: str, name: str) -> None:
        self._conn, self.mount, self.name = conn, mount, name

    def _call(self, what: str, endpoint: str, fn: Callable[..., Any], /, *, data: bool = False,
              **kwargs: Any) -> Any:
        """``fn`` through the connection (``data``: return the answer's ``data`` object); a
        404 or "key not found" becomes :class:`VaultKeyMissing`."""
        call = self._conn.call_data if data else self._conn.call
        try:
            return call(what, f"{self.mount}/{endpoint}/{self.name}", fn, name=self.name,
                        mount_point=self.mount, **kwargs)
        except (VaultPathNotFound, VaultRequestRejected) as exc:
            if isinstance(exc, VaultRequestRejected) and "key not found" not in exc.reason:
                raise
        raise self.missing()

    def missing(self) -> VaultKeyMissing:
        """The exception for a Transit key that does not exist."""
        return VaultKeyMissing(f"Transit key {self.name!r} does not exist at {self.mount}/ on "
                               f"{self._conn.address}")

    @property
    def _api(self) -> Any:
        return self._conn.client.secrets.transit

    def ensure(self, create: bool) -> None:
        """Checks that the key exists; creates it (``aes256-gcm96``) when missing and allowed.
        A token that may not read key metadata is let through: use will tell.

        Raises:
            VaultKeyMissing: the key is missing and ``create`` is False, or creating it failed.
        """
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
            return
        except (VaultRequestRejected, VaultKeyMissing):
            pass
        raise VaultKeyMissing(
            f"Transit key {self.name!r} is missing and could not be created at "
            f"{self.mount}/ on {self._conn.address} (is the Transit engine mounted?)")

    def new_data_key(self) -> tuple[bytearray, str]:
        """(key, wrapped key) from ``datakey/plaintext``; the caller wipes the key.

        Raises:
            VaultError: Transit's answer holds no 256-bit key or no wrapped key.
        """
        data = self._call("generate a data key", "datakey/plaintext",
                          self._api.generate_data_key, data=True, key_type="plaintext")
        wrapped = data.get("ciphertext")
        key = _key_from_b64(data.pop("plaintext", None))
        data.clear()
        if key is None:
            raise VaultError("Transit datakey returned no usable 256-bit key")
        if not isinstance(wrapped, str) or not wrapped.startswith("vault:"):
            wipe(key)
            raise VaultError("Transit datakey returned no wrapped key")
        return key, wrapped

    def unwrap(self, version: int, wrapped: str) -> bytearray:
        """The data key of ``version``; the caller wipes it.

        Raises:
            WrappedKeyInvalid: Transit rejects the ciphertext, or it is not a 256-bit key.
        """
        try:
            data = self._call("unwrap a data key", "decrypt", self._api.decrypt_data,
                              data=True, ciphertext=wrapped)
            rejected = None
        except VaultRequestRejected as exc:
            data, rejected = {}, exc.reason
        if rejected is not None:
            raise WrappedKeyInvalid(
                f"Transit key {self.name!r} rejected the wrapped key of version {version} "
                f"(tampered, or not wrapped by this key: {rejected})")
        key = _key_from_b64(data.pop("plaintext", None))
        data.clear()
        if key is None:
            raise WrappedKeyInvalid(
                f"the wrapped key of version {version} does not unwrap to a 256-bit key")
        return key

    def encrypt(self, secret: bytes, associated_data: bytes) -> str:
        """``secret`` encrypted by Transit with ``associated_data`` bound (``vault:vN:...``).

        Raises:
            VaultError: Transit's answer holds no ciphertext.
        """
        data = self._call("wrap a key", "encrypt", self._api.encrypt_data, data=True,
                          plaintext=base64.b64encode(secret).decode("ascii"),
                          associated_data=base64.b64encode(associated_data).decode("ascii"))
        wrapped = data.get("ciphertext")
        if not isinstance(wrapped, str) or not wrapped.startswith("vault:"):
            raise VaultError("Transit encrypt returned no ciphertext")
        return wrapped

    def decrypt(self, wrapped: str, associated_data: bytes) -> bytearray:
        """The secret of :meth:`encrypt` (a bytearray the caller wipes).

        Raises:
            WrappedKeyInvalid: Transit rejects the ciphertext or the associated data.
        """
        try:
            data = self._call("unwrap a key", "decrypt", self._api.decrypt_data, data=True,
                              ciphertext=wrapped,
                              associated_data=base64.b64encode(associated_data).decode("ascii"))
            rejected = None
        except VaultRequestRejected as exc:
            data, rejected = {}, exc.reason
        if rejected is not None:
            raise WrappedKeyInvalid(f"Transit key {self.name!r} rejected a wrapped key "
                                    f"(tampered, or wrapped otherwise: {rejected})")
        value = data.pop("plaintext", None)
        data.clear()
        try:
            raw = binascii.a2b_base64(value) if isinstance(value, str) else None
        except (binascii.Error, ValueError):
            raw = None
        if raw is None:
            raise WrappedKeyInvalid("Transit returned no plaintext for a wrapped key")
        try:
            return bytearray(raw)
        finally:
            del raw

    def rewrap(self, version: int, wrapped: str) -> str:
        """``wrapped`` rewrapped under the key's newest version (inside Vault).

        Raises:
            WrappedKeyInvalid: Transit rejects the ciphertext.
        """
        try:
            data = self._call("rewrap a data key", "rewrap", self._api.rewrap_data, data=True,
                              ciphertext=wrapped)
            rejected = None
        except VaultRequestRejected as exc:
            data, rejected = {}, exc.reason
        if rejected is not None:
            raise WrappedKeyInvalid(
                f"Transit could not rewrap key version {version}: {rejected}")
        rewrapped = data.get("ciphertext")
        if not isinstance(rewrapped, str) or not rewrapped.startswith("vault:"):
            raise VaultError(f"Transit rewrap of key version {version} returned no ciphertext")
        return rewrapped

    def rotate(self) -> int:
        """Adds a new version of the Transit key; returns the key's latest version afterwards.

        Raises:
            VaultUnavailable: the rotation failed and the key was read back unchanged (nothing
                happened: run it again).
            VaultOutcomeUnknown: it may have applied, and the key could not be read back.
        """
        before = self.latest_version()
        try:
            self._call("rotate the Transit key", "keys", self._api.rotate_key, idempotent=False)
            return self.latest_version()
        except VaultOutcomeUnknown as exc:
            unknown = exc
        try:
            after: int | None = self.latest_version()
        except VaultUnavailable:
            after = None
        if after is None:
            raise unknown
        if after <= before:
            raise VaultUnavailable(
                f"Transit key {self.name!r} was not rotated ({unknown}); its latest version is "
                f"still {before}: run the rotation again")
        return after

    def latest_version(self) -> int:
        """The key's latest version, read from the active node."""
        version = self.info(consistent=True).get("latest_version")
        if type(version) is not int or version < 1:
            raise VaultError(f"Transit key {self.name!r} has no valid latest_version")
        return version

    def info(self, *, consistent: bool = False) -> dict[str, Any]:
        """The key's metadata (``latest_version``, ``min_decryption_version``, ...)."""
        return self._call("read the Transit key", "keys", self._api.read_key, data=True,
                          consistent=consistent)

    def set_min_decryption_version(self, version: int) -> None:
        """Refuses decryption with Transit key versions below ``version``."""
        self._call("set the minimum decryption version", "keys",
                   self._api.update_key_configuration, min_decryption_version=version)


class TransitKeyWrapper(KeyWrapper):
    """Secrets wrapped by a Transit key (``encrypt``/``decrypt`` with associated data): the
    secret crosses the network to Vault, and nothing but Vault can unwrap it."""

    __slots__ = ("_transit",)

    def __init__(self, transit: TransitKey) -> None:
        self._transit = transit

    def __repr__(self) -> str:
        return f"<TransitKeyWrapper {self._transit.mount}/{self._transit.name}>"

    def wrap(self, secret: bytes, associated_data: bytes) -> str:
        return self._transit.encrypt(secret, associated_data)

    def unwrap(self, wrapped: str, associated_data: bytes) -> bytearray:
        return self._transit.decrypt(wrapped, associated_data)
