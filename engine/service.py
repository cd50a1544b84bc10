"""The application-facing encryption service (``EncryptionService``).

Single values use :meth:`engine.AesGcm.encrypt` with a fresh 16-byte IV; batches go through the
native batch path in one call per key version, and their tokens are packed and parsed in bulk
(:mod:`engine.formats`). Decryption always takes the key version recorded in the ciphertext, so
data written under any retained version decrypts after the current version has moved on. A key
version made for XAES-256-GCM writes tokens of formats 3 and 4 (24-byte nonces) and is never
refused for usage; a token whose format names another algorithm than its key version's fails
authentication.
"""

from __future__ import annotations

import enum
import os
import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, NoReturn, overload

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from .audit import AuditLog
    from .metrics import EngineMetrics

from .aead import random_bytes, text_token_header
from .batch import Batch, as_batch
from .buffers import empty_bytes, is_arrow, offsets_of
from .codecs import batch_to_text, interleave
from .errors import BatchInvalidTag, EngineError, InvalidArgument, InvalidArgumentType, InvalidTag
from .formats.envelope import EncryptedData
from .formats.stored import VALUE_JSON, StoredValues, format_stored_values, parse_stored_values
from .formats.tokens import (
    TokenHeaders,
    as_binary_tokens,
    encode_text_tokens,
    parse_headers,
    text_tokens_batch,
)
from .formats.wire import (
    BOUND_FORMATS,
    FORMAT_ALGORITHMS,
    FORMAT_IV_BYTES,
    FORMAT_OVERHEAD,
    FORMATS,
    HEADER_BYTES,
    MAGIC,
    TEXT_PREFIX_BYTES,
    token_format,
    token_header,
)
from .keys.base import (
    GCM_RANDOM_IV_LIMIT,
    KeyProvider,
    KeyProviderError,
    KeyUsageExhausted,
    UnknownKeyVersion,
    VersionedKey,
)
from .locks import fork_safe_lock
from .records import NONE_VALUES, OTHER_VALUES, value_kinds
from .refusals import count_refusal, counts_refusals
from .settings import env_flag

__all__ = [
    "EncryptionService",
    "Reencrypted",
    "ServiceConfigurationError",
    "ValueStatus",
    "get_encryption_service",
    "reset_encryption_service",
]

VAULT_ENABLED_ENV = "VAULT_ENABLED"


class ServiceConfigurationError(EngineError, RuntimeError):
    """The environment asks for a configuration the service cannot provide."""


def _checked_value(data: Any, name: str) -> Any:
    """``data`` if it is a value the service encrypts: str, or a buffer of bytes (bytes,
    bytearray, memoryview, a uint8 array). Numbers are refused, numpy scalars included: their
    buffer holds machine bytes, not the value.

    Raises:
        InvalidArgumentType: anything else.
    """
    if type(data) is str or type(data) is bytes or isinstance(data, (str, bytes, bytearray)):
        return data
    try:
        itemsize = memoryview(data).itemsize
    except TypeError:
        itemsize = 0
    if itemsize != 1 or isinstance(data, np.generic):
        raise InvalidArgumentType(
            f"{name} must be str or bytes-like (bytes, bytearray, a uint8 buffer), "
            f"not {type(data).__name__}"
        )
    return data


def _data_bytes(data: Any, name: str = "data") -> bytes:
    """A value as the bytes that are encrypted (str as UTF-8).

    Raises:
        InvalidArgumentType: not a str or bytes-like value.
        InvalidArgument: a str that UTF-8 cannot encode (the message shows no text).
    """
    data = _checked_value(data, name)
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return bytes(Batch.from_list([data]).data)
    return memoryview(data).tobytes()


def _utf8(plain: bytes) -> str:
    """Plaintext as text. The error carries no trace of the plaintext: a UnicodeDecodeError
    holds the whole buffer (``.object``), so it must not become the new error's context."""
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        pass
    raise InvalidArgument("decrypted data is not valid UTF-8 text")


def _aad_bytes(aad: Any) -> bytes:
    return b"" if aad is None else _data_bytes(aad, "aad")


_BOUND_HEADERS: dict[tuple[int, str], bytes] = {}


def _bound_header(key: VersionedKey) -> bytes:
    """The header-bound token header (format 1, or 3 for XAES-256-GCM) of a key version (made
    once per version)."""
    version_algorithm = (key.version, key.cipher.ALGORITHM)
    header = _BOUND_HEADERS.get(version_algorithm)
    if header is None:
        header = _BOUND_HEADERS[version_algorithm] = token_header(key.version, token_format(key.algorithm))
    return header


