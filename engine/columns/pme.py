"""Parquet Modular Encryption (PME) under the engine's keys (docs/pme.md).

PME is Parquet's own encryption standard: pages are AES-GCM encrypted under data keys per column
(and per file), compression and types stay as they are, and Spark, DuckDB, Arrow and every
other PME reader can read the files given the keys. Here the engine is PME's key manager:

- a *master key* id names a key version: ``engine-v3`` is version 3;
- :class:`EngineKmsClient`, a ``pyarrow.parquet.encryption.KmsClient``, wraps and unwraps
  pyarrow's key-encryption keys under that version: in this process with the version's own
  AES-256-GCM key (the wrapped key is one of the engine's text tokens), or, for a provider whose
  root of trust is outside (Vault/OpenBao), with Transit ``encrypt``/``decrypt``;
- pyarrow does the rest as it always does: double wrapping (data keys wrapped locally by
  key-encryption keys, those wrapped by the KMS), cached for its ``cache_lifetime``.

Only the current key version wraps new keys; a version that is unknown (purged) unwraps nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..atomic_file import atomic_output
from ..errors import EngineError, InvalidArgument, InvalidArgumentType, InvalidTag
from ..formats.envelope import EncryptedData
from ..formats.wire import EnvelopeError
from ..keys.base import KeyVersionNotUsable
from ..locks import fork_safe_lock
from ..refusals import counts_refusals, metrics_of_service
from ..service import EncryptionService, get_encryption_service
from .parquet import ParquetLayout
from .parquet_footer import FooterCrypto, ParquetFooterError, chunk_encryption, read_footer_crypto

__all__ = ["KMS_INSTANCE_ID", "MASTER_KEY_PREFIX", "WRAP_CONTEXT", "EngineKmsClient",
           "KeyMaterial", "PmeFileKeys", "PmeFileUnreadable", "PmeKeys", "decrypt_parquet_file",
           "encrypt_parquet_file", "master_key_id", "master_key_version", "pme_key_info",
           "read_pme", "reencrypt_parquet_file", "source_encryption", "write_pme"]

MASTER_KEY_PREFIX = "engine-v"
KMS_INSTANCE_ID = "engine"
WRAP_CONTEXT = b"engine.pme.kek.v1\x00"
DEFAULT_CACHE_LIFETIME = 600.0
_MASTER_KEY = re.compile(r"engine-v([1-9][0-9]{0,9})")


class PmeFileUnreadable(EngineError):
    """A Parquet file pyarrow cannot read with the engine's keys: it does not parse, or a page
    or its metadata fails authentication (tampered, truncated)."""


def _pe() -> Any:
    try:
        import pyarrow.parquet.encryption as pe
    except ImportError:  # pyarrow built without Parquet encryption
        raise InvalidArgumentType("Parquet Modular Encryption needs pyarrow with Parquet "
                                  "encryption (the `arrow` extra)") from None
    return pe


def master_key_id(version: int) -> str:
    """The PME master key id of a key version: ``engine-v<version>``."""
    if type(version) is not int or not 1 <= version < 2**32:
        raise InvalidArgument("key versions are integers from 1 to 2**32 - 1")
    return f"{MASTER_KEY_PREFIX}{version}"


def master_key_version(master_key: str) -> int:
    """The key version a PME master key id names.

    Raises:
        InvalidArgument: not ``engine-v<version>``.
    """
    found = _MASTER_KEY.fullmatch(master_key) if isinstance(master_key, str) else None
    if found is None or int(found.group(1)) >= 2**32:
        raise InvalidArgument("a PME master key id of the engine is 'engine-v<key version>'")
    return int(found.group(1))


def wrapping_aad(master_key: str) -> bytes:
    """The associated data a key-encryption key is wrapped with: it binds the master key id."""
    return WRAP_CONTEXT + master_key.encode("ascii")


class EngineKmsClient(_pe().KmsClient):  # type: ignore[misc]  # pyarrow, loaded on use
    """pyarrow's ``KmsClient`` over the engine's key provider (see the module docstring). It
    keeps nothing but the service: key material is cached by pyarrow alone, for its
    ``cache_lifetime``."""

    def __init__(self, service: EncryptionService) -> None:
        super().__init__()
        self._service = service

    def __repr__(self) -> str:
        return f"<EngineKmsClient provider={self._service.provider!r}>"

    def __reduce__(self):
        raise TypeError("a KMS client holds the encryption service and cannot be pickled")

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        """Wraps a key under the (current) key version the master key id names.

        Raises:
            InvalidArgument: not an engine master key id.
            KeyVersionNotUsable: the version is not the current, active one.
        """
        version = master_key_version(master_key_identifier)
        provider = self._service.provider
        current = provider.get_current_key()
        if current.version != version:
            raise KeyVersionNotUsable(
                f"master key {master_key_identifier} names key version {version}, not the "
                f"current version {current.version}: only the current version wraps new keys")
        aad = wrapping_aad(master_key_identifier)
        wrapper = provider.key_wrapper()
        if wrapper is not None:
            return wrapper.wrap(bytes(key_bytes), aad)
        token = self._service.encrypt_token(bytes(key_bytes), aad)
        if EncryptedData.parse(token).key_version != version:
            raise KeyVersionNotUsable("the current key version changed while a PME key was "
                                      "wrapped; write the file again")
        return token

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        """Unwraps a key wrapped by :meth:`wrap_key`.

        Raises:
            InvalidArgument: not an engine master key id.
            UnknownKeyVersion: the version does not exist (purged).
            InvalidTag: the wrapped key is not authentic under that version.
            KeyProviderError: Vault refuses it.
        """
        version = master_key_version(master_key_identifier)
        provider = self._service.provider
        provider.get_key(version)  # a version that is gone unwraps nothing, whoever wraps
        aad = wrapping_aad(master_key_identifier)
        wrapper = provider.key_wrapper()
        if wrapper is not None:
            secret = wrapper.unwrap(wrapped_key, aad)
            try:
                return bytes(secret)
            finally:
                secret[:] = bytes(len(secret))
        try:
            named = EncryptedData.parse(wrapped_key).key_version
        except EnvelopeError:
            named = None
        if named != version:
            raise InvalidTag()
        return self._service.decrypt(wrapped_key, aad)


def _seconds(lifetime: float | datetime.timedelta) -> datetime.timedelta:
    if isinstance(lifetime, datetime.timedelta):
        return lifetime
    if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or lifetime < 0:
        raise InvalidArgument("cache_lifetime is a non-negative number of seconds")
    return datetime.timedelta(seconds=lifetime)


class PmeKeys:
    """The engine as the key manager of Parquet Modular Encryption: makes pyarrow's file
    encryption and decryption properties, whose keys are wrapped under the current key
    version by :class:`EngineKmsClient`.

    Args:
        service: default: the process-wide :func:`engine.get_encryption_service`.
        cache_lifetime: seconds (or a ``timedelta``) pyarrow keeps unwrapped key-encryption
            keys and its KMS clients; nothing is cached longer, and :meth:`forget` drops them.
    """

    __slots__ = ("_service", "_factory", "_connection", "_lifetime", "_cleared", "_lock")

    def __init__(self, service: EncryptionService | None = None, *,
                 cache_lifetime: float | datetime.timedelta = DEFAULT_CACHE_LIFETIME) -> None:
        pe = _pe()
        self._service = service or get_encryption_service()
        self._lifetime = _seconds(cache_lifetime)
        self._factory = pe.CryptoFactory(self._client)
        self._connection = pe.KmsConnectionConfig(kms_instance_id=KMS_INSTANCE_ID)
        self._cleared = time.monotonic()
        self._lock = fork_safe_lock()

    def _expire(self) -> None:
        """Empties pyarrow's caches once ``cache_lifetime`` has passed since they were last
        emptied. pyarrow's own expiry is not enough: an expired per-token cache is kept (its
        replacement is inserted under a key that is still there) until a periodic clean-up,
        so unwrapped keys outlive the lifetime, indefinitely for a lifetime of 0."""
        with self._lock:
            now = time.monotonic()
            if now - self._cleared >= self._lifetime.total_seconds():
                self._factory.remove_cache_entries_for_all_tokens()
                self._cleared = now

    def __repr__(self) -> str:
        return f"<PmeKeys provider={self._service.provider!r}>"

    def __reduce__(self):
        raise TypeError("PME keys hold the encryption service and cannot be pickled")

    def _client(self, config: Any) -> EngineKmsClient:
        return EngineKmsClient(self._service)

    def encryption_properties(self, *, columns: Sequence[str] | None = None,
                              plaintext_footer: bool = False, double_wrapping: bool = True,
                              data_key_bits: int = 256) -> Any:
        """pyarrow ``FileEncryptionProperties`` under the current key version.

        Args:
            columns: the columns to encrypt, each under a data key of its own (nested columns by
                their path, ``"a.b"``); None: every column and the footer under one key
                (uniform encryption, which DuckDB reads).
            plaintext_footer: leave the footer readable (signed, not encrypted), so that
                readers without keys see the schema and the plaintext columns (with
                ``columns`` named only: uniform encryption encrypts the footer).
            double_wrapping: wrap data keys with key-encryption keys that the KMS wraps (one
                KMS call per file and cache lifetime, not per column).
            data_key_bits: 128, 192 or 256.

        Raises:
            KeyVersionNotUsable: the current key version may not encrypt.
            InvalidArgument: an empty column list, a plaintext footer without columns, or a
                bad key size.
        """
        return self._encryption(columns, plaintext_footer, double_wrapping, data_key_bits)[0]

    def _encryption(self, columns: Sequence[str] | str | None, plaintext_footer: bool,
                    double_wrapping: bool = True, data_key_bits: int = 256) -> tuple[Any, int]:
        """(:meth:`encryption_properties`, the key version their keys are wrapped under)."""
        pe = _pe()
        self._expire()
        version = self._service.provider.get_current_key().version
        master = master_key_id(version)
        if data_key_bits not in (128, 192, 256):
            raise InvalidArgument("data_key_bits is 128, 192 or 256")
        options: dict[str, Any] = {
            "plaintext_footer": bool(plaintext_footer), "double_wrapping": bool(double_wrapping),
            "cache_lifetime": self._lifetime, "internal_key_material": True,
            "data_key_length_bits": data_key_bits, "encryption_algorithm": "AES_GCM_V1"}
        if columns is None:
            if plaintext_footer:  # pyarrow would encrypt the footer all the same
                raise InvalidArgument("a plaintext footer needs the columns to encrypt named: "
                                      "uniform encryption encrypts the footer too")
            config = pe.EncryptionConfiguration(footer_key=master, uniform_encryption=True,
                                                **options)
        else:
            config = pe.EncryptionConfiguration(
                footer_key=master, column_keys={master: _checked_columns(columns)}, **options)
        return self._factory.file_encryption_properties(self._connection, config), version

    def decryption_properties(self) -> Any:
        """pyarrow ``FileDecryptionProperties`` that unwrap keys with the engine's provider."""
        pe = _pe()
        self._expire()
        return self._factory.file_decryption_properties(
            self._connection, pe.DecryptionConfiguration(cache_lifetime=self._lifetime))

    def forget(self) -> None:
        """Drops every key and client pyarrow has cached for these properties."""
        with self._lock:
            self._factory.remove_cache_entries_for_all_tokens()
            self._cleared = time.monotonic()


