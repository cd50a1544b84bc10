"""Whole datasets: named columns of every data file of a directory, a hive-partitioned dataset
or a ``pyarrow.dataset.Dataset`` encrypted or decrypted into an output directory of the same
layout, file by file through :func:`engine.tables.encrypt_columns_file` and
:func:`engine.tables.decrypt_columns_file`, on worker processes or a Dask cluster, resumably.

Layout: each data file of the input becomes the file of the same relative path under the
output (partition directories such as ``year=2024/`` kept; only directories that hold a data
file are made). What is a data file: a name that starts with neither ``_`` nor ``.`` (pyarrow's
and Spark's rule), in a directory that does not either, with the extension ``.parquet``, ``.pq``
or ``.csv`` (or, with ``file_format``, any other extension). Every other file is **not copied**
and is reported as ``ignored``: ``_metadata`` and ``_common_metadata`` hold the plaintext
schema and the plaintext min/max statistics of every row group, ``_SUCCESS`` and ``.crc``
markers describe the input's bytes, and a file of unknown content may hold plaintext. A column
that is a hive partition key is refused: its values are directory names, which are not
encrypted.

Resume: the output directory holds a job record (``_engine_columns_job.json``, skipped by
dataset readers for its ``_``) naming each file committed, with the size and modification time
of its input and its output. A rerun of the same job (same operation, columns, AAD template and
indexes) skips a file only when both still match and the output checks: an encrypted output is
read whole and every value of its encrypted columns authenticates (Parquet: decrypted in
memory; CSV: into an unnamed temporary file that is never linked); a decrypted output, which
cannot be authenticated, is read whole and must have the recorded number of rows. Every other
file is written again. Outputs appear only when complete
(:func:`engine.atomic_file.atomic_output`), so a SIGKILL leaves committed files and nothing
half-written; the record is removed once every file is done.

Workers: this process and ``workers - 1`` worker processes take the files from one queue.
Services cannot be pickled, so each worker process builds its own from its environment
(:func:`engine.get_encryption_service`), or with ``service_factory`` (a picklable callable), and
checks it against the job's key before it encrypts anything. The job uses fewer processes
than asked when more would be slower: never more than the files, the cores this process may
run on or the cores the rest of the machine leaves free (its load average), and none beside
this process when the data is too small to pay for starting them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import queue
import signal
import string
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from .atomic_file import atomic_output
from .buffers import default_threads
from .errors import EngineError, InvalidArgument, InvalidArgumentType
from .locks import fork_safe_lock
from .service import EncryptionService, get_encryption_service

__all__ = ["DatasetReport", "FileReport", "WorkerLost", "dataset_files", "decrypt_dataset",
           "encrypt_dataset"]

DATA_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
JOB_RECORD = "_engine_columns_job.json"
# Below this many input bytes left to write, starting worker processes (each imports pyarrow
# and the engine, about a second) costs more than it saves: the job runs in this process.
SMALL_DATASET_BYTES = 16 << 20


class WorkerLost(EngineError, RuntimeError):
    """A worker process died (killed, out of memory): the job stopped; the files it committed
    stay, and a new run resumes from them."""


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset: its path relative to the dataset's root, and its format (None:
    not a data file, ``reason`` says why)."""

    relative: str
    format: str | None
    reason: str = ""