def _is_per_record(aad: Any) -> bool:
    return isinstance(aad, (list, tuple, Batch)) or is_arrow(aad)


def _aad_batch(aad: Any, n: int) -> Batch:
    batch = Batch.from_list(list(aad)) if isinstance(aad, tuple) else as_batch(aad, "aad")
    if len(batch) != n:
        raise InvalidArgument(f"aad has {len(batch)} values for {n} records")
    return batch


def _values_batch(values: Any) -> Batch:
    if isinstance(values, (str, bytes)):
        raise InvalidArgumentType("encrypt_many takes a list of values, not one value")
    if isinstance(values, tuple):
        values = list(values)
    return as_batch(values, "values")


def _caller_aad(aad: Any, n: int) -> Any:
    """The caller's AAD for n records: None, one bytes value, or a Batch of n values."""
    if aad is None:
        return None
    return _aad_batch(aad, n) if _is_per_record(aad) else _aad_bytes(aad)


_MIN_LEASE = 1024
_METERS: "weakref.WeakSet[_UsageMeter]" = weakref.WeakSet()


class _UsageMeter:
    """Counts encryptions per key version against the limit of its algorithm (for AES-256-GCM
    2**32, NIST SP 800-38D 8.3, for one key with random IVs; none for XAES-256-GCM), cheaply:
    encryptions are reserved from the provider's shared count in leases (one persisted write per
    lease, not per call), starting at 1,024 and each twice the last reservation, up to
    ``max_lease``, while a process keeps encrypting. What a lease did not use is given back
    when the service is collected or the process exits, so short-lived processes count exactly;
    a process killed outright over-counts by at most its last lease (the safe side). A forked
    child starts with nothing reserved. At the limit, encrypting under the version is refused
    (:class:`~engine.keys.KeyUsageExhausted`)."""

    __slots__ = ("_provider", "_max_lease", "_left", "_lease", "_lock", "__weakref__")

    def __init__(self, provider: KeyProvider, max_lease: int) -> None:
        self._provider = provider
        self._max_lease = max(max_lease, 1)
        self._left: dict[int, int] = {}  # version -> reserved and not used yet
        self._lease: dict[int, int] = {}  # version -> size of the next lease
        self._lock = fork_safe_lock()
        _METERS.add(self)
        weakref.finalize(self, _give_back, provider, self._left)

    def add(self, version: int, count: int, limit: int | None = GCM_RANDOM_IV_LIMIT) -> None:
        with self._lock:
            left = self._left.get(version, 0)
            if count > left:
                need = count - left
                lease = self._lease.get(version, min(_MIN_LEASE, self._max_lease))
                want = max(need, lease)
                try:
                    self._provider.record_usage(version, want, limit=limit)
                except KeyUsageExhausted:
                    if want == need:
                        raise
                    self._provider.record_usage(version, need, limit=limit)
                    want = need
                left += want
                self._lease[version] = min(want * 2, self._max_lease)
            self._left[version] = left - count

    def _forget(self) -> None:
        """In a forked child: the parent's reservations are the parent's."""
        self._left.clear()
        self._lease.clear()


def _give_back(provider: KeyProvider, left: dict[int, int]) -> None:
    for version, unused in list(left.items()):
        if unused > 0:
            try:
                provider.record_usage(version, -unused)
            except Exception:  # noqa: BLE001 - at exit, an over-count is the safe outcome
                continue
            left[version] = 0


def _forget_reservations_in_child() -> None:
    for meter in list(_METERS):
        meter._forget()


os.register_at_fork(after_in_child=_forget_reservations_in_child)


def _default_metrics() -> Any:
    from .metrics import get_metrics

    return get_metrics()


# Every error a public method raises is counted once in engine_encryption_errors_total.
_counted = counts_refusals(lambda self, *args, **kwargs: self._metrics)


