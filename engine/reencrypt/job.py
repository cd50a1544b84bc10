"""The two jobs, as the coordinator runs them: :func:`inventory` and :func:`reencrypt`.

Before anything is written, a job checks the store (table, key, columns and their types) and
reads the first rows: a column whose values are none of them ciphertexts (plain text) or of
which every value fails authentication (the wrong AAD rule or key) stops it with an error.
Then it records ``REENCRYPTION_STARTED`` in the audit trail, runs its partitions (see
:mod:`engine.reencrypt.executors`), and records ``REENCRYPTION_COMPLETED`` with its counts,
also when it fails.

A job is named by its table, key, columns, their AAD rules and blind indexes, and its target
key version: a run resumes only the checkpoints of the same job (an interrupted job to v2
is not resumed by a job to v3, nor by one given another AAD rule), and reports what every run
of it found.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np

from .. import audit as audit_events
from ..errors import InvalidArgument, InvalidArgumentType
from ..keys.base import KeyProviderError, ProviderConfig
from ..service import EncryptionService, ValueStatus, get_encryption_service
from .errors import (
    ColumnNotFound,
    IndexMismatch,
    NotEncrypted,
    ReencryptionError,
    ReencryptionInterrupted,
    WrongKeyOrAad,
)
from .executors import DaskExecutor, run_partitions
from .partition import JobSpec
from .reindex import build_indexes
from .report import ColumnCounts, Inventory, PartitionResult, ReencryptionReport
from .spec import Column, as_columns, column_of, row_fields
from .stores.base import Store
from .stores.sql import Partition
from .transform import KeyCheck, reseal, stored_index_matches

__all__ = ["handover", "inventory", "reencrypt"]

Progress = Callable[[int, int], None]
SAMPLE_ROWS = 1000


def inventory(store: Any, columns: Sequence[Any], *, aad: Any = None,
              service: EncryptionService | None = None,
              service_factory: Callable[[], EncryptionService] | None = None,
              workers: int = 0, dask: Any = None, dask_timeout: float | None = None,
              batch_size: int = 10_000, partitions: int | None = None,
              max_failures: int = 1000, progress: Progress | None = None) -> Inventory:
    """Counts, per column, the values under each key version, the NULLs, and the values that
    cannot be read (unknown key version, malformed, failing authentication). Every value is
    opened; nothing is written.

    Args:
        store: from :func:`engine.reencrypt.open_store`.
        columns: column names or :class:`Column` objects.
        aad: an :class:`AadRule` for every column given by name, or ``{name: AadRule}``.
        service: the service to use here (default: ``service_factory()``).
        service_factory: builds the service in each worker process; it must pickle. Default:
            from ``service.provider.config()`` (the worker reads its own master key or Vault
            credentials), else :func:`engine.get_encryption_service`.
        workers: worker processes (0: this process only).
        dask: a Dask scheduler address or ``distributed.Client`` to run partitions on.
        dask_timeout: seconds to wait for the scheduler to answer (default 10).
        batch_size: rows per batch.
        partitions: key ranges for a table (default: 1, or twice the Dask threads).
        max_failures: unreadable values listed by key (all are counted); 0 lists none.
        progress: called as ``progress(rows_done, rows_total)``.

    Returns:
        An :class:`Inventory`.

    Raises:
        UnknownStore, TableNotFound, ColumnNotFound, NotEncrypted: bad input (nothing read
            beyond the first rows).
        StoreUnavailable, SchedulerUnavailable, WorkerKeyMismatch: the job could not run.
        ReencryptionInterrupted: Ctrl-C; its ``report`` counts the partitions done so far.
    """
    job = _Job(store, columns, aad, None, service, service_factory, dask, dask_timeout,
               batch_size, max_failures, check_only=True)
    try:
        job.validate()
        parts = job.partitions(workers, partitions, persist=False)
        started = time.perf_counter()
        result = PartitionResult(columns={c.name: ColumnCounts() for c in job.columns})
        # the batches counted here (a table in this process): what Ctrl-C reports, also of
        # the partition it stopped in
        batches = PartitionResult(columns={c.name: ColumnCounts() for c in job.columns})
        advance = job.progress_callback(progress)

        def on_batch(rows: int, delta: dict[str, ColumnCounts] | None) -> None:
            advance(rows, delta)
            if delta is not None:
                batches.merge(PartitionResult(rows, delta), 0)

        try:
            run_partitions(job.spec, parts, service=job.service, workers=workers, dask=job.dask,
                           on_batch=on_batch, total=result)
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True
            if batches.rows > result.rows:
                result.rows, result.columns = batches.rows, batches.columns
    finally:
        job.close()
    report = Inventory(store.display, store.table, result.columns, result.rows, result.failures,
                       result.failures_total, time.perf_counter() - started,
                       current_version=job.target)
    if interrupted:  # raised outside the handler: no chained KeyboardInterrupt
        raise ReencryptionInterrupted(report)
    return report


def reencrypt(store: Any, columns: Sequence[Any], *, aad: Any = None, indexes: Any = None,
              service: EncryptionService | None = None,
              service_factory: Callable[[], EncryptionService] | None = None,
              workers: int = 0, dask: Any = None, dask_timeout: float | None = None,
              batch_size: int = 10_000, partitions: int | None = None,
              max_failures: int = 1000, progress: Progress | None = None,
              observer: Callable[[str, dict], None] | None = None) -> ReencryptionReport:
    """Moves every readable value of ``columns`` that is not under the current key version to
    it, batch by batch, each batch in one transaction with an optimistic check and a
    checkpoint. Run it again after an interruption: it resumes where it stopped, and values
    already current are skipped.

    Takes the arguments of :func:`inventory`, and:

    Args:
        indexes: blind indexes to keep with the values (:class:`~engine.BlindIndex`,
            :class:`~engine.BlindIndexes` or :class:`~engine.blind_index.IndexDefinition`
            objects, or a sequence of them; or give them per column in :class:`Column`). Each
            belongs to the first of its columns the job has: where that column's value moves to
            the new version, the row's index values are computed from its plaintext under the
            same version and written in the same statement, with the same check (the other
            columns the index reads must still hold what was read). A row whose index cannot
            be computed is left as it is and counted as ``unindexable``.
        observer: called as ``observer("read", {"partition": i, "keys": [...]})`` between a
            batch's cryptography and its write (inline and local workers; tests use it).

    Returns:
        A :class:`ReencryptionReport` of the whole table: what this run and the interrupted
        runs it resumed found: scanned, re-encrypted, already current, changed meanwhile (left
        for the next pass), failed (by key and reason); ``resumed_rows`` of them counted by
        the earlier runs; duration and rows/s of this run.

    Raises:
        UnknownStore, TableNotFound, ColumnNotFound, NotEncrypted, WrongKeyOrAad: bad input;
            nothing was written.
        StoreUnavailable, SchedulerUnavailable, WorkerKeyMismatch, WorkerLost: the job
            stopped; what it committed stays, and a new run resumes from its checkpoints.
        ReencryptionInterrupted: Ctrl-C; its ``report`` says what was done so far.
        KeyVersionNotUsable: the current key version may not encrypt.
    """
    job = _Job(store, columns, aad, indexes, service, service_factory, dask, dask_timeout,
               batch_size, max_failures, check_only=False)
    try:
        job.validate()
        parts = job.partitions(workers, partitions, persist=True)
        earlier = job.earlier(parts)
        job.total_values = job.rows * len(job.columns)
        job.scanned_values = sum(c.values for c in earlier.columns.values())
        job.record(audit_events.REENCRYPTION_STARTED, store=store.display, table=store.table,
                   columns=[c.name for c in job.columns],
                   **({"blind_indexes": job.index_names} if job.index_names else {}),
                   target_version=job.target,
                   values_to_scan=job.total_values, partitions=len(parts),
                   **({"resumed_rows": earlier.rows} if earlier.rows else {}))
        started = time.perf_counter()
        result = PartitionResult(columns={c.name: ColumnCounts() for c in job.columns})
        stopped: BaseException | None = None
        try:
            run_partitions(job.spec, [p for p in parts if not p.finished], service=job.service,
                           workers=workers, dask=job.dask,
                           on_batch=job.batch_callback(progress, earlier.rows),
                           on_partition=job.partition_callback(), observer=observer,
                           total=result)
        except BaseException as exc:  # reported below, then raised again
            stopped = exc
        duration = time.perf_counter() - started
        if stopped is not None:
            job.release(parts)
        done = job.committed(earlier, result)
        report = ReencryptionReport(store.display, store.table, done.columns, done.rows,
                                    done.failures, done.failures_total, duration,
                                    target_version=job.target,
                                    complete=stopped is None and done.complete,
                                    resumed_rows=earlier.rows)
        job.record(audit_events.REENCRYPTION_COMPLETED, store=store.display,
                   table=store.table, target_version=job.target, complete=report.complete,
                   scanned=report.scanned, reencrypted=report.reencrypted,
                   already_current=report.already_current, changed=report.changed,
                   failed=report.failed,
                   failed_by_reason={r: sum(getattr(c, r) for c in done.columns.values())
                                     for r in ("unknown_key_version", "malformed",
                                               "invalid_tag", "unindexable")},
                   duration_s=round(duration, 3))
        if isinstance(stopped, KeyboardInterrupt):
            raise ReencryptionInterrupted(report) from None
        if stopped is not None:
            raise stopped
        job.forget()
        return report
    finally:
        job.close()


def handover(store: Any, columns: Sequence[Any], **options: Any
             ) -> Callable[[Any], ReencryptionReport]:
    """A re-encryption hand-over for :class:`engine.KeyRotationService`:
    ``KeyRotationService(provider, on_rotated=handover(store, ["ssn"], ...))`` re-encrypts
    the columns right after each successful rotation (in the rotating thread, once the
    rotation lock is released). ``options`` are those of :func:`reencrypt`.
    """
    def on_rotated(_result: Any) -> ReencryptionReport:
        return reencrypt(store, columns, **options)

    return on_rotated


@dataclass(frozen=True)
class ServiceFromConfig:
    """Builds a worker's service from the coordinator's provider configuration (picklable, no
    secret: the worker reads its own master key or Vault credentials)."""

    config: ProviderConfig

    def __call__(self) -> EncryptionService:
        return EncryptionService(self.config.build())


def _worker_factory(service: EncryptionService | None) -> Callable[[], EncryptionService]:
    """How workers build their service: from the given service's provider configuration, or
    (none given, or keys that exist only in this process) from the worker's environment."""
    if service is None:
        return get_encryption_service
    try:
        return ServiceFromConfig(service.provider.config())
    except KeyProviderError:
        return get_encryption_service


