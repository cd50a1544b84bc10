"""The cryptographic step of a job, on one Arrow record batch: what a worker process runs.

:func:`reseal` takes a batch holding the values of each column (and the columns their AAD
rules read) and returns a :class:`Resealed`: per column (a :class:`ColumnOutcome`) each row's
``uint8`` status, the key version found, the values to store and the blind index values.
Every column goes through :meth:`engine.EncryptionService.reencrypt_many` once (one native
open per key version, one seal per format); nothing here parses a token.

Batches and results cross process boundaries as Arrow IPC streams (:func:`to_ipc`,
:func:`from_ipc`, :meth:`Resealed.to_ipc`, :meth:`Resealed.from_ipc`), never as per-row
objects, and keys never cross at all: a worker builds its own service with the job's
``service_factory`` and proves with :class:`KeyCheck` that it holds the coordinator's current
key before it seals anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..aead import random_bytes
from ..batch import Batch, SealedBatch
from ..blind_index import NormalisationError
from ..codecs import interleave
from ..errors import InvalidArgument, InvalidTag
from ..formats.tokens import pack_tokens, parse_tokens
from ..formats.wire import FORMAT_UNBOUND, FORMAT_XAES_UNBOUND, MAX_KEY_VERSION
from ..keys import UnknownKeyVersion
from ..service import EncryptionService, ValueStatus
from .errors import ColumnNotFound, WorkerKeyMismatch
from .reindex import ColumnPass, Indexes, Plaintexts, build_indexes, index_values, keep_unindexable
from .spec import Column, column_of

__all__ = ["ColumnOutcome", "KeyCheck", "Resealed", "from_ipc", "reseal", "stored_index_matches",
           "to_ipc", "worker_service"]

_CHECK_AAD = b"engine-reencrypt-key-check"
#: The nonce sizes of the three-column layout: AES-256-GCM's 16-byte IVs, XAES-256-GCM's 24.
SEALED_NONCE_SIZES = (16, 24)


@dataclass(frozen=True)
class KeyCheck:
    """Proof, without sending it, that a worker holds the coordinator's current key: a random
    value sealed with it, which only the same key opens."""

    version: int
    nonce: bytes
    sealed: bytes

    @classmethod
    def of(cls, service: EncryptionService) -> "KeyCheck":
        key = service.provider.get_current_key()
        nonce = random_bytes(key.cipher.NONCE_SIZE)  # 12-16 bytes for AES-GCM, 24 for XAES
        return cls(key.version, nonce, key.cipher.encrypt(nonce, random_bytes(16), _CHECK_AAD))

    def verify(self, service: EncryptionService) -> None:
        """Raises :class:`WorkerKeyMismatch` unless ``service`` encrypts under the same
        version with the same key."""
        current = service.provider.get_current_key().version
        if current != self.version:
            raise WorkerKeyMismatch(
                f"a worker's current key version is {current}, the job's is {self.version}: "
                "give every worker the coordinator's key configuration")
        same = True
        try:
            service.provider.get_key(self.version).cipher.decrypt(self.nonce, self.sealed,
                                                                  _CHECK_AAD)
        except (InvalidTag, UnknownKeyVersion, InvalidArgument):  # another algorithm: its nonce
            same = False
        if not same:  # raised here, outside the handler: the error carries no context
            raise WorkerKeyMismatch(
                f"a worker's key version {self.version} is not the coordinator's (another "
                "master key or Vault?): give every worker the same key configuration")


_services: dict[Any, EncryptionService] = {}


def worker_service(factory: Callable[[], EncryptionService], check: KeyCheck) -> EncryptionService:
    """The service of this worker process: built once per factory, checked against the
    coordinator's key (see :class:`KeyCheck`)."""
    service = _services.get(factory)
    if service is None:
        service = factory()
        _services[factory] = service
    check.verify(service)
    return service