class EncryptionService:
    """Encrypts and decrypts values and batches with versioned keys from a provider.

    Args:
        provider: a :class:`~engine.keys.KeyProvider`; default: from the environment
            (see :func:`get_encryption_service`).
        threads: threads for batch calls (None: all cores).

        metrics: an :class:`engine.metrics.EngineMetrics` (default: the process-wide one, in
            prometheus_client's default registry); ``False`` turns counting off.
        audit: an :class:`engine.audit.AuditLog`: one ``KEY_ACCESS`` entry per call (per
            batch, not per record).
        usage_lease: the largest number of encryptions reserved from the provider's shared
            usage count at a time (leases start at 1,024 and double up to this: a persisted write
            per lease, unused reservations given back at exit; see :class:`_UsageMeter`).

    Thread-safe: the provider, the metrics, the audit log and the usage meter are.
    """

    __slots__ = ("_provider", "_threads", "_metrics", "_audit", "_usage")

    def __init__(self, provider: KeyProvider | None = None, *, threads: int | None = None,
                 metrics: Any = None, audit: Any = None, usage_lease: int = 1 << 24) -> None:
        self._provider = provider if provider is not None else _provider_from_environment()
        self._threads = threads
        self._metrics = _default_metrics() if metrics is None else (metrics or None)
        self._audit = audit
        self._usage = _UsageMeter(self._provider, usage_lease)
        if self._metrics is not None:
            self._metrics.watch_keys(self._provider)

    def _used(self, version: int, operation: str, records: int,
              limit: int | None = GCM_RANDOM_IV_LIMIT) -> None:
        """Accounting for one call: usage (encryptions, against ``limit``), metrics, one audit
        entry per call."""
        if operation == "encrypt":
            self._usage.add(version, records, limit)
            if self._metrics is not None:
                self._metrics.encrypted(records)
        elif self._metrics is not None:
            self._metrics.decrypted(records)
        if self._audit is not None:
            self._audit.key_access(version, operation, records)

    def _failed(self, error_type: str, count: int = 1) -> None:
        if self._metrics is not None:
            self._metrics.error(error_type, count)

    def __repr__(self) -> str:
        return f"<EncryptionService provider={self._provider!r}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("the encryption service holds keys and cannot be pickled")

    @property
    def provider(self) -> KeyProvider:
        """The key provider."""
        return self._provider

    @property
    def audit(self) -> AuditLog | None:
        """The audit log, or None."""
        return self._audit

    @property
    def metrics(self) -> EngineMetrics | None:
        """The metrics, or None when counting is off."""
        return self._metrics

    def _encryption_key(self) -> VersionedKey:
        return self._provider.get_current_key()  # active, or the provider raises

    # ---- single values ----
    # These count their refusals in a try of their own, not through @_counted: its wrapper
    # (a call with *args, **kwargs) costs about 150 ns, 5% of a call on this path.

    def encrypt(self, data: str | bytes, aad: str | bytes | None = None) -> EncryptedData:
        """Encrypts one value in the JSON envelope's shape (AAD = the caller's only).

        Args:
            data: str (as UTF-8) or bytes-like.
            aad: optional associated data (str or bytes) that decryption must repeat.

        Returns:
            An :class:`~engine.formats.envelope.EncryptedData` with a fresh 16-byte IV (24 bytes under
            an XAES-256-GCM key version) and the time.

        Raises:
            KeyVersionNotUsable: the current key version may not encrypt.
            InvalidArgumentType: ``data`` is neither str nor bytes-like.
        """
        try:
            key = self._encryption_key()
            iv = random_bytes(key.cipher.NONCE_SIZE)
            sealed = key.cipher.encrypt(iv, _data_bytes(data),
                                        None if aad is None else _aad_bytes(aad))
            self._used(key.version, "encrypt", 1, key.usage_limit)
        except Exception as exc:
            count_refusal(self._metrics, exc)
            raise
        return EncryptedData(iv, sealed[:-16], sealed[-16:], key.version,
                             datetime.now(timezone.utc), algorithm=key.algorithm)

    def encrypt_token(self, data: str | bytes, aad: str | bytes | None = None) -> str:
        """Encrypts one value as a text token (format 1, or 3 under an XAES-256-GCM key version:
        the header is bound into the AAD), in one native call.

        Raises:
            KeyVersionNotUsable: the current key version may not encrypt.
            KeyUsageExhausted: the current version has done 2**32 encryptions.
            InvalidArgumentType: ``data`` or ``aad`` is neither str nor bytes-like.
        """
        try:
            if type(data) is not str and type(data) is not bytes:
                _checked_value(data, "data")
            if aad is not None and type(aad) is not str and type(aad) is not bytes:
                _checked_value(aad, "aad")
            key = self._encryption_key()
            token = key.cipher.seal_text_token(_bound_header(key), data, aad,
                                               prefix=TEXT_PREFIX_BYTES)
            self._used(key.version, "encrypt", 1, key.usage_limit)
        except Exception as exc:
            count_refusal(self._metrics, exc)
            raise
        return token

    def decrypt(self, encrypted: Any, aad: str | bytes | None = None) -> bytes:
        """Decrypts an :class:`EncryptedData`, its dict or JSON form (str or bytes), or a token.

        Returns:
            The plaintext bytes.

        Raises:
            EnvelopeError: the value cannot be parsed (subclasses name the problem).
            UnknownKeyVersion: the provider has no key of the recorded version.
            InvalidTag: wrong key, AAD or tampered data (or a format of another algorithm than
                the key version's); nothing is returned.
        """
        try:
            return self._open_one(encrypted, aad, False)
        except Exception as exc:
            count_refusal(self._metrics, exc)
            raise

    def _open_one(self, encrypted: Any, aad: Any, text: bool) -> Any:
        if aad is not None and type(aad) is not str and type(aad) is not bytes:
            _checked_value(aad, "aad")
        if type(encrypted) is str:  # a text token, the common case: one native call
            head = text_token_header(encrypted, TEXT_PREFIX_BYTES, HEADER_BYTES)
            if head is not None and head[0] == MAGIC and head[1] in FORMATS:
                version = int.from_bytes(head[2:], "big")
                if version:
                    key = self._provider.get_key(version)
                    self._check_algorithm(key, FORMAT_ALGORITHMS[head[1]])
                    plain = key.cipher.open_text_token(encrypted, HEADER_BYTES, aad,
                                                       head[1] in BOUND_FORMATS,
                                                       TEXT_PREFIX_BYTES, text)
                    if plain is not None:
                        if self._metrics is not None:
                            self._metrics.decrypted(1)
                        if self._audit is not None:
                            self._audit.key_access(version, "decrypt", 1)
                        return plain
        e = EncryptedData.parse(encrypted)  # raises the precise envelope error
        key = self._key_for(e.key_version)
        self._check_algorithm(key, e.algorithm)
        plain = key.cipher.decrypt(e.iv, e.ciphertext + e.auth_tag,
                                   e.aad(None if aad is None else _aad_bytes(aad)))
        self._used(key.version, "decrypt", 1)
        return _utf8(plain) if text else plain

    def _check_algorithm(self, key: VersionedKey, algorithm: str) -> None:
        """A value sealed with another algorithm than its key version's cannot be authentic.

        Raises:
            InvalidTag: the algorithms differ.
        """
        if key.algorithm != algorithm:
            raise InvalidTag()

    def _key_for(self, version: int) -> VersionedKey:
        return self._provider.get_key(version)

    def decrypt_text(self, encrypted: Any, aad: str | bytes | None = None) -> str:
        """Like :meth:`decrypt`, decoding the plaintext as UTF-8.

        Raises:
            InvalidArgument: the plaintext is not UTF-8 (and everything :meth:`decrypt` raises).
        """
        try:
            return self._open_one(encrypted, aad, True)
        except Exception as exc:
            count_refusal(self._metrics, exc)
            raise

    # ---- keys for formats that seal and open with them (engine.columns) ----

    def sealing_key(self, records: int) -> VersionedKey:
        """The current key version, with ``records`` encryptions counted against it (usage,
        metrics, one audit entry), for a format outside this module that seals them itself in
        one batch call (:mod:`engine.columns`). The key is for that call only: keep it no longer.

        Raises:
            KeyVersionNotUsable: the current key version may not encrypt.
            KeyUsageExhausted: the records would pass the version's usage limit.
        """
        key = self._encryption_key()
        self._used(key.version, "encrypt", records, key.usage_limit)
        return key

    def opening_key(self, version: int) -> VersionedKey:
        """The key of ``version``, for a format outside this module that opens values itself;
        report the outcome with :meth:`count_opened` and :meth:`count_failed`.

        Raises:
            UnknownKeyVersion: the provider has no such version (counted as a failure).
        """
        return self._key_for(version)

    def count_opened(self, version: int, records: int) -> None:
        """Counts ``records`` decryptions under ``version`` (metrics, one audit entry)."""
        self._used(version, "decrypt", records)

    def count_failed(self, records: int) -> None:
        """Counts ``records`` values that failed authentication (metrics)."""
        self._failed("invalid_tag", records)

    # ---- batches ----

    @overload
    def encrypt_many(self, values: Any, aad: Any = None, *, binary: Literal[False] = False,
                     arrow: Literal[False] = False) -> list[str]: ...
    @overload
    def encrypt_many(self, values: Any, aad: Any = None, *, binary: Literal[True],
                     arrow: bool = False) -> Batch: ...
    @overload
    def encrypt_many(self, values: Any, aad: Any = None, *, binary: Literal[False] = False,
                     arrow: Literal[True]) -> pa.Array: ...
    @overload
    def encrypt_many(self, values: Any, aad: Any = None, *, binary: bool = False,
                     arrow: bool = False) -> list[str] | Batch | pa.Array: ...
    @_counted
    def encrypt_many(self, values: Any, aad: Any = None, *, binary: bool = False,
                     arrow: bool = False) -> list[str] | Batch | pa.Array:
        """Encrypts many values in one native batch call under the current key (one lookup).

        Args:
            values: a list of str/bytes, an :class:`~engine.Batch` or a pyarrow column.
            aad: None, one str/bytes for all, or one per value (a list or a Batch).
            binary: False (default): return ``list[str]`` of text tokens; True: return an
                :class:`~engine.Batch` of binary tokens (for bytea/BLOB/Parquet columns).
            arrow: return the text tokens as a pyarrow ``large_string`` array (no Python
                object per token).

        Returns:
            Tokens in the order of ``values`` (format 1, or 3 under an XAES-256-GCM key
            version: header bound into the AAD).

        Raises:
            KeyVersionNotUsable: the current key version may not encrypt.
            InvalidArgument: ``aad`` does not have one value per record.
        """
        batch = _values_batch(values)
        key = self._encryption_key()
        tokens = key.cipher.seal_tokens(batch, _bound_header(key), _caller_aad(aad, len(batch)),
                                        threads=self._threads)
        assert tokens is not None  # no out=: a new Batch
        self._used(key.version, "encrypt", len(batch), key.usage_limit)
        if binary:
            return tokens
        if arrow:
            return text_tokens_batch(tokens, threads=self._threads).to_arrow(text=True)
        return encode_text_tokens(tokens, threads=self._threads)

    @_counted
    def decrypt_many(self, tokens: Any, aad: Any = None) -> Batch:
        """Decrypts many tokens: grouped by key version (vectorized), one native pass per group.

        Args:
            tokens: text tokens (list of str, or a Batch/column of them) or binary tokens.
            aad: None, one value for all, or one per token.

        Returns:
            An :class:`~engine.Batch` of plaintexts in the order of ``tokens``.

        Raises:
            EnvelopeError: a token cannot be parsed (the message gives its index).
            UnknownKeyVersion: a token names a version the provider does not have.
            BatchInvalidTag: some tokens failed authentication (a format of another algorithm
                than the token's key version included); ``.failed`` lists their indices and
                ``.result`` is None: nothing is returned.
        """
        tokens = as_binary_tokens(tokens)
        headers = parse_headers(tokens)
        n = len(tokens)
        caller_aad = _caller_aad(aad, n)
        off = offsets_of(tokens.lengths() - FORMAT_OVERHEAD[headers.formats])
        out = empty_bytes(int(off[-1]), secret=True)
        groups = headers.groups()
        keys = {version: self._key_for(version) for version, _, _ in groups}  # known, or raise
        failed: list[np.ndarray] = []
        for version, fmt, idx in groups:
            key = keys[version]
            if key.algorithm != FORMAT_ALGORITHMS[fmt]:
                failed.append(np.arange(n) if idx is None else idx)
                continue
            sub, starts, sub_aad = tokens, off[:-1], caller_aad
            if idx is not None:
                sub, starts = tokens.take(idx), starts[idx]
                if isinstance(caller_aad, Batch):
                    sub_aad = caller_aad.take(idx)
            try:
                key.cipher.open_tokens(sub, HEADER_BYTES, sub_aad,
                                           bind_header=fmt in BOUND_FORMATS,
                                           nonce_size=int(FORMAT_IV_BYTES[fmt]), out=out,
                                           out_starts=starts, threads=self._threads)
            except BatchInvalidTag as exc:
                failed.append(exc.failed if idx is None else idx[exc.failed])
            else:
                self._used(version, "decrypt", len(sub))
        if failed:
            out.fill(0)
            bad = np.sort(np.concatenate(failed))
            raise BatchInvalidTag(bad, None)
        return Batch._trusted(out, off)

    @_counted
    def decrypt_many_text(self, tokens: Any, aad: Any = None) -> list[str]:
        """Like :meth:`decrypt_many`, returning ``list[str]`` (UTF-8), built without a
        per-record loop.

        Raises:
            InvalidArgument: a plaintext is not UTF-8 (and everything :meth:`decrypt_many` raises).
        """
        return batch_to_text(self.decrypt_many(tokens, aad))

    # ---- re-encryption ----

    @_counted
    def reencrypt_many(self, values: Any, aad: Any = None, *, check_only: bool = False,
                       threads: int | None = None,
                       plaintext: Callable[[np.ndarray, Batch], None] | None = None
                       ) -> "Reencrypted":
        """Moves stored values to the current key version, each in the shape it was stored in.

        Values are read in bulk (:func:`engine.formats.stored.parse_stored_values`), grouped by key
        version and token format, opened with one native pass per group and sealed again under
        the current version with one native pass per format: no per-value Python loop. Binary
        and text tokens keep their kind and format byte; JSON values are written back in the
        JSON envelope with a new IV and timestamp, and keep the members the application
        stored beside the engine's (:mod:`engine.formats.json_extras`). The caller's AAD is the same before and
        after (a format-1 token's header, which names the version, changes with it).

        Args:
            values: the stored values: a list of str/bytes/None, a pyarrow string or binary
                column (nulls allowed) or an :class:`~engine.Batch`.
            aad: None, one str/bytes for every value, or one per value (a list, a Batch or a
                pyarrow column), exactly as the values were encrypted with.
            check_only: open every readable value (those already current too) and seal
                nothing: for an inventory.
            threads: native threads for this call (default: the service's); a worker process
                that shares the machine with others asks for fewer.
            plaintext: called once, before anything is sealed, as ``plaintext(positions,
                plain)``: the positions of the values opened (ascending) and their plaintexts.
                ``plain`` is wiped when the call returns: copy what must outlive it. The
                re-encryption pipeline computes blind indexes from it.

        Returns:
            A :class:`Reencrypted`: the values to store, a :class:`ValueStatus` and the key
            version found for each. A value that cannot be opened is returned unchanged.

        Raises:
            KeyVersionNotUsable: the current key version may not encrypt.
            InvalidArgument: ``aad`` does not have one value per record.
            InvalidArgumentType: a value is neither str, bytes nor None.
        """
        threads = self._threads if threads is None else threads
        batch, present = _stored_batch(values)
        n = len(batch)
        caller_aad = _caller_aad(aad, n)
        stored = parse_stored_values(batch, present, threads=threads)
        target = self._encryption_key()
        status = np.full(n, ValueStatus.MALFORMED, dtype=np.uint8)
        status[~present] = ValueStatus.NULL
        current = stored.valid & (stored.key_versions == target.version)
        status[current] = ValueStatus.CURRENT
        todo = np.flatnonzero(stored.valid if check_only else stored.valid & ~current)
        plain, opened = self._open_stored(stored, todo, caller_aad, status, threads)
        moved = todo[opened]
        src = plain
        try:
            if (plaintext is not None or not check_only) and not opened.all():
                src = plain.take(np.flatnonzero(opened))
            if plaintext is not None and moved.shape[0]:
                plaintext(moved, src)
            if check_only:
                status[moved] = np.where(current[moved], ValueStatus.CURRENT,
                                         ValueStatus.OUTDATED)
                return Reencrypted(batch, status, stored.key_versions, target.version)
            tokens = self._seal_stored(target, stored.formats[moved], src, caller_aad, moved,
                                       threads)
        finally:
            if src is not plain:
                src.data.fill(0)
            plain.data.fill(0)
        status[moved] = ValueStatus.REENCRYPTED
        if not moved.shape[0]:
            return Reencrypted(batch, status, stored.key_versions, target.version)
        json_values = bool((stored.kinds[moved] == VALUE_JSON).any())
        new_values = format_stored_values(
            tokens, stored.kinds[moved], threads=threads,
            previous=batch.take(moved, threads=threads) if json_values else None)
        if moved.shape[0] == n:
            return Reencrypted(new_values, status, stored.key_versions, target.version)
        keep = np.flatnonzero(status != ValueStatus.REENCRYPTED)
        out = interleave(n, [(moved, new_values),
                             (keep, batch.take(keep, threads=threads))],
                         threads=threads)
        return Reencrypted(out, status, stored.key_versions, target.version)

    def _open_stored(self, stored: StoredValues, todo: np.ndarray, caller_aad: Any,
                     status: np.ndarray, threads: int | None) -> tuple[Batch, np.ndarray]:
        """Opens the tokens at ``todo``: one native pass per (key version, format). Returns the
        plaintexts in ``todo`` order (a record that did not open holds no plaintext) and which
        of them opened; the status of those that did not is set."""
        sizes = np.maximum(stored.tokens.lengths()[todo] - FORMAT_OVERHEAD[stored.formats[todo]],
                           0)
        off = offsets_of(sizes)
        out = empty_bytes(int(off[-1]), secret=True)
        opened = np.ones(todo.shape[0], dtype=bool)
        groups = TokenHeaders(stored.formats[todo], stored.key_versions[todo]).groups()
        try:
            self._open_groups(stored, todo, caller_aad, status, groups, out, off, opened,
                              threads)
        except BaseException:
            out.fill(0)
            raise
        return Batch._trusted(out, off), opened

    def _open_groups(self, stored: StoredValues, todo: np.ndarray, caller_aad: Any,
                     status: np.ndarray, groups: list[tuple[int, int, np.ndarray | None]],
                     out: np.ndarray, off: np.ndarray, opened: np.ndarray,
                     threads: int | None) -> None:
        for version, fmt, where in groups:
            local = np.arange(todo.shape[0]) if where is None else where
            idx = todo[local]
            try:
                key = self._key_for(version)
            except UnknownKeyVersion:
                status[idx] = ValueStatus.UNKNOWN_KEY_VERSION
                opened[local] = False
                self._failed("unknown_key_version", idx.shape[0])
                continue
            if key.algorithm != FORMAT_ALGORITHMS[fmt]:  # sealed otherwise: cannot be authentic
                status[idx] = ValueStatus.INVALID_TAG
                opened[local] = False
                self._failed("invalid_tag", idx.shape[0])
                continue
            tokens = stored.tokens if idx.shape[0] == len(stored) else \
                stored.tokens.take(idx, threads=threads)
            sub_aad = caller_aad.take(idx) if isinstance(caller_aad, Batch) else caller_aad
            try:
                key.cipher.open_tokens(tokens, HEADER_BYTES, sub_aad,
                                       bind_header=fmt in BOUND_FORMATS, out=out,
                                       out_starts=off[:-1][local], threads=threads)
            except BatchInvalidTag as exc:
                status[idx[exc.failed]] = ValueStatus.INVALID_TAG
                opened[local[exc.failed]] = False
                self._failed("invalid_tag", len(exc.failed))
            if opened[local].any():
                self._used(version, "decrypt", int(opened[local].sum()))

    def _seal_stored(self, target: VersionedKey, formats: np.ndarray, plain: Batch,
                     caller_aad: Any, moved: np.ndarray, threads: int | None) -> Batch:
        """Seals ``plain`` (the plaintexts of the values at ``moved``) under ``target`` as binary
        tokens of each value's own format: one native pass per format."""
        parts = []
        bound = np.isin(formats, BOUND_FORMATS)
        for header_bound in np.unique(bound).tolist():
            local = np.flatnonzero(bound == header_bound)
            fmt = token_format(target.algorithm, header_bound)  # the target version's algorithm
            sub = plain if local.shape[0] == len(plain) else plain.take(local)
            sub_aad = caller_aad.take(moved[local]) if isinstance(caller_aad, Batch) \
                else caller_aad
            try:
                tokens = target.cipher.seal_tokens(sub, token_header(target.version, fmt),
                                                   sub_aad, bind_header=header_bound,
                                                   threads=threads)
            finally:
                if sub is not plain:
                    sub.data.fill(0)
            assert tokens is not None  # no out=: a new Batch
            self._used(target.version, "encrypt", local.shape[0], target.usage_limit)
            parts.append((local, tokens))
        if len(parts) == 1:
            return parts[0][1]
        return interleave(moved.shape[0], parts, threads=threads)