class _Job:
    """What both jobs set up: columns, services, validation, partitions, callbacks."""

    def __init__(self, store: Any, columns: Sequence[Any], aad: Any, indexes: Any,
                 service: EncryptionService | None,
                 service_factory: Callable[[], EncryptionService] | None, dask: Any,
                 dask_timeout: float | None, batch_size: int, max_failures: int, *,
                 check_only: bool) -> None:
        if not isinstance(store, Store):
            raise InvalidArgumentType(f"store must come from open_store(...), not "
                                      f"{type(store).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgument("batch_size must be a positive integer")
        if (isinstance(max_failures, bool) or not isinstance(max_failures, int)
                or max_failures < 0):
            raise InvalidArgument("max_failures must be a non-negative integer (the failures "
                                  "listed by key; all are counted)")
        if dask_timeout is not None and (
                isinstance(dask_timeout, bool) or not isinstance(dask_timeout, (int, float))
                or not 0 < dask_timeout < math.inf):
            raise InvalidArgument("dask_timeout must be a positive, finite number of seconds")
        self.store = store
        self.columns = tuple(as_columns(columns, aad, indexes))
        if check_only:  # an inventory only reads the values
            self.columns = tuple(replace(c, indexes=()) for c in self.columns)
        self.index_names = sorted(d.name for c in self.columns for d in c.indexes)
        self.factory = service_factory or _worker_factory(service)
        self.service = service if service is not None else self.factory()
        self.target = self.service.provider.get_current_key().version
        self.batch_size = batch_size
        self.check_only = check_only
        self.rows = 0
        self.total_values = 0
        self.scanned_values = 0
        self.job_id = ":".join([str(store.table or ""), str(store.key or ""),
                                ",".join(sorted(c.name for c in self.columns)
                                         + [f"+{name}" for name in self.index_names]),
                                f"v{self.target}", _digest(self.columns)])
        self.spec = JobSpec(store, self.columns, self.job_id, batch_size, check_only,
                            self.factory, KeyCheck.of(self.service), max_failures)
        # last: nothing after it may fail and leave the connection open
        self.dask = DaskExecutor(dask, dask_timeout) if dask is not None else None

    def close(self) -> None:
        if self.dask is not None:
            self.dask.close()

    def record(self, event: str, **details: Any) -> None:
        if self.service.audit is not None:
            self.service.audit.record(event, **details)

    # ---- before anything is written ----

    def validate(self) -> None:
        """Checks the store and the first rows of every column (see the module docstring)."""
        self.rows, first = self.store.prepare(self.columns, check_only=self.check_only,
                                              sample_rows=min(self.batch_size, SAMPLE_ROWS))
        indexes = build_indexes(self.columns, self.service.provider)
        for index in indexes.values():
            index.check_key(self.target)
        if first is None or first.num_rows == 0:
            return
        resealed = reseal(first, self.columns, self.service, check_only=True)
        for column, outcome in zip(self.columns, resealed.columns):
            _judge_sample(column, outcome.status, self.check_only)
        for name in row_fields(self.columns):
            _judge_index_field(name, column_of(first, name), self.service)
        matches = stored_index_matches(first, self.columns, self.service, indexes)
        for name, (matched, compared) in matches.items():
            if compared and not matched:
                raise IndexMismatch(
                    f"blind index {name!r}: none of the {compared} index values sampled is the "
                    "one it computes from its row under the row's key version; give it the "
                    "application's normaliser, bits and table (--index-table), and check that "
                    "no job without it moved these rows")

    def partitions(self, workers: int, count: int | None, *, persist: bool) -> list[Partition]:
        if not isinstance(workers, int) or workers < 0:
            raise InvalidArgument("workers must be a non-negative integer")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise InvalidArgument("partitions must be a positive integer")
        if count is None:
            count = 2 * self.dask.threads() if self.dask is not None else 1
        return self.store.job_partitions(self.job_id, count, persist=persist)

    def earlier(self, parts: Sequence[Partition]) -> PartitionResult:
        """What the interrupted runs this one resumes found (nothing for a new pass)."""
        found = PartitionResult(columns={c.name: ColumnCounts() for c in self.columns})
        for part in parts:
            if part.earlier is not None:
                found.merge(part.earlier, self.spec.max_failures)
        return found

    def release(self, parts: Sequence[Partition]) -> None:
        """The job stopped: partitions still running elsewhere (Dask tasks) stop at their next
        batch, so that what the report says was committed stays so."""
        run = next((p.run for p in parts if p.run is not None), None)
        if run is None:
            return
        try:
            self.store.release_job(self.job_id, run)
        except ReencryptionError:  # the database is gone: nothing commits there either
            pass

    def committed(self, earlier: PartitionResult, result: PartitionResult) -> PartitionResult:
        """What every run of the job committed: a table's checkpoints hold it (they count the
        batches of a partition that did not finish, which ``result`` does not); else
        ``earlier`` and this run's ``result``."""
        found = None
        try:
            found = self.store.job_results(self.job_id, self.spec.max_failures)
        except (ReencryptionError, ValueError, KeyError, TypeError):
            pass  # the database is gone, or a record damaged: what this process knows
        if found is not None:
            for column in self.columns:
                found.columns.setdefault(column.name, ColumnCounts())
            return found
        done = PartitionResult(columns={c.name: ColumnCounts() for c in self.columns})
        done.merge(earlier, self.spec.max_failures)
        done.merge(result, self.spec.max_failures)
        return done

    def forget(self) -> None:
        """The job is complete: its checkpoints go, and a later run makes a new pass."""
        self.store.forget_job(self.job_id)

    # ---- while it runs ----

    def progress_callback(self, progress: Progress | None, resumed: int = 0) -> Any:
        """``progress(done, total)`` after each batch; called once now, so that a progress
        bar shows the total (and what earlier runs did) before the first batch is through."""
        done = [resumed]
        if progress is not None:
            progress(resumed, self.rows)

        def on_batch(rows: int, _delta: Any) -> None:
            done[0] += rows
            if progress is not None:
                progress(done[0], self.rows)

        return on_batch

    def batch_callback(self, progress: Progress | None, resumed: int = 0) -> Any:
        """Progress (from ``resumed`` rows an earlier run did), and metrics for batches
        counted in this process."""
        advance = self.progress_callback(progress, resumed)

        def on_batch(rows: int, delta: dict[str, ColumnCounts] | None) -> None:
            advance(rows, delta)
            if delta is not None:
                self._count(delta.values())

        return on_batch

    def partition_callback(self) -> Any:
        def on_partition(part: Partition, result: PartitionResult, counted: bool) -> None:
            self.store.partition_done(self.job_id, part, result)
            if not counted:
                self._count(result.columns.values())

        return on_partition

    def _count(self, counts: Any) -> None:
        """Metrics for values the job is done with."""
        metrics = self.service.metrics
        if metrics is None:
            return
        counts = list(counts)
        self.scanned_values += sum(c.values for c in counts)
        metrics.reencryption_progress(
            reencrypted=sum(c.reencrypted for c in counts),
            skipped=sum(c.current + c.null + c.changed for c in counts),
            failed=sum(c.failed for c in counts),
            remaining=self.total_values - self.scanned_values)


def _digest(columns: Sequence[Column]) -> str:
    """A short digest of what the job does to each column: its AAD rule, layout and blind
    indexes (normalisers by name; a callable by its qualified name)."""
    def normaliser(spec: Any) -> str:
        if isinstance(spec, str):
            return spec
        return f"{getattr(spec, '__module__', '')}.{getattr(spec, '__qualname__', repr(spec))}"

    text = repr(sorted(
        (c.name, c.aad.describe(), c.sealed.names() if c.sealed is not None else None,
         sorted((d.name, d.table, d.columns, tuple(map(normaliser, d.normalizers)), d.bits)
                for d in c.indexes))
        for c in columns))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _judge_index_field(name: str, values: Any, service: EncryptionService) -> None:
    """A plain column a blind index reads must not hold ciphertexts: the index would hash
    them, not the plaintexts the application hashed, and no lookup would find the row."""
    import pyarrow as pa

    if pa.types.is_integer(values.type):
        return
    status = service.reencrypt_many(values, check_only=True).status
    if bool(np.isin(status, (ValueStatus.MALFORMED, ValueStatus.NULL), invert=True).any()):
        raise ColumnNotFound(f"column {name!r}, which a blind index reads, holds ciphertexts: "
                             "give it to the job as one of its columns")


def _judge_sample(column: Column, status: np.ndarray, check_only: bool) -> None:
    present = status[status != ValueStatus.NULL]
    if not present.shape[0]:
        return
    if bool((present == ValueStatus.MALFORMED).all()):
        raise NotEncrypted(
            f"column {column.name!r}: none of its first {present.shape[0]} values is a "
            "ciphertext of the engine (a token or the JSON shape); is it plain text?")
    if not check_only and bool((present == ValueStatus.INVALID_TAG).all()):
        raise WrongKeyOrAad(
            f"column {column.name!r}: all of its first {present.shape[0]} values fail "
            f"authentication; check its AAD rule ({column.aad.describe()}) and the key "
            "configuration")


