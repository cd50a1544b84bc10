"""One partition of a job, start to finish: a key range of a table, or one Parquet file.

The reading and writing happen here, in the process that runs the partition; the
cryptography happens in ``crypto`` (:class:`LocalCrypto`, a helper thread of this process, or a
pool of worker processes fed Arrow IPC, see :mod:`engine.reencrypt.executors`). Up to ``crypto.depth``
batches are in flight, so workers seal one batch while this process writes the one before;
batches are still written, and checkpointed, in key order.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..parquet_rewrite import CannotKeepParquet, ParquetUnreadable, rewrite_parquet
from ..service import EncryptionService
from .errors import FileUnreadable, UnsupportedFile
from .reindex import build_indexes
from .report import FAILURES, ColumnCounts, Failure, PartitionResult, reason
from .spec import Column, row_fields
from .stores.parquet import Temporary, file_state, replacing
from .stores.sql import ColumnWrite, Partition, ReadBatch
from .transform import KeyCheck, Resealed, reseal

__all__ = ["JobSpec", "LocalCrypto", "process_partition"]

Observer = Callable[[str, dict], None]
OnBatch = Callable[[int, "dict[str, ColumnCounts] | None"], None]


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to run a partition (it pickles: no key, no connection).

    Attributes:
        store: the store (a description; each partition opens its own connection).
        columns: the columns and their AAD rules.
        job_id: names the job's checkpoints.
        batch_size: rows per batch.
        check_only: an inventory (opens every value, writes nothing).
        service_factory: builds the worker's own service (keys never travel).
        key_check: proves the worker's key is the coordinator's.
        max_failures: failures listed by key (all are counted).
        threads: native threads per batch (None: the service's); worker processes that share
            the machine take their share of its cores.
    """

    store: Any
    columns: tuple[Column, ...]
    job_id: str
    batch_size: int
    check_only: bool
    service_factory: Callable[[], EncryptionService]
    key_check: KeyCheck
    max_failures: int = 1000
    threads: int | None = None


class LocalCrypto:
    """The cryptography in this process, on one helper thread. The native calls release the
    GIL, and so does the database driver while it waits on the database, so re-sealing batch
    k+1 overlaps writing batch k (``depth`` 1)."""

    depth = 1

    def __init__(self, service: EncryptionService, spec: JobSpec) -> None:
        self._service = service
        self._spec = spec
        self._indexes = build_indexes(spec.columns, service.provider, spec.threads)
        self._thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="reencrypt-crypto")

    def submit(self, table: Any) -> Future:
        return self._thread.submit(reseal, table, self._spec.columns, self._service,
                                   check_only=self._spec.check_only, threads=self._spec.threads,
                                   indexes=self._indexes)

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)


def process_partition(spec: JobSpec, part: Partition, crypto: Any, *,
                      on_batch: OnBatch | None = None,
                      observer: Observer | None = None) -> PartitionResult:
    """Runs one partition; returns its counts and failures.

    Args:
        on_batch: called after each committed batch with its row count and per-column counts
            (None for Parquet, whose values count once the file is in place).
        observer: called as ``observer("read", {"partition": i, "keys": [...]})`` after a
            batch is re-sealed and before it is written (tests change rows there); for a
            Parquet file, ``observer("read", {"partition": i, "file": path})`` once its new
            version is written and before it replaces the file.

    Raises:
        StoreUnavailable: the store failed; committed batches stay committed.
    """
    if spec.store.writes_whole_partitions:
        return _process_file(spec, part, crypto, on_batch, observer)
    return _process_range(spec, part, crypto, on_batch, observer)


def _empty_result(columns: Sequence[Column]) -> PartitionResult:
    return PartitionResult(columns={c.name: ColumnCounts() for c in columns})


def _count_batch(spec: JobSpec, resealed: Resealed, keys: Any, result: PartitionResult
                 ) -> dict[str, ColumnCounts]:
    """Per-column counts of one re-sealed batch; failures are listed by key in ``result``."""
    delta = {}
    for column, outcome in zip(spec.columns, resealed.columns):
        status = outcome.status
        counts = ColumnCounts()
        counts.add_statuses(status, outcome.versions)
        delta[column.name] = counts
        bad = np.flatnonzero(np.isin(status, FAILURES))
        result.failures_total += int(bad.shape[0])
        room = spec.max_failures - len(result.failures)
        for row in bad[: max(room, 0)].tolist():
            result.failures.append(Failure(column.name, keys(row), reason(int(status[row]))))
    return delta