class ValueStatus(enum.IntEnum):
    """What :meth:`EncryptionService.reencrypt_many` found (and did) for one stored value."""

    CURRENT = 0  #: already under the current key version: left as it is
    REENCRYPTED = 1  #: opened and sealed again under the current version
    OUTDATED = 2  #: (check_only) readable, under an older version
    NULL = 3  #: no value
    UNKNOWN_KEY_VERSION = 4  #: the provider has no key of the recorded version
    MALFORMED = 5  #: not a token or JSON envelope that parses strictly (plain text, say)
    INVALID_TAG = 6  #: failed authentication: wrong key or AAD, or tampered


@dataclass(frozen=True, eq=False)
class Reencrypted:
    """The result of :meth:`EncryptionService.reencrypt_many`, one entry per value.

    Attributes:
        values: what to store: the new value where ``status`` is ``REENCRYPTED``, the value
            as it was everywhere else (an empty record for a NULL).
        status: ``uint8`` :class:`ValueStatus` codes.
        key_versions: ``int64``: the version each value was under (0 where it did not parse).
        target_version: the current key version.
    """

    values: Batch
    status: np.ndarray
    key_versions: np.ndarray
    target_version: int

    def __len__(self) -> int:
        return len(self.values)

    def counts(self) -> dict[str, int]:
        """How many values have each status, by lower-case name (zeros included)."""
        found = np.bincount(self.status, minlength=len(ValueStatus))
        return {s.name.lower(): int(found[s]) for s in ValueStatus}

    def versions(self) -> dict[int, int]:
        """How many readable values (current, outdated or re-encrypted) each key version had."""
        readable = np.isin(self.status, (ValueStatus.CURRENT, ValueStatus.REENCRYPTED,
                                         ValueStatus.OUTDATED))
        found, count = np.unique(self.key_versions[readable], return_counts=True)
        return dict(zip(found.tolist(), count.tolist()))