def to_ipc(batch: Any) -> bytes:
    """An Arrow record batch as one Arrow IPC stream."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def from_ipc(payload: bytes) -> Any:
    """The record batch of an Arrow IPC stream made by :func:`to_ipc` (zero-copy)."""
    import pyarrow as pa

    return pa.ipc.open_stream(pa.py_buffer(payload)).read_next_batch()


@dataclass(frozen=True)
class ColumnOutcome:
    """What :func:`reseal` found and made for one column of a batch, row by row.

    ``status``: ``uint8`` :class:`~engine.service.ValueStatus` codes, or
    :data:`~engine.reencrypt.report.UNINDEXABLE`; ``versions``: ``int64``, the key version read
    (0 where none); ``values``: stored column name -> the values to store (Arrow, of the stored
    column's type; the old value wherever nothing changed; empty for a check-only pass);
    ``indexes``: blind index name -> its new values (Arrow; null where the column's value was
    not re-encrypted)."""

    status: np.ndarray
    versions: np.ndarray
    values: dict[str, Any]
    indexes: dict[str, Any]

    def reencrypted(self) -> np.ndarray:
        """Which rows were moved to the target version (a bool array)."""
        return self.status == ValueStatus.REENCRYPTED


_LAYOUT_KEY = b"engine.reseal.layout"


@dataclass(frozen=True)
class Resealed:
    """The results of :func:`reseal`: one :class:`ColumnOutcome` per column of the job, in the
    job's order."""

    columns: tuple[ColumnOutcome, ...]

    def to_ipc(self) -> bytes:
        """One Arrow IPC stream: each column's status, versions, values and index values as
        fields in that order, the names of its values and indexes in the schema's metadata."""
        import json

        import pyarrow as pa

        arrays: list[Any] = []
        layout = []
        for outcome in self.columns:
            arrays += [pa.array(outcome.status, pa.uint8()), pa.array(outcome.versions, pa.int64()),
                       *outcome.values.values(), *outcome.indexes.values()]
            layout.append({"values": list(outcome.values), "indexes": list(outcome.indexes)})
        schema = pa.schema([pa.field(str(i), a.type) for i, a in enumerate(arrays)],
                           metadata={_LAYOUT_KEY: json.dumps(layout)})
        return to_ipc(pa.RecordBatch.from_arrays(arrays, schema=schema))

    @classmethod
    def from_ipc(cls, payload: bytes) -> "Resealed":
        """The results :meth:`to_ipc` wrote (status and versions as numpy views of the
        stream's buffers)."""
        import json

        batch = from_ipc(payload)
        layout = json.loads(batch.schema.metadata[_LAYOUT_KEY])
        position = 0

        def take() -> Any:
            nonlocal position
            position += 1
            return batch.column(position - 1)

        columns = []
        for entry in layout:
            status = take().to_numpy(zero_copy_only=False)
            versions = take().to_numpy(zero_copy_only=False)
            values = {name: take() for name in entry["values"]}
            indexes = {name: take() for name in entry["indexes"]}
            columns.append(ColumnOutcome(status, versions, values, indexes))
        return cls(tuple(columns))


def reseal(batch: Any, columns: Sequence[Column], service: EncryptionService, *,
           check_only: bool = False, threads: int | None = None,
           indexes: Indexes | None = None) -> Any:
    """Re-encrypts (or, with ``check_only``, only opens) every column of ``batch``.

    Returns:
        A :class:`Resealed` with one :class:`ColumnOutcome` per column of ``columns``.

    ``threads``: native threads (default: the service's). ``indexes``: the column's blind
    indexes (:func:`build_indexes`; default: built here with the service's provider).

    Raises:
        ColumnNotFound: a column is missing or of a type that cannot hold ciphertexts.
        InvalidArgumentType: a plain column a blind index reads is not text, binary or integer.
        KeyProviderError: the provider has no blind index keys.
    """
    indexed = not check_only and any(c.indexes for c in columns)
    opened = Plaintexts()
    needs = {f for c in columns for d in c.indexes for f in d.columns} if indexed else set()
    results: list[ColumnPass] = []
    index_arrays: list[dict[str, Any]] = [{} for _ in columns]
    try:
        for column in columns:
            aad = column.aad.evaluate(batch, column.name)
            keep = opened.keeper(column.name) if column.name in needs else None
            run = _token_column if column.sealed is None else _sealed_column
            results.append(run(batch, column, aad, service, check_only, threads, keep))
        if indexed:
            if indexes is None:
                indexes = build_indexes(columns, service.provider, threads)
            by_name = {c.name: r for c, r in zip(columns, results)}
            for i, column in enumerate(columns):
                for definition in column.indexes:
                    index_arrays[i][definition.name] = index_values(
                        batch, column.name, indexes[definition], by_name, opened, service,
                        threads)
            for result in results:
                keep_unindexable(batch, result)
    finally:
        opened.wipe()
    return Resealed(tuple(
        ColumnOutcome(np.asarray(r.status, np.uint8), np.asarray(r.versions, np.int64),
                      dict(r.new), index_arrays[i])
        for i, r in enumerate(results)))


def stored_index_matches(batch: Any, columns: Sequence[Column], service: EncryptionService,
                         indexes: Indexes) -> dict[str, tuple[int, int]]:
    """For each blind index of ``columns``: (rows of ``batch`` whose stored index value is
    the one the index computes from the row's plaintexts under its key version, rows
    compared). A row is compared where its index value is set and every encrypted field of
    the index opens; the key version is that of the index's column (the first of its columns
    the job has). Nothing is written.

    Raises:
        ColumnNotFound: a column, or an index column, is missing.
    """
    opened = Plaintexts()
    needs = {f for c in columns for d in c.indexes for f in d.columns}
    passes: dict[str, ColumnPass] = {}
    out: dict[str, tuple[int, int]] = {}
    try:
        for column in columns:
            if column.name in needs:
                run = _token_column if column.sealed is None else _sealed_column
                passes[column.name] = run(batch, column, column.aad.evaluate(batch, column.name),
                                          service, True, None, opened.keeper(column.name))
        for column in columns:
            for definition in column.indexes:
                stored = column_of(batch, definition.name).to_numpy(zero_copy_only=False)
                rows = np.flatnonzero(np.not_equal(stored, None))  # type: ignore[call-overload]
                for name in (f for f in definition.columns if f in passes):
                    rows = rows[opened.has(name, rows)]
                versions = passes[column.name].versions[rows]
                matched = 0
                for version in np.unique(versions).tolist():
                    at = rows[versions == version]
                    while at.shape[0]:
                        fields = {f: opened.at(f, at) if f in passes
                                  else column_of(batch, f).take(at) for f in definition.columns}
                        try:
                            values = indexes[definition].compute(
                                fields if len(fields) > 1 else fields[definition.columns[0]],
                                version=int(version))
                        except NormalisationError as exc:  # rows that match nothing
                            at = np.delete(at, exc.failed)
                            continue
                        matched += sum(a == b for a, b in zip(values, stored[at].tolist()))
                        break
                out[definition.name] = (matched, int(rows.shape[0]))
    finally:
        opened.wipe()
    return out


def _token_column(batch: Any, column: Column, aad: Any, service: EncryptionService,
                  check_only: bool, threads: int | None,
                  keep: Callable[[np.ndarray, Batch], None] | None) -> ColumnPass:
    import pyarrow as pa

    name = column.name
    values = column_of(batch, name)
    t = values.type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t)):
        raise ColumnNotFound(f"column {name!r} is {t}; ciphertexts are text or binary")
    result = service.reencrypt_many(values, aad, check_only=check_only, threads=threads,
                                    plaintext=keep)
    done = ColumnPass(result.status, result.key_versions, result.target_version, {}, values, aad,
                   None)
    if check_only:
        return done
    text = pa.types.is_string(t) or pa.types.is_large_string(t)
    new = result.values.to_arrow(text=text)
    present = result.status != ValueStatus.NULL
    if not present.all():
        new = pa.Array.from_buffers(new.type, len(new),
                                    [pa.array(present).buffers()[1], *new.buffers()[1:]])
    done.new[name] = new.cast(t)
    return done


