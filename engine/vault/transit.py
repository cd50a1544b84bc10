"""The Transit key that wraps the data keys: ``datakey``, ``decrypt``, ``rewrap``, ``rotate``.

Data keys cross Python only as ``bytearray`` objects that the caller wipes once the native key
handle is built; Vault's answers holding a plaintext key are cleared as soon as it is read.
"""

from __future__ import annotations

import binascii
from typing import Any, Callable, TypeVar

from ..aead import KEY_BYTES
from .connection import VaultConnection
from .errors import (
    VaultError,
    VaultKeyMissing,
    VaultPathNotFound,
    VaultPermissionDenied,
    VaultRequestRejected,
    WrappedKeyInvalid,
)

__all__ = ["TransitKey", "wipe"]

T = TypeVar("T")


def wipe(buf: bytearray | None) -> None:
    """Overwrites a key held in a ``bytearray`` with zeros (None is ignored)."""
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


class TransitKey:
    """The Transit key that wraps the data keys: datakey, decrypt, rewrap, rotate."""

    __slots__ = ("_conn", "mount", "name")

    def __init__(self, conn: VaultConnection, mount: str, name: str) -> None:
        self._conn, self.mount, self.name = conn, mount, name

    def _call(self, what: str, endpoint: str, fn: Callable[..., T], /, **kwargs: Any) -> T:
        try:
            return self._conn.call(what, f"{self.mount}/{endpoint}/{self.name}", fn,
                                   name=self.name, mount_point=self.mount, **kwargs)
        except (VaultPathNotFound, VaultRequestRejected) as exc:
            if isinstance(exc, VaultPathNotFound) or "key not found" in exc.reason:
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
        except (VaultRequestRejected, VaultKeyMissing):
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
            wipe(key)
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
        except VaultRequestRejected as exc:
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
        except VaultRequestRejected as exc:
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