def _metrics_of(*_args: Any, keys: PmeKeys | None = None,
                service: EncryptionService | None = None, **_kwargs: Any) -> Any:
    return metrics_of_service(keys._service if keys is not None else service)


def _counted(func: Any) -> Any:
    """Counts an error of a public call once as a refusal (engine.refusals): a file that is
    not Parquet or does not authenticate as ``malformed``."""
    return counts_refusals(_metrics_of, kinds=((PmeFileUnreadable, "malformed"),
                                               (ParquetFooterError, "malformed")))(func)


def _keys(keys: PmeKeys | None, service: EncryptionService | None) -> PmeKeys:
    if keys is not None and service is not None:
        raise InvalidArgument("give keys or service, not both")
    return keys if keys is not None else PmeKeys(service)


@_counted
def write_pme(table: Any, where: str | os.PathLike, *, columns: Sequence[str] | None = None,
              plaintext_footer: bool = False, keys: PmeKeys | None = None,
              service: EncryptionService | None = None, **write_options: Any) -> None:
    """Writes a pyarrow table as a PME Parquet file under the current key version; the file
    appears only once complete.

    Args:
        columns, plaintext_footer: see :meth:`PmeKeys.encryption_properties`.
        keys: the :class:`PmeKeys` to use (default: new ones over ``service``).
        write_options: passed to ``pyarrow.parquet.write_table`` (compression, row groups...).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if columns is not None:  # the leaf paths the table will have, from an empty file of it
        empty = pa.BufferOutputStream()
        pq.write_table(table.schema.empty_table(), empty, **write_options)
        _checked_columns(columns, _leaf_paths(pq.read_metadata(pa.BufferReader(empty.getvalue()))))
    props = _keys(keys, service).encryption_properties(columns=columns,
                                                       plaintext_footer=plaintext_footer)
    with atomic_output(os.fspath(where)) as out:
        pq.write_table(table, out, encryption_properties=props, **write_options)


@_counted
def read_pme(source: Any, *, columns: Sequence[str] | None = None, keys: PmeKeys | None = None,
             service: EncryptionService | None = None, **read_options: Any) -> Any:
    """Reads a PME Parquet file (or any Parquet file) with the engine's keys.

    Raises:
        UnknownKeyVersion: the file names a key version the provider does not have.
        InvalidTag, KeyProviderError: a wrapped key is not authentic.
        OSError: pyarrow cannot read the file (a page fails authentication, for one).
    """
    import pyarrow.parquet as pq

    return pq.read_table(source, columns=None if columns is None else list(columns),
                         decryption_properties=_keys(keys, service).decryption_properties(),
                         **read_options)


def _unreadable(path: str, exc: BaseException) -> PmeFileUnreadable:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return PmeFileUnreadable(f"{path} cannot be read as (PME) Parquet: {first}")


def _open_source(src: str, keys: PmeKeys) -> tuple[Any, Any]:
    """(footer crypto, ``pyarrow.parquet.ParquetFile``) of a plain or PME file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    crypto = read_footer_crypto(src)
    try:
        reader = pq.ParquetFile(src, decryption_properties=keys.decryption_properties()
                                if crypto.encrypted else None)
    except (pa.ArrowException, OSError) as exc:
        if isinstance(exc, EngineError):
            raise
        raise _unreadable(src, exc) from None
    return crypto, reader