def _sealed_column(batch: Any, column: Column, aad: Any, service: EncryptionService,
                   check_only: bool, threads: int | None,
                   keep: Callable[[np.ndarray, Batch], None] | None) -> ColumnPass:
    """The three-column layout: each row's nonce, ciphertext and tag under its key version are
    handed to the service as an unbound token (the layout's AAD is the caller's only) of the
    format its nonce size names (16 bytes: AES-256-GCM, 24: XAES-256-GCM), and the values the
    service moved are split back into the same columns."""
    import pyarrow as pa
    import pyarrow.compute as pc

    layout = column.sealed
    if layout is None:
        raise TypeError(f"column {column.name!r} is a token column, not the three-column layout")
    nonce, tag, ct, ver = (column_of(batch, n) for n in layout.names())
    n = len(ct)
    for name, arr, widths in ((layout.nonce, nonce, SEALED_NONCE_SIZES), (layout.tag, tag, (16,))):
        width = _fixed_width(arr.type)
        if width is None and not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
            raise ColumnNotFound(f"column {name!r} is {arr.type}; nonces and tags are binary")
        if width is not None and width not in widths:
            raise ColumnNotFound(f"column {name!r} holds {width}-byte values; the layout needs "
                                 f"{' or '.join(map(str, widths))}-byte values")
    if not pa.types.is_integer(ver.type):
        raise ColumnNotFound(f"column {layout.key_version!r} is {ver.type}; key versions are "
                             "integers")
    if not check_only:
        _check_sealed_target(layout, nonce.type, ver.type, service)

    def flag(arr: Any) -> np.ndarray:
        return arr.to_numpy(zero_copy_only=False)

    present = ~(flag(pc.is_null(ct)) | flag(pc.is_null(nonce)) | flag(pc.is_null(tag))
                | flag(pc.is_null(ver)))
    versions = flag(pc.fill_null(ver, 0)).astype(np.int64)
    nonce_sizes = flag(pc.fill_null(pc.binary_length(nonce), 0))
    shaped = (present & (versions >= 1) & (versions <= MAX_KEY_VERSION)
              & np.isin(nonce_sizes, SEALED_NONCE_SIZES)
              & (flag(pc.fill_null(pc.binary_length(tag), 0)) == 16))
    rows = np.flatnonzero(shaped)
    status = np.full(n, ValueStatus.MALFORMED, dtype=np.uint8)
    status[~present] = ValueStatus.NULL
    found = np.zeros(n, dtype=np.int64)
    parts = []
    for size, fmt in ((16, FORMAT_UNBOUND), (24, FORMAT_XAES_UNBOUND)):
        local = np.flatnonzero(nonce_sizes[rows] == size)
        if not local.shape[0]:
            continue
        take = pa.array(rows[local])
        nonces, tags, cts = (Batch.from_arrow(arr.take(take).cast(pa.large_binary()))
                             for arr in (nonce, tag, ct))
        sealed = SealedBatch(nonces=nonces, tags=tags, ciphertexts=cts)
        parts.append((local, pack_tokens(sealed, versions[rows[local]], fmt)))
    tokens = parts[0][1] if len(parts) == 1 else interleave(rows.shape[0], parts)
    aad = aad.take(rows) if isinstance(aad, Batch) else aad
    result = service.reencrypt_many(
        tokens, aad, check_only=check_only, threads=threads,
        plaintext=None if keep is None else lambda at, plain: keep(rows[at], plain))
    status[rows] = result.status
    found[rows] = result.key_versions
    # A row the layout cannot read (a 12-byte nonce, say) still names its key version: an
    # inventory counts it there, so a purge of that version is refused.
    named = present & ~shaped & (versions >= 1) & (versions <= MAX_KEY_VERSION)
    found[named] = versions[named]
    done = ColumnPass(status, found, result.target_version, {}, tokens, aad, rows)
    if check_only:
        return done
    moved = np.flatnonzero(result.status == ValueStatus.REENCRYPTED)
    out = parse_tokens(result.values.take(moved))  # one format: the target version's
    at = rows[moved]
    done.new.update({
        layout.nonce: _scatter(nonce, at, out.nonces),
        layout.tag: _scatter(tag, at, out.tags),
        layout.ciphertext: _scatter(ct, at, out.ciphertexts.to_arrow()),
        layout.key_version: _scatter(ver, at, out.key_versions),
    })
    return done