def _stored_batch(values: Any) -> tuple[Batch, np.ndarray]:
    """(a Batch of every value, NULLs as empty records; which values are present)."""
    if isinstance(values, Batch):
        return values, np.ones(len(values), dtype=bool)
    if isinstance(values, (str, bytes)):
        raise InvalidArgumentType("reencrypt_many takes a list of values, not one value")
    if isinstance(values, (list, tuple)):
        kinds = value_kinds(values)
        if kinds & OTHER_VALUES:
            raise InvalidArgumentType("stored values must be str, bytes or None "
                                      "(a JSON value as its text)")
        present = np.fromiter((v is not None for v in values), dtype=bool, count=len(values)) \
            if kinds & NONE_VALUES else np.ones(len(values), dtype=bool)
        if kinds & NONE_VALUES:
            values = [b"" if v is None else v for v in values]
        return Batch.from_list(values), present
    if is_arrow(values):
        import pyarrow as pa
        import pyarrow.compute as pc

        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        present = values.is_valid().to_numpy(zero_copy_only=False)
        if values.null_count:
            values = pc.fill_null(values, pa.scalar(b"" if pa.types.is_binary(values.type) or
                                                    pa.types.is_large_binary(values.type)
                                                    else "", values.type))
        return Batch.from_arrow(values), present
    raise InvalidArgumentType(
        f"values must be a list, a pyarrow column or an engine.Batch, not {type(values).__name__}")