@dataclass
class FileReport:
    """What became of one file. ``status``: ``written``; ``skipped`` (a resumed job found its
    output done and checked it); ``failed`` (``error`` says why, naming the file); ``ignored``
    (not a data file, not copied: ``note`` says why)."""

    path: str
    status: str
    rows: int | None = None
    error: BaseException | None = None
    note: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {"path": self.path, "status": self.status, "rows": self.rows,
               "error": None if self.error is None else str(self.error)}
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class DatasetReport:
    """The report of a whole dataset: one :class:`FileReport` per file, in path order."""

    operation: str
    source: str
    output: str
    columns: list[str]
    workers: int
    files: list[FileReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(f.rows or 0 for f in self.files if f.status in ("written", "skipped"))

    @property
    def failed(self) -> list[FileReport]:
        return [f for f in self.files if f.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        counts = {s: sum(f.status == s for f in self.files)
                  for s in ("written", "skipped", "failed", "ignored")}
        return {"operation": self.operation, "source": self.source, "output": self.output,
                "columns": self.columns, "workers": self.workers,
                "files": [f.to_dict() for f in self.files],
                "totals": {"files": len(self.files), **counts, "rows": self.rows},
                "seconds": self.seconds}


# ---- what the dataset is ----------------------------------------------------------------------

def _hidden(name: str) -> bool:
    return name.startswith(("_", "."))


def _file_format(name: str, file_format: str | None) -> str | None:
    return DATA_EXTENSIONS.get(os.path.splitext(name)[1].lower(), file_format)


def dataset_files(root: str, file_format: str | None = None) -> list[DataFile]:
    """Every file under the directory ``root``, sorted by relative path, each said to be a
    data file (with its format) or not (see the module's docstring).

    Raises:
        InvalidArgument: ``file_format`` is neither parquet nor csv.
        OSError: ``root`` cannot be listed.
    """
    if file_format not in (None, "parquet", "csv"):
        raise InvalidArgument(f"unknown format {file_format!r}")
    found: list[DataFile] = []

    def failed(exc: OSError) -> None:
        raise exc

    for directory, dirs, names in os.walk(root, onerror=failed):
        dirs.sort()
        rel_dir = os.path.relpath(directory, root)
        hidden_dir = rel_dir != "." and any(_hidden(p) for p in rel_dir.split(os.sep))
        for name in sorted(names):
            rel = os.path.normpath(os.path.join(rel_dir, name))
            fmt = _file_format(name, file_format)
            if hidden_dir or _hidden(name):
                found.append(DataFile(rel, None, "a name starting with _ or . (metadata, "
                                                 "markers or temporaries): not copied"))
            elif fmt is None:
                found.append(DataFile(rel, None, "not a .parquet, .pq or .csv file (give "
                                                 "--format for other names): not copied"))
            else:
                found.append(DataFile(rel, fmt))
    return sorted(found, key=lambda f: f.relative)


def _partition_keys(files: Sequence[DataFile]) -> set[str]:
    return {part.split("=", 1)[0] for f in files if f.format
            for part in os.path.dirname(f.relative).split(os.sep) if "=" in part}


def _from_dataset(dataset: Any) -> tuple[str, list[DataFile]]:
    """(the root, the files) of a ``pyarrow.dataset.FileSystemDataset`` on the local disk."""
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    if not isinstance(dataset, ds.FileSystemDataset) or not isinstance(
            dataset.filesystem, pafs.LocalFileSystem):
        raise InvalidArgumentType("a pyarrow Dataset must be a FileSystemDataset on the local "
                                  "file system")
    fmt = {"ParquetFileFormat": "parquet", "CsvFileFormat": "csv"}.get(
        type(dataset.format).__name__)
    if fmt is None:
        raise InvalidArgumentType(f"a dataset of {type(dataset.format).__name__} files; "
                                  "Parquet or CSV only")
    paths = [os.path.abspath(p) for p in dataset.files]
    if not paths:
        raise InvalidArgument("the dataset holds no file")
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    while "=" in os.path.basename(root):  # a hive partition directory is part of the layout
        root = os.path.dirname(root)
    return root, sorted((DataFile(os.path.relpath(p, root), fmt) for p in paths),
                        key=lambda f: f.relative)


def _template_fields(aad_template: str | None) -> set[str]:
    """The names an AAD template reads (a template that does not parse is refused later, by
    the per-file functions, with their own words)."""
    try:
        return {f for _, f, _, _ in string.Formatter().parse(aad_template or "") if f}
    except (ValueError, TypeError):
        return set()


def _inside(a: str, b: str) -> bool:
    a, b = os.path.realpath(a), os.path.realpath(b)
    return os.path.commonpath([a, b]) == b


# ---- one file, in whichever process runs it ----------------------------------------------------

@dataclass(frozen=True)
class FileTask:
    """Everything a worker needs for one file; it pickles (no key, no service)."""

    src: str
    dst: str
    relative: str
    format: str
    columns: tuple[str, ...]
    aad_template: str | None
    encrypt: bool
    blind_indexes: Any = None
    service_factory: Callable[[], EncryptionService] | None = None
    recorded_rows: int | None = None  # set: a resumed job checks the output before writing
    key_check: Any = None  # in a worker: proof that its key is the job's (KeyCheck)


class _CheckDone(Exception):
    """Raised by ``before_commit`` to end a decryption that only checks a file."""


def _service(task: FileTask, service: EncryptionService | None) -> EncryptionService:
    """The service given (this process), else the worker's own, built once per process and
    checked against the job's key: a worker configured with another master key or Vault
    would encrypt under a key the application does not hold."""
    if service is not None:
        return service
    from .reencrypt.transform import worker_service

    return worker_service(task.service_factory or get_encryption_service, task.key_check)


def _output_checks(task: FileTask, service: EncryptionService) -> bool:
    """Whether the existing output of ``task`` is complete (and, encrypted, authenticates)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from .tables import decrypt_columns, decrypt_columns_file

    try:
        if task.format == "parquet":
            reader = pq.ParquetFile(task.dst)
            if reader.metadata.num_rows != task.recorded_rows:
                return False
            for i in range(reader.num_row_groups):
                group = reader.read_row_group(i)
                group.validate(full=True)
                if task.encrypt:
                    decrypt_columns(group, list(task.columns), aad_template=task.aad_template,
                                    service=service)
            return True
        if task.encrypt:
            def cancel() -> None:
                raise _CheckDone

            with contextlib.suppress(_CheckDone):
                decrypt_columns_file(task.dst, task.dst, list(task.columns),
                                     aad_template=task.aad_template, file_format="csv",
                                     service=service, before_commit=cancel)
        rows = sum(b.num_rows for b in pacsv.open_csv(task.dst))
        return rows == task.recorded_rows
    except (EngineError, OSError, pa.ArrowException, ValueError):
        return False


def run_file(task: FileTask, service: EncryptionService | None = None) -> FileReport:
    """One file of a dataset: checked and skipped (a resumed job), or written. Every error is
    returned in the report (it names the file), not raised; in a worker process or on a Dask
    worker, ``service`` is None and the task's factory or the environment builds it."""
    from .tables import decrypt_columns_file, encrypt_columns_file

    start = time.perf_counter()
    error: BaseException | None = None
    try:
        service = _service(task, service)
        if task.recorded_rows is not None and _output_checks(task, service):
            return FileReport(task.relative, "skipped", task.recorded_rows,
                              note="done by an earlier run; checked",
                              seconds=time.perf_counter() - start)
        os.makedirs(os.path.dirname(task.dst) or ".", exist_ok=True)
        options = {"blind_indexes": task.blind_indexes} if task.encrypt else {}
        run = encrypt_columns_file if task.encrypt else decrypt_columns_file
        report = run(task.src, task.dst, list(task.columns), aad_template=task.aad_template,
                     file_format=task.format, service=service, **options)
        return FileReport(task.relative, "written", report["rows"],
                          seconds=time.perf_counter() - start)
    except (EngineError, OSError) as exc:
        error = _portable(exc)
    return FileReport(task.relative, "failed", error=error, seconds=time.perf_counter() - start)


def _portable(exc: BaseException) -> BaseException:
    """``exc``, or an :class:`EngineError` saying the same when it would not survive pickling
    on its way back from a worker."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any exception that does not travel is restated
        exc = EngineError(str(exc))
    return exc


# ---- the job record (resume) -------------------------------------------------------------------

def _stat(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


class _JobRecord:
    """The files a job committed, in ``JOB_RECORD`` at the output's root, rewritten atomically
    after each file; only this (coordinating) process writes it."""

    def __init__(self, root: str, job: str) -> None:
        self.path = os.path.join(root, JOB_RECORD)
        self.job = job
        self.files: dict[str, dict[str, Any]] = {}
        try:
            with open(self.path, encoding="utf-8") as f:
                saved = json.load(f)
            if isinstance(saved, dict) and saved.get("job") == job and isinstance(
                    saved.get("files"), dict):
                self.files = saved["files"]
        except (OSError, ValueError):
            pass  # no record, or one of another job or damaged: every file is written

    def done_rows(self, relative: str, src: str, dst: str) -> int | None:
        """The rows recorded for a file whose input and output are as they were committed."""
        entry = self.files.get(relative)
        if not isinstance(entry, dict) or not isinstance(entry.get("rows"), int):
            return None
        if entry.get("source") != _stat(src) or entry.get("output") != _stat(dst):
            return None
        return entry["rows"]

    def add(self, relative: str, src: str, dst: str, rows: int) -> None:
        self.files[relative] = {"source": _stat(src), "output": _stat(dst), "rows": rows}
        data = json.dumps({"job": self.job, "files": self.files}, sort_keys=True).encode()
        with atomic_output(self.path) as out:
            out.write(data)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _job_id(encrypt: bool, columns: Sequence[str], aad_template: str | None,
            blind_indexes: Any) -> str:
    indexes = [repr(i) for i in (blind_indexes or [])]
    text = json.dumps([encrypt, list(columns), aad_template, indexes])
    return hashlib.sha256(text.encode()).hexdigest()


# ---- the job -----------------------------------------------------------------------------------

def _cores_taken_by_others() -> float:
    """Cores that other processes kept busy over the last minute (the load average, less this
    process): on a shared machine, a second worker may find no core to run on."""
    try:
        return max(0.0, os.getloadavg()[0] - 1.0)
    except OSError:
        return 0.0


def _choose_workers(asked: int, tasks: Sequence[FileTask]) -> int:
    """At most ``asked``, the files, the cores this process may use and the cores the rest of
    the machine leaves free; 1 for a dataset too small to pay for starting processes."""
    size = sum((_stat(t.src) or [0])[0] for t in tasks)
    if asked <= 1 or len(tasks) < 2 or size < SMALL_DATASET_BYTES:
        return 1
    cores = default_threads()
    free = int(cores - _cores_taken_by_others() + 0.5)
    return max(1, min(asked, len(tasks), cores, free))


def _rows_of(task: FileTask) -> int | None:
    """A file's rows from its Parquet footer (None for CSV, or a footer that cannot be read:
    the file's own run reports that)."""
    if task.format != "parquet":
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(task.src).num_rows
    except (pa.ArrowException, OSError):
        return None


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _process_pool(workers: int) -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    """Worker processes that ignore SIGINT (Ctrl-C reaches the whole process group: this
    process alone stops the job); on any exit other than a normal one they are killed, so
    their unfinished outputs vanish with them."""
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_sigint)
    normal = False
    try:
        yield pool
        normal = True
    finally:
        if not normal:
            # ProcessPoolExecutor has no public kill before Python 3.14 (kill_workers)
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                with contextlib.suppress(OSError):
                    process.kill()
        pool.shutdown(wait=normal, cancel_futures=True)


def _run_on(executor: Any, tasks: Sequence[FileTask],
            finished: Callable[[FileTask, FileReport], None]) -> None:
    """Every file on ``executor`` (a Dask client's, say), results taken as they come."""
    futures = {executor.submit(run_file, task): task for task in tasks}
    try:
        for future in concurrent.futures.as_completed(futures):
            finished(futures[future], future.result())
    finally:
        for future in futures:
            future.cancel()


def _share(pool: concurrent.futures.ProcessPoolExecutor, in_pool: int,
           tasks: Sequence[FileTask], service: EncryptionService,
           finished: Callable[[FileTask, FileReport], None]) -> bool:
    """The files shared between this process and ``in_pool`` worker processes: each worker has
    two files queued (the next one is sent as one ends), and this process takes the next file
    whenever it is free, so the workers' start (a fresh interpreter each) does not hold the job
    back. Returns False when a worker died."""
    pending = collections.deque(tasks)
    lock = fork_safe_lock()
    results: queue.SimpleQueue = queue.SimpleQueue()

    def take() -> FileTask | None:
        with lock:
            return pending.popleft() if pending else None

    def feed() -> None:  # also on the pool's thread, as a file ends
        task = take()
        if task is None:
            return
        try:
            future = pool.submit(run_file, task)
        except (BrokenProcessPool, RuntimeError) as exc:  # broken, or shut down: job stopping
            results.put((task, exc))
            return

        def done(f: concurrent.futures.Future[Any], task: FileTask = task) -> None:
            results.put((task, f))
            feed()

        future.add_done_callback(done)

    def collect(item: tuple[FileTask, Any]) -> bool:
        task, outcome = item
        try:
            report = outcome.result() if isinstance(outcome, concurrent.futures.Future) else None
        except BrokenProcessPool:
            report = None
        if report is None:
            return False
        finished(task, report)
        return True

    try:
        for _ in range(2 * in_pool):
            feed()
        done = 0
        while done < len(tasks):
            with contextlib.suppress(queue.Empty):
                while True:
                    if not collect(results.get_nowait()):
                        return False
                    done += 1
            task = take()
            if task is not None:
                finished(task, run_file(task, service))
                done += 1
            elif done < len(tasks):
                with contextlib.suppress(queue.Empty):
                    if not collect(results.get(timeout=0.2)):
                        return False
                    done += 1
        return True
    finally:
        with lock:
            pending.clear()  # nothing more is sent to the workers


def _one_file(src: str, dst: str, columns: list[str], encrypt: bool, aad_template: str | None,
              file_format: str | None, service: EncryptionService | None, blind_indexes: Any,
              start: float) -> DatasetReport:
    """A single file into the file ``dst``, reported like a dataset of one file (its errors
    are raised, as the per-file functions raise them)."""
    from .tables import decrypt_columns_file, encrypt_columns_file

    options = {"blind_indexes": blind_indexes} if encrypt else {}
    run = encrypt_columns_file if encrypt else decrypt_columns_file
    done = run(src, dst, columns, aad_template=aad_template, file_format=file_format,
               service=service, **options)
    report = DatasetReport("encrypt-columns" if encrypt else "decrypt-columns", src, dst,
                           columns, 1, [FileReport(os.path.basename(src), "written", done["rows"])])
    report.seconds = time.perf_counter() - start
    return report


def _run(src: Any, dst: str, columns: str | Sequence[str], encrypt: bool, *,
         aad_template: str | None, file_format: str | None, workers: int,
         service: EncryptionService | None,
         service_factory: Callable[[], EncryptionService] | None, blind_indexes: Any,
         executor: Any, progress: Callable[[int, int | None], None] | None) -> DatasetReport:
    start = time.perf_counter()
    columns = [columns] if isinstance(columns, str) else list(columns)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise InvalidArgument("workers must be an integer of at least 1")
    if isinstance(src, (str, os.PathLike)):
        src = os.fspath(src)
        if not os.path.isdir(src):
            return _one_file(src, os.fspath(dst), columns, encrypt, aad_template, file_format,
                             service, blind_indexes, start)
        root, files = src, dataset_files(src, file_format)
    else:
        root, files = _from_dataset(src)
    dst = os.fspath(dst)
    if dst == "-":
        raise InvalidArgument("a dataset is written into a directory, not to stdout")
    if _inside(dst, root) or _inside(root, dst):
        raise InvalidArgument("the output directory must be outside the dataset, and the "
                              "dataset outside it")
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise InvalidArgument(f"{dst} exists and is not a directory")
    keys = _partition_keys(files)
    named = set(columns) | _template_fields(aad_template)
    if named & keys:
        raise InvalidArgument(f"{sorted(named & keys)[0]!r} is a hive partition key: its "
                              "values are directory names, which are neither encrypted nor "
                              "read by the AAD template")
    if not any(f.format for f in files):
        raise InvalidArgument(f"{root} holds no data file (.parquet, .pq or .csv)")
    os.makedirs(dst, exist_ok=True)
    record = _JobRecord(dst, _job_id(encrypt, columns, aad_template, blind_indexes))
    tasks = []
    for f in files:
        if f.format:
            s, d = os.path.join(root, f.relative), os.path.join(dst, f.relative)
            tasks.append(FileTask(s, d, f.relative, f.format, tuple(columns), aad_template,
                                  encrypt, blind_indexes, service_factory,
                                  record.done_rows(f.relative, s, d)))
    used = 1 if executor is not None else _choose_workers(workers, tasks)
    if service is None:  # also: a configuration that does not work fails here, once
        service = service_factory() if service_factory else get_encryption_service()
    if executor is not None or used > 1:
        from .reencrypt.transform import KeyCheck

        check = KeyCheck.of(service)
        tasks = [dataclasses.replace(t, key_check=check) for t in tasks]
    report = DatasetReport("encrypt-columns" if encrypt else "decrypt-columns", root, dst,
                           columns, used)
    results: dict[str, FileReport] = {f.relative: FileReport(f.relative, "ignored",
                                                             note=f.reason)
                                      for f in files if not f.format}
    total = None
    if progress is not None:
        counts = [_rows_of(t) for t in tasks]
        total = None if None in counts else sum(c or 0 for c in counts)
    done_rows = 0

    def finished(task: FileTask, result: FileReport) -> None:
        nonlocal done_rows
        results[task.relative] = result
        if result.status == "written":
            record.add(task.relative, task.src, task.dst, result.rows or 0)
        done_rows += result.rows or 0
        if progress is not None:
            progress(done_rows, total)

    if executor is not None:
        _run_on(executor, tasks, finished)
    elif used == 1:
        for task in tasks:
            finished(task, run_file(task, service))
    else:
        with _process_pool(used - 1) as pool:
            if not _share(pool, used - 1, tasks, service, finished):
                raise WorkerLost("a worker process died (killed, or out of memory); the files "
                                 "committed stay: run the job again to resume")
    report.files = [results[f.relative] for f in files]
    if report.ok:
        record.remove()
    report.seconds = time.perf_counter() - start
    return report


def encrypt_dataset(src: Any, dst: str, columns: str | Sequence[str], *,
                    aad_template: str | None = None, file_format: str | None = None,
                    workers: int = 1, service: EncryptionService | None = None,
                    service_factory: Callable[[], EncryptionService] | None = None,
                    blind_indexes: Any = None, executor: Any = None,
                    progress: Callable[[int, int | None], None] | None = None) -> DatasetReport:
    """Encrypts ``columns`` of every data file of a dataset into ``dst``, a directory of the
    same layout (see the module's docstring for what is copied, what resumes and how).

    Args:
        src: a directory (hive partitions included) or a ``pyarrow.dataset.FileSystemDataset``
            of Parquet or CSV files on the local disk; or one file (then ``dst`` is a file,
            and its errors are raised as :func:`engine.tables.encrypt_columns_file` raises them).
        dst: the output directory (made if missing), outside ``src``.
        columns, aad_template, blind_indexes: as :func:`engine.tables.encrypt_columns_file`
            takes them, for every file (with workers or an executor, blind indexes as
            :class:`~engine.blind_index.IndexDefinition`, which pickle).
        file_format: the format of files whose extension is not ``.parquet``/``.pq``/``.csv``.
        workers: at most this many processes (1: this process; the job may use fewer).
        service: for the files run in this process (default: the process-wide service).
        service_factory: a picklable callable that builds the service in a worker process
            (default: :func:`engine.get_encryption_service` from the worker's environment).
        executor: a ``concurrent.futures.Executor`` that runs the files instead of local
            processes, e.g. ``distributed.Client.get_executor()`` (docs/datasets.md).
        progress: called as ``progress(rows_done, rows_total)`` as each file finishes
            (``rows_total`` None when it cannot be known up front: CSV files).

    Returns:
        A :class:`DatasetReport`; a file that failed is in it with its error (the other files
        are done), and the job record stays so that a rerun redoes only what is not done.

    Raises:
        InvalidArgument: not a directory, no data file, an output inside the input, a column
            that is a partition key, a bad ``workers``.
        WorkerLost: a worker process died.
        KeyboardInterrupt: the files committed before it stay, and a rerun skips them.
    """
    return _run(src, dst, columns, True, aad_template=aad_template, file_format=file_format,
                workers=workers, service=service, service_factory=service_factory,
                blind_indexes=blind_indexes, executor=executor, progress=progress)


def decrypt_dataset(src: Any, dst: str, columns: str | Sequence[str], *,
                    aad_template: str | None = None, file_format: str | None = None,
                    workers: int = 1, service: EncryptionService | None = None,
                    service_factory: Callable[[], EncryptionService] | None = None,
                    executor: Any = None,
                    progress: Callable[[int, int | None], None] | None = None) -> DatasetReport:
    """Decrypts ``columns`` of every file of a dataset made by :func:`encrypt_dataset` into
    ``dst``, the same way (a file whose values do not authenticate is reported failed, and no
    output appears for it)."""
    return _run(src, dst, columns, False, aad_template=aad_template, file_format=file_format,
                workers=workers, service=service, service_factory=service_factory,
                blind_indexes=None, executor=executor, progress=progress)