def _fixed_width(t: Any) -> int | None:
    """The width of a ``fixed_size_binary`` type, None for any other (pyarrow raises
    ``ValueError`` for ``byte_width`` of a variable-width type)."""
    import pyarrow as pa

    return t.byte_width if pa.types.is_fixed_size_binary(t) else None


def _check_sealed_target(layout: Any, nonce_type: Any, version_type: Any,
                         service: EncryptionService) -> None:
    """Raises :class:`ColumnNotFound` when the layout's columns cannot hold what the current
    key version writes: a fixed-size nonce column of another width than its algorithm's
    nonces, or a key-version column too narrow for its number."""
    import pyarrow as pa

    target = service.provider.get_current_key()
    size = target.cipher.NONCE_SIZE
    width = _fixed_width(nonce_type)
    if width is not None and width != size:
        raise ColumnNotFound(
            f"column {layout.nonce!r} is {nonce_type}: it cannot hold the {size}-byte nonces of "
            f"key version {target.version} ({target.algorithm}); make it binary")
    try:
        pa.scalar(target.version, pa.int64()).cast(version_type)
    except (pa.ArrowInvalid, OverflowError):
        raise ColumnNotFound(f"column {layout.key_version!r} is {version_type}: it cannot hold "
                             f"key version {target.version}") from None


def _scatter(original: Any, rows: np.ndarray, new: Any) -> Any:
    """``original`` with the values at ``rows`` replaced by ``new`` (same type as original)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = original.type
    if isinstance(new, np.ndarray) and new.ndim == 2:
        new = pa.FixedSizeBinaryArray.from_buffers(pa.binary(new.shape[1]), new.shape[0],
                                                   [None, pa.py_buffer(np.ascontiguousarray(new))])
    elif isinstance(new, np.ndarray):
        new = pa.array(new)
    new = new.cast(t)
    if len(rows) == len(original):
        return new
    # positions: for each row of original, its index in new (or -1 to keep the original)
    where = np.full(len(original), -1, dtype=np.int64)
    where[rows] = np.arange(len(rows))
    mask = pa.array(where >= 0)
    spread = new.take(pa.array(np.maximum(where, 0))) if len(new) else pa.nulls(len(original), t)
    return pc.if_else(mask, spread, original)