# ---------------------------------------------------------------- process-wide instance

_service: EncryptionService | None = None
_service_lock = fork_safe_lock()


def _provider_from_environment(env: Mapping[str, str] | None = None) -> KeyProvider:
    """The key provider the environment asks for.

    ``VAULT_ENABLED`` true: :class:`~engine.vault.VaultKeyProvider` from ``VAULT_ADDR`` and
    ``VAULT_TOKEN`` (or AppRole); false or absent: :class:`~engine.keys.EnvironmentKeyProvider`.

    Raises:
        ServiceConfigurationError: ``VAULT_ENABLED`` is not a boolean.
        MasterKeyError: ``ENCRYPTION_MASTER_KEY`` is missing or too short.
        VaultError: Vault is enabled but unreachable or misconfigured.
    """
    env = os.environ if env is None else env
    if env_flag(env, VAULT_ENABLED_ENV, False, error=ServiceConfigurationError):
        from .vault.provider import VaultKeyProvider

        return VaultKeyProvider.from_environment(env)
    from .keys.environment import EnvironmentKeyProvider

    return EnvironmentKeyProvider(env=env)


AUDIT_LOG_ENV = "ENGINE_AUDIT_LOG"


def _audit_from_environment(provider: KeyProvider, env: Mapping[str, str] | None = None) -> Any:
    """An audit log at ``$ENGINE_AUDIT_LOG`` keyed by the provider's audit key, or None."""
    env = os.environ if env is None else env
    path = env.get(AUDIT_LOG_ENV)
    if not path:
        return None
    try:
        audit_key = provider.audit_key()
    except KeyProviderError as exc:
        problem: str | None = str(exc)
    else:
        problem = None
    if problem is not None:
        raise ServiceConfigurationError(f"{AUDIT_LOG_ENV} is set but {problem}")
    from .audit import AuditLog

    return AuditLog(path, audit_key)


def get_encryption_service() -> EncryptionService:
    """The process-wide service, created on first use from the environment (thread-safe).

    ``$ENGINE_AUDIT_LOG`` (a path) turns the audit trail on, keyed by the provider.

    Raises:
        ServiceConfigurationError, MasterKeyError: see :func:`_provider_from_environment`.
    """
    global _service
    service = _service
    if service is None:
        with _service_lock:
            if _service is None:
                provider = _provider_from_environment()
                _service = EncryptionService(provider, audit=_audit_from_environment(provider))
            service = _service
    return service


def reset_encryption_service() -> None:
    """Forgets the process-wide service (tests; after changing the environment)."""
    global _service
    with _service_lock:
        _service = None