def _process_range(spec: JobSpec, part: Partition, crypto: Any, on_batch: OnBatch | None,
                   observer: Observer | None) -> PartitionResult:
    """Returns what this run found; each checkpoint records what every run has found in the
    partition (``part.earlier`` and this run's committed batches)."""
    store = spec.store
    result = _empty_result(spec.columns)
    with store.session(write=not spec.check_only) as conn:
        kinds = store.check(conn, spec.columns)
        if not spec.check_only:
            part = store.resume_point(conn, spec.job_id, part)
            if part.finished:
                return result
        committed = (part.earlier.copy() if part.earlier is not None
                     else _empty_result(spec.columns))
        pending: collections.deque[tuple[ReadBatch, Future]] = collections.deque()
        try:
            for batch in store.scan(conn, part, spec.columns, kinds, spec.batch_size):
                pending.append((batch, crypto.submit(batch.table)))
                while len(pending) > crypto.depth:
                    committed = _write_batch(spec, conn, kinds, part, *pending.popleft(), result,
                                             committed, on_batch, observer)
            while pending:
                committed = _write_batch(spec, conn, kinds, part, *pending.popleft(), result,
                                         committed, on_batch, observer)
        finally:
            for _batch, future in pending:
                future.cancel()
        if not spec.check_only:
            store.finish(conn, spec.job_id, part, committed.to_json())
    return result


def _write_batch(spec: JobSpec, conn: Any, kinds: dict[str, str], part: Partition,
                 batch: ReadBatch, future: Future, result: PartitionResult,
                 committed: PartitionResult, on_batch: OnBatch | None,
                 observer: Observer | None) -> PartitionResult:
    """Counts and writes one batch; returns what the partition's checkpoint now records."""
    resealed = future.result()
    found = _empty_result(spec.columns)
    found.rows = len(batch.keys)
    delta = _count_batch(spec, resealed, batch.keys.__getitem__, found)
    if observer is not None:
        observer("read", {"partition": part.index, "keys": list(batch.keys)})
    if not spec.check_only:
        updates = {column.name: ColumnWrite(
                       np.flatnonzero(outcome.reencrypted()),
                       outcome.values[column.name],
                       {d.name: outcome.indexes[d.name] for d in column.indexes},
                       tuple(dict.fromkeys(f for d in column.indexes for f in d.columns
                                           if f != column.name)))
                   for column, outcome in zip(spec.columns, resealed.columns)}
        recorded = [committed]

        def record(changed: dict[str, int]) -> str:
            """Inside the batch's transaction: the checkpoint's record, this batch included."""
            for name, count in changed.items():
                delta[name].changed += count
                delta[name].reencrypted -= count
            state = committed.copy()
            state.merge(_with_counts(found, delta), spec.max_failures)
            recorded[0] = state
            return state.to_json()

        spec.store.write(conn, batch, updates, kinds, spec.job_id, part, record)
        committed = recorded[0]
    result.merge(_with_counts(found, delta), spec.max_failures)
    if on_batch is not None:
        on_batch(len(batch.keys), delta)
    return committed


def _with_counts(found: PartitionResult, delta: dict[str, ColumnCounts]) -> PartitionResult:
    """``found`` (a batch's rows and failures) with its per-column counts."""
    return PartitionResult(found.rows, delta, found.failures, found.failures_total)


def _file_of(part: Partition) -> str:
    """The file a partition of a dataset of files names."""
    if part.file is None:
        raise TypeError(f"partition {part.index} names no file: not a partition of a dataset")
    return part.file