def _leaf_paths(metadata: Any) -> list[str]:
    schema = metadata.schema
    return [schema.column(i).path for i in range(len(schema))]


def _checked_columns(columns: Sequence[str] | str | None,
                     leaves: Sequence[str] | None = None) -> Any:
    """The columns to encrypt, each a leaf path or a name above leaves (``"nested"`` for every
    leaf below it, as pyarrow takes it); checked against ``leaves`` when given.

    Raises:
        InvalidArgument: an empty list, or a name that is no column of the file.
    """
    if columns is None:
        return None
    names = [columns] if isinstance(columns, str) else list(columns)
    if not names or not all(isinstance(c, str) and c for c in names):
        raise InvalidArgument("name at least one column to encrypt (or None for all)")
    for name in names:
        if leaves is not None and not any(leaf == name or leaf.startswith(name + ".")
                                           for leaf in leaves):
            raise InvalidArgument(f"the file has no column {name!r}; its columns: "
                                  + ", ".join(leaves))
    return names


@_counted
def source_encryption(path: str | os.PathLike, *, keys: PmeKeys | None = None,
                      service: EncryptionService | None = None) -> tuple[list[str] | None, bool]:
    """How a Parquet file is encrypted, as a rewrite of it encrypts it: (the columns under
    column keys, every leaf by its path, or None for uniform encryption; whether the footer is
    plaintext). ``([], False)`` for a plain file. The column chunks' crypto metadata is read
    from the footer, decrypted with the keys when it is encrypted. A column under the footer
    key in a file that is not uniform (a writer other than pyarrow's key tools) gets a column
    key of its own: a rewrite never encrypts less.

    Raises:
        ParquetFooterError, PmeFileUnreadable: not Parquet, or not readable with the keys.
    """
    crypto, reader = _open_source(os.fspath(path), _keys(keys, service))
    return _source_encryption(reader, crypto)


