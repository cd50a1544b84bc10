"""Where a job's partitions run: in this process, on local worker processes, or on a Dask
cluster.

- Inline: every partition in this process, the cryptography on a helper thread.
- Worker processes, for a table: this process reads and writes (one connection, one writer,
  which is what SQLite wants), and a pool of processes does the cryptography; batches go to
  them and come back as Arrow IPC streams (:mod:`engine.reencrypt.transform`).
- Worker processes, for Parquet: each process rewrites whole files (a file is the unit).
- Dask distributed: each partition (a key range, or a file) is a task that opens its own
  connection on whichever worker runs it.

A worker never receives a key: it builds its service with the job's picklable
``service_factory`` (default: from the provider configuration of the service given, else
:func:`engine.get_encryption_service` from the worker's own environment) and checks it against
the coordinator's key before sealing anything.

Local worker processes ignore SIGINT: Ctrl-C reaches the whole foreground process group, and
the coordinator alone stops the job (see :class:`~engine.reencrypt.ReencryptionInterrupted`).
A worker that dies stops the job with :class:`~engine.reencrypt.WorkerLost`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import os
import pickle
import queue
import signal
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterator, Sequence

from ..buffers import default_threads
from ..errors import InvalidArgument
from ..service import EncryptionService
from .errors import ReencryptionError, SchedulerUnavailable, WorkerLost
from .partition import JobSpec, LocalCrypto, Observer, OnBatch, process_partition
from .reindex import worker_indexes
from .report import ColumnCounts, PartitionResult
from .stores.sql import Partition
from .transform import Resealed, from_ipc, reseal, to_ipc, worker_service

__all__ = ["DaskExecutor", "run_partitions"]

OnPartition = Callable[[Partition, PartitionResult, bool], None]
DASK_CONNECT_TIMEOUT_S = 10.0
PROGRESS_INTERVAL_S = 0.2  # how often the coordinator reads the workers' batch reports


def _spawn() -> Any:
    # spawn, not fork: the coordinator may hold threads (pyarrow's, Dask's) and connections
    return multiprocessing.get_context("spawn")


def _pool(workers: int, progress: Any = None) -> concurrent.futures.ProcessPoolExecutor:
    """Worker processes; with ``progress`` (a queue of the spawn context), each reports the
    rows of every batch of a partition it runs as ``(partition index, rows)``."""
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=_spawn(),
                                                  initializer=_start_worker,
                                                  initargs=(progress,))


_PROGRESS: Any = None  # in a worker process: where its partitions report their batches


def _start_worker(progress: Any) -> None:
    global _PROGRESS
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _PROGRESS = progress


@contextlib.contextmanager
def _worker_deaths() -> Iterator[None]:
    """A broken process pool (a worker was killed) as :class:`WorkerLost`."""
    lost = False
    try:
        yield
    except BrokenProcessPool:
        lost = True
    if lost:  # raised outside the handler: one clear error, no chained traceback
        raise WorkerLost("a worker process died (killed, or out of memory); what the job "
                         "committed stays: run it again to resume")


def _reseal_ipc(payload: bytes, spec: JobSpec) -> bytes:
    """In a worker process: one batch in, its results out, both as Arrow IPC."""
    service = worker_service(spec.service_factory, spec.key_check)
    indexes = worker_indexes(spec.service_factory, spec.columns, service, spec.threads)
    return reseal(from_ipc(payload), spec.columns, service, check_only=spec.check_only,
                  threads=spec.threads, indexes=indexes).to_ipc()


def _run_task(spec: JobSpec, part: Partition, progress_topic: str | None = None
              ) -> PartitionResult:
    """In a worker process or on a Dask worker: one whole partition, with this process's own
    service and connection. Each batch's rows are reported as ``(partition index, rows)``: on
    the queue of a local worker process, or as an event of ``progress_topic`` on Dask."""
    crypto = LocalCrypto(worker_service(spec.service_factory, spec.key_check), spec)
    progress = _PROGRESS
    on_batch: OnBatch | None = None
    if progress is not None:
        on_batch = lambda rows, _counts: progress.put((part.index, rows))  # noqa: E731
    elif progress_topic is not None:
        import distributed

        worker = distributed.get_worker()
        on_batch = lambda rows, _counts: worker.log_event(  # noqa: E731
            progress_topic, (part.index, rows))
    try:
        return process_partition(spec, part, crypto, on_batch=on_batch)
    finally:
        crypto.close()


class _IpcFuture:
    def __init__(self, future: concurrent.futures.Future) -> None:
        self._future = future

    def result(self) -> Resealed:
        return Resealed.from_ipc(self._future.result())

    def cancel(self) -> bool:
        return self._future.cancel()


class PoolCrypto:
    """The cryptography on ``workers`` processes, fed Arrow IPC; ``workers + 1`` batches in
    flight keep them busy while this process reads and writes."""

    def __init__(self, spec: JobSpec, workers: int) -> None:
        self._spec = spec
        self.depth = workers + 1
        self._pool = _pool(workers)

    def submit(self, table: Any) -> _IpcFuture:
        return _IpcFuture(self._pool.submit(_reseal_ipc, to_ipc(table), self._spec))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    """A connection to a Dask scheduler (an address such as ``tcp://scheduler:8786``, or an
    existing ``distributed.Client``).

    Raises:
        SchedulerUnavailable: distributed is not installed, or the scheduler does not answer
            within ``timeout`` seconds.
    """

    def __init__(self, address: Any, timeout: float | None = None) -> None:
        timeout = DASK_CONNECT_TIMEOUT_S if timeout is None else timeout
        try:
            import distributed
        except ImportError:
            raise SchedulerUnavailable("Dask needs distributed: pip install 'dask[distributed]'"
                                       " (the engine's `dask` extra)") from None
        self._own = not isinstance(address, distributed.Client)
        if not self._own:
            self.client = address
            return
        _check_address(address)
        failure = None
        # built in two steps to keep hold of a client whose constructor fails: distributed
        # closes it only for some failures, and a client left half-open times out in its
        # __del__ with an "Exception ignored" traceback
        client = distributed.Client.__new__(distributed.Client)
        try:
            client.__init__(address, timeout=f"{timeout}s",  # type: ignore[misc]
                            set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            failure = f"{type(exc).__name__}: {exc}"
            _abandon(client)
        if failure is not None:
            raise SchedulerUnavailable(f"the Dask scheduler at {address} does not answer "
                                       f"({failure})")
        self.client = client

    def threads(self) -> int:
        """Worker threads in the cluster (at least 1)."""
        return max(1, sum(self.client.nthreads().values()))

    def close(self) -> None:
        if self._own:
            self.client.close()


def _check_address(address: Any) -> None:
    """Refuses an address distributed cannot read (it would fail inside the client).

    Raises:
        InvalidArgument: not text, an unknown scheme, a host without a port, a port out of
            range, a broken IPv6 literal.
    """
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port
    from distributed.comm.registry import get_backend

    problem = None
    if not isinstance(address, str) or not address:
        problem = "give it as tcp://host:port"
    else:
        try:
            scheme, location = parse_address(address)
            get_backend(scheme)
            if scheme in ("tcp", "tls", "ws", "wss"):
                _host, port = parse_host_port(location)
                if not 0 < int(port) < 65536:
                    problem = f"port {port} is out of range"
        except (ValueError, TypeError) as exc:
            problem = str(exc)
    if problem is not None:
        raise InvalidArgument(f"cannot read the Dask scheduler address {address!r}: {problem}")


def _abandon(client: Any) -> None:
    """Stops what a client that failed to start had started, so that its ``__del__`` has
    nothing left to close."""
    with contextlib.suppress(Exception):
        if getattr(client, "status", None) not in ("closed", "newly-created", None):
            client.status = "closed"
        runner = getattr(client, "_loop_runner", None)
        if runner is not None:
            runner.stop()


def run_partitions(spec: JobSpec, parts: Sequence[Partition], *, service: EncryptionService,
                   workers: int = 0, dask: DaskExecutor | None = None,
                   on_batch: OnBatch | None = None, on_partition: OnPartition | None = None,
                   observer: Observer | None = None,
                   total: PartitionResult | None = None) -> PartitionResult:
    """Runs every partition and merges their results (into ``total``, when given: what it
    holds when this raises is what the partitions that finished found).

    ``on_partition(part, result, counted)`` is called as each partition finishes, in this
    process; ``counted`` says whether ``on_batch`` already saw its batches.

    Raises:
        WorkerLost: a worker process died.
        SchedulerUnavailable: the Dask scheduler went away.
    """
    if total is None:
        total = PartitionResult(columns={c.name: ColumnCounts() for c in spec.columns})
    with _worker_deaths():
        return _run(spec, parts, service, workers, dask, on_batch, on_partition, observer, total)


def _run(spec: JobSpec, parts: Sequence[Partition], service: EncryptionService, workers: int,
         dask: DaskExecutor | None, on_batch: OnBatch | None, on_partition: OnPartition | None,
         observer: Observer | None, total: PartitionResult) -> PartitionResult:
    def finished(part: Partition, result: PartitionResult, counted: bool) -> None:
        total.merge(result, spec.max_failures)
        if on_partition is not None:
            on_partition(part, result, counted)

    if dask is not None:
        _run_on_dask(spec, parts, dask, on_batch, finished)
        return total
    if workers:
        # worker processes share the cores rather than each take them all
        spec = dataclasses.replace(spec, threads=spec.threads or
                                   max(1, default_threads() // workers))
    if workers and spec.store.writes_whole_partitions:  # a process takes a whole partition
        _check_picklable(spec)
        _run_whole_partitions(spec, parts, workers, on_batch, finished)
        return total
    if workers:
        _check_picklable(spec)
        crypto: Any = PoolCrypto(spec, workers)
    else:
        crypto = LocalCrypto(service, spec)
    try:
        for part in parts:
            result = process_partition(spec, part, crypto, on_batch=on_batch, observer=observer)
            finished(part, result, not spec.store.writes_whole_partitions)
    finally:
        crypto.close()
    return total


class _Progress:
    """The rows that workers report batch by batch, passed on to ``on_batch`` in this process.
    A partition's rows count once: when it ends, what its batches did not report yet; reports
    that arrive after that are dropped."""

    def __init__(self, on_batch: OnBatch | None) -> None:
        self._on_batch = on_batch
        self._reported: dict[int, int] = collections.defaultdict(int)
        self._ended: set[int] = set()

    def batch(self, index: int, rows: int) -> None:
        if self._on_batch is not None and index not in self._ended:
            self._reported[index] += rows
            self._on_batch(rows, None)

    def ended(self, part: Partition, result: PartitionResult) -> None:
        self._ended.add(part.index)
        if self._on_batch is not None and result.rows > self._reported[part.index]:
            self._on_batch(result.rows - self._reported[part.index], None)


def _run_whole_partitions(spec: JobSpec, parts: Sequence[Partition], workers: int,
                          on_batch: OnBatch | None,
                          finished: Callable[[Partition, PartitionResult, bool], None]) -> None:
    """Each partition on a worker process; with ``on_batch``, the rows of its batches are
    reported as the workers go (not only as each partition ends): a worker puts them on a
    queue that this process reads while it waits."""
    reports = _spawn().Queue() if on_batch is not None else None
    progress = _Progress(on_batch)
    readable = reports is not None

    def drain() -> None:
        nonlocal readable
        while readable and reports is not None:
            try:
                index, rows = reports.get_nowait()
            except queue.Empty:
                return
            except (EOFError, OSError, ValueError, pickle.UnpicklingError):
                readable = False  # a worker killed mid-report: its death is what counts
                return
            progress.batch(index, rows)

    try:
        with _pool(workers, reports) as pool:
            futures = {pool.submit(_run_task, spec, p): p for p in parts}
            pending = set(futures)
            try:
                while pending:
                    done, pending = concurrent.futures.wait(
                        pending, timeout=PROGRESS_INTERVAL_S,
                        return_when=concurrent.futures.FIRST_COMPLETED)
                    drain()
                    for future in done:
                        part, result = futures[future], future.result()
                        progress.ended(part, result)
                        finished(part, result, False)
            finally:
                for future in futures:
                    future.cancel()
    finally:
        if reports is not None:
            reports.close()
            reports.join_thread()


def _run_on_dask(spec: JobSpec, parts: Sequence[Partition], dask: DaskExecutor,
                 on_batch: OnBatch | None,
                 finished: Callable[[Partition, PartitionResult, bool], None]) -> None:
    """Each partition as a task; with ``on_batch``, the tasks report their batches as events
    of a topic of this job's own, read here while the tasks run."""
    import distributed

    reports: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
    topic = None
    if on_batch is not None:
        topic = f"engine-reencrypt-progress-{os.urandom(8).hex()}"
        dask.client.subscribe_topic(topic, lambda event: reports.put(tuple(event[1])))
    progress = _Progress(on_batch)

    def drain() -> None:
        while True:
            try:
                progress.batch(*reports.get_nowait())
            except queue.Empty:
                return

    futures = dask.client.map(_run_task, [spec] * len(parts), list(parts),
                              [topic] * len(parts), pure=False)
    by_key = {f.key: p for f, p in zip(futures, parts)}
    failure: ReencryptionError | None = None
    try:
        running = distributed.as_completed(futures, loop=dask.client.loop)
        while not running.is_empty():
            ready = running.next_batch(block=False)
            drain()
            if not ready:
                time.sleep(PROGRESS_INTERVAL_S)
            for future in ready:
                part, result = by_key[future.key], future.result()
                progress.ended(part, result)
                finished(part, result, False)
    except distributed.KilledWorker:
        failure = WorkerLost("Dask workers died running a partition (killed, or out of "
                             "memory); what the job committed stays: run it again to resume")
    except OSError as exc:  # the connection to the scheduler was lost
        failure = SchedulerUnavailable(f"the Dask scheduler went away ({type(exc).__name__}); "
                                       "what the job committed stays: run it again to resume")
    finally:
        with contextlib.suppress(Exception):
            dask.client.cancel(futures)
        if topic is not None:
            with contextlib.suppress(Exception):
                dask.client.unsubscribe_topic(topic)
    if failure is not None:
        raise failure


def _check_picklable(spec: JobSpec) -> None:
    for what, value, hint in (
            ("service_factory", spec.service_factory, "worker processes build their own "
             "service with it"),
            ("a blind index's normaliser", spec.columns, "worker processes compute the "
             "indexes")):
        failed = False
        try:
            pickle.dumps(value)
        except (pickle.PicklingError, TypeError, AttributeError):
            failed = True
        if failed:
            raise InvalidArgument(f"{what} must pickle (a module-level function or a "
                                  f"picklable object): {hint}")