def _process_file(spec: JobSpec, part: Partition, crypto: Any, on_batch: OnBatch | None,
                  observer: Observer | None) -> PartitionResult:
    """One file: read-only for an inventory; else rewritten through
    :func:`engine.parquet_rewrite.rewrite_parquet` (only the job's columns change; codecs, row
    groups, encodings and everything else are kept) into a locked temporary beside it, which
    replaces it only if the file is still byte for byte what was read."""
    store = spec.store
    path = _file_of(part)
    name = os.path.basename(path)
    result = _empty_result(spec.columns)
    if spec.check_only:
        return _scan_file(spec, part, crypto, on_batch, result)
    before = file_state(path)
    if before is None:  # deleted (or a link put in its place) since the job listed it
        return result
    owned = {n for c in spec.columns for n in c.stored_columns()} | \
        {d.name for c in spec.columns for d in c.indexes}
    needed = list(dict.fromkeys([n for c in spec.columns for n in c.read_columns()]
                                + list(row_fields(spec.columns))))
    first_row = [0]

    def transform(_index: int, table: Any) -> dict[str, Any] | None:
        store.check_schema(table.schema, spec.columns, name)  # the file may be new
        new: dict[str, list[Any]] = {}
        moved = offset = 0
        pending: collections.deque[tuple[Any, Future]] = collections.deque()

        def take() -> None:
            nonlocal moved, offset
            rb, future = pending.popleft()
            moved += _take_file_batch(spec, rb, future.result(), table, offset, first_row,
                                      name, result, on_batch, new)
            offset += rb.num_rows

        try:
            for rb in table.select(needed).to_batches(max_chunksize=spec.batch_size):
                pending.append((rb, crypto.submit(rb)))
                while len(pending) > crypto.depth:
                    take()
            while pending:
                take()
        finally:
            for _rb, future in pending:
                future.cancel()
        if not moved:
            return None
        return {column: _concat(arrays) for column, arrays in new.items()}

    try:
        with Temporary(path) as tmp:
            done = rewrite_parquet(path, tmp.target, transform, columns=owned,
                                   use_threads=spec.threads is None or spec.threads > 1)
            if observer is not None:
                observer("read", {"partition": part.index, "file": path})
            if not done.written:
                return result
            with replacing(path):  # another job's check and rename wait for ours
                if file_state(path) != before:  # the application rewrote (or removed) it
                    return _changed_meanwhile(result)
                tmp.replace(before)
    except CannotKeepParquet as exc:
        raise UnsupportedFile(f"{store.display}: {path}: {exc}") from None
    except (ParquetUnreadable, OSError) as exc:
        try:
            changed = file_state(path) != before
        except OSError:
            changed = False
        if changed:  # it changed under the read: the next pass takes it
            return _changed_meanwhile(result)
        if isinstance(exc, FileUnreadable):
            raise
        raise FileUnreadable(f"{store.display}: {path} cannot be read or rewritten "
                             f"({_first_line(exc)})") from None
    return result


def _take_file_batch(spec: JobSpec, rb: Any, resealed: Resealed, table: Any, offset: int,
                     first_row: list[int], name: str, result: PartitionResult,
                     on_batch: OnBatch | None, new: dict[str, list[Any]]) -> int:
    """Counts one re-sealed batch (rows ``offset``... of the row group ``table``) and keeps its
    new values of the columns the job owns (the old ones where nothing moved); returns how
    many values moved."""
    import pyarrow as pa
    import pyarrow.compute as pc

    delta = _count_batch(spec, resealed, lambda r, base=first_row[0]: f"{name}#{base + r}",
                         result)
    first_row[0] += rb.num_rows
    result.rows += rb.num_rows
    for column_name, counts in delta.items():
        result.columns[column_name].merge(counts)
    if on_batch is not None:
        on_batch(rb.num_rows, None)
    moved = 0
    for column, outcome in zip(spec.columns, resealed.columns):
        reencrypted = outcome.reencrypted()
        moved += int(reencrypted.sum())
        for stored in column.stored_columns():
            new.setdefault(stored, []).append(outcome.values[stored])
        for definition in column.indexes:
            old = table.column(definition.name).slice(offset, rb.num_rows).combine_chunks()
            new.setdefault(definition.name, []).append(
                pc.if_else(pa.array(reencrypted),
                           outcome.indexes[definition.name].cast(old.type), old))
    return moved


def _scan_file(spec: JobSpec, part: Partition, crypto: Any, on_batch: OnBatch | None,
               result: PartitionResult) -> PartitionResult:
    """An inventory of one file: every batch opened, nothing written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = _file_of(part)
    name = os.path.basename(path)
    first_row = 0
    try:
        source = pq.ParquetFile(path)
        spec.store.check_schema(source.schema_arrow, spec.columns, name)  # the file may be new
        batches = source.iter_batches(batch_size=spec.batch_size,
                                      use_threads=spec.threads is None or spec.threads > 1)
        for rb in batches:
            resealed = crypto.submit(rb).result()
            delta = _count_batch(spec, resealed,
                                 lambda r, base=first_row: f"{name}#{base + r}", result)
            first_row += rb.num_rows
            result.rows += rb.num_rows
            for column, counts in delta.items():
                result.columns[column].merge(counts)
            if on_batch is not None:
                on_batch(rb.num_rows, None)
    except (pa.ArrowException, OSError) as exc:
        raise FileUnreadable(f"{spec.store.display}: {path} cannot be read "
                             f"({_first_line(exc)})") from None
    return result


def _changed_meanwhile(result: PartitionResult) -> PartitionResult:
    """The values a discarded rewrite would have moved, counted as changed (left for the next
    pass)."""
    for counts in result.columns.values():
        counts.changed += counts.reencrypted
        counts.reencrypted = 0
    return result


def _concat(arrays: list[Any]) -> Any:
    import pyarrow as pa

    return arrays[0] if len(arrays) == 1 else pa.chunked_array(arrays)


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