def _source_encryption(reader: Any, crypto: FooterCrypto) -> tuple[list[str] | None, bool]:
    import pyarrow as pa

    if not crypto.encrypted:
        return [], False
    if crypto.encrypted_footer:
        sink = pa.BufferOutputStream()
        reader.metadata.write_metadata_file(sink)
        kinds = chunk_encryption(sink.getvalue().to_pybytes())
    else:
        kinds = list(crypto.chunk_encryption)
    leaves = _leaf_paths(reader.metadata)
    if not kinds or all(kind == "footer" for kind in kinds):
        return None, not crypto.encrypted_footer
    return ([leaf for leaf, kind in zip(leaves, kinds) if kind is not None],
            not crypto.encrypted_footer)


def _rewrite(src: str, dst: Any, keys: PmeKeys, columns: Any, plaintext_footer: Any,
             operation: str, before_commit: Any = None) -> dict[str, Any]:
    """Rewrites ``src`` as ``dst``: decrypted (``columns`` is ``()``), encrypted as asked, or
    (``columns`` is ``...``) encrypted as ``src`` was, under the current key version. ``dst``
    is a path (written atomically) or a writable binary file (the caller's to commit)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = time.perf_counter()
    crypto, reader = _open_source(src, keys)
    if columns is ...:
        columns, plaintext_footer = _source_encryption(reader, crypto)
    else:
        columns = _checked_columns(columns, _leaf_paths(reader.metadata)) \
            if columns != () else []
    props, version = None, None
    if columns != []:
        props, version = keys._encryption(columns, plaintext_footer)
    layout = ParquetLayout.of(reader.metadata)
    rows = 0
    given = hasattr(dst, "write")
    with contextlib.nullcontext(dst) if given else \
            atomic_output(os.fspath(dst), before_commit=before_commit) as out:
        writer = pq.ParquetWriter(out, reader.schema_arrow, encryption_properties=props,
                                  **layout.writer_options())
        try:
            for i, count in enumerate(layout.row_groups):  # one row group in memory at a time
                try:
                    group = reader.read_row_group(i)
                except (pa.ArrowException, OSError) as exc:
                    if isinstance(exc, EngineError):
                        raise
                    raise _unreadable(src, exc) from None
                writer.write_table(group, row_group_size=max(count, 1))
                rows += count
        finally:
            writer.close()
        written = out.tell()
    return {"operation": operation, "format": "parquet-pme", "rows": rows,
            "row_groups": len(layout.row_groups), "key_version": version,
            "columns": columns, "plaintext_footer": bool(plaintext_footer) if props else None,
            "bytes_in": os.path.getsize(src), "bytes_out": written,
            "seconds": time.perf_counter() - start}


@_counted
def encrypt_parquet_file(src: str | os.PathLike, dst: str | os.PathLike, *,
                         columns: Sequence[str] | None = None, plaintext_footer: bool = False,
                         keys: PmeKeys | None = None, service: EncryptionService | None = None,
                         before_commit: Any = None) -> dict[str, Any]:
    """Rewrites a Parquet file as PME under the current key version, keeping its layout: row
    groups, each column's codec, dictionary encoding, statistics and value encoding, sort order,
    page index and key-value metadata. A source that is already PME is read with the engine's
    keys (so this also moves a PME file to the current version). ``dst`` appears only once
    complete.

    Args:
        columns: leaf paths (``"a.b"``) or names above leaves (``"a"``: every leaf below);
            None: every column and the footer under one key.
        before_commit: see :func:`engine.atomic_file.atomic_output`.

    Returns:
        A report: rows, row groups, key version, columns (None: all), plaintext footer,
        bytes in and out, seconds.

    Raises:
        InvalidArgument: a column the file does not have.
        ParquetFooterError: ``src`` is not Parquet.
        PmeFileUnreadable: ``src`` does not parse, or (PME) fails authentication.
        What :func:`read_pme` and :meth:`PmeKeys.encryption_properties` raise.
    """
    return _rewrite(os.fspath(src), dst, _keys(keys, service), columns,
                    plaintext_footer, "encrypt-pme", before_commit)


@_counted
def reencrypt_parquet_file(src: str | os.PathLike, dst: Any, *,
                           keys: PmeKeys | None = None, service: EncryptionService | None = None,
                           before_commit: Any = None) -> dict[str, Any]:
    """Rewrites a PME file under the current key version, encrypted as it was (the same columns
    under column keys, or uniformly; the same footer mode; see :func:`source_encryption`),
    keeping its layout (see :func:`encrypt_parquet_file`). ``dst`` is a path, written
    atomically, or a writable binary file that the caller commits."""
    return _rewrite(os.fspath(src), dst, _keys(keys, service), ..., False,
                    "reencrypt-pme", before_commit)


@_counted
def decrypt_parquet_file(src: str | os.PathLike, dst: str | os.PathLike, *,
                         keys: PmeKeys | None = None, service: EncryptionService | None = None,
                         before_commit: Any = None) -> dict[str, Any]:
    """Rewrites a PME Parquet file as plain Parquet, keeping its layout (see
    :func:`encrypt_parquet_file`); ``dst`` appears only if every page authenticated."""
    return _rewrite(os.fspath(src), dst, _keys(keys, service), (), False,
                    "decrypt-pme", before_commit)


# ---------------------------------------------------------------- key material, for inventory


@dataclass(frozen=True)
class KeyMaterial:
    """What PME key metadata says (pyarrow's internal key material, ``PKMT1``).

    Attributes:
        master_key_id: the master key that wraps the key (None if the metadata is not internal
            key material: external storage, or another writer's format).
        key_version: the engine key version it names, or None when it is not an engine id.
        kms_instance_id: the KMS instance recorded by the writer.
        double_wrapping: whether a key-encryption key sits between master key and data key.
    """

    master_key_id: str | None
    key_version: int | None
    kms_instance_id: str | None
    double_wrapping: bool | None


def _key_material(metadata: bytes | None) -> KeyMaterial | None:
    if metadata is None:
        return None
    try:
        doc = json.loads(metadata)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("masterKeyID"), str):
        return KeyMaterial(None, None, None, None)
    master = doc["masterKeyID"]
    try:
        version: int | None = master_key_version(master)
    except InvalidArgument:
        version = None
    instance = doc.get("kmsInstanceID")
    double = doc.get("doubleWrapping")
    return KeyMaterial(master, version, instance if isinstance(instance, str) else None,
                       double if isinstance(double, bool) else None)


@dataclass(frozen=True)
class PmeFileKeys:
    """The keys a Parquet file names, read from its footer without any key.

    Attributes:
        encrypted: whether the file uses PME.
        encrypted_footer: the footer is encrypted (only the footer key's material is visible).
        algorithm: ``AES_GCM_V1`` or ``AES_GCM_CTR_V1``.
        footer: the footer key's material.
        columns: column path -> key material (visible with a plaintext footer).
    """

    encrypted: bool
    encrypted_footer: bool
    algorithm: str | None
    footer: KeyMaterial | None
    columns: dict[str, KeyMaterial] = field(default_factory=dict)

    @property
    def versions(self) -> set[int]:
        """The engine key versions named by the visible key material."""
        found = [self.footer, *self.columns.values()]
        return {m.key_version for m in found if m is not None and m.key_version is not None}


def pme_key_info(path: str | os.PathLike) -> PmeFileKeys:
    """Which master keys (key versions) a Parquet file names, from its key material alone:
    no key is unwrapped and nothing is decrypted (for ``inventory``).

    Raises:
        ParquetFooterError: not a Parquet file, or a footer that does not parse.
        OSError: the file cannot be read.
    """
    crypto = read_footer_crypto(path)
    columns = {name: _key_material(meta) for name, meta in crypto.column_key_metadata.items()}
    return PmeFileKeys(crypto.encrypted, crypto.encrypted_footer, crypto.algorithm,
                       _key_material(crypto.footer_key_metadata),
                       {k: v for k, v in columns.items() if v is not None})
