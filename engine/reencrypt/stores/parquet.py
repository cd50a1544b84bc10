"""Parquet datasets through ``pyarrow.dataset``: a file is the unit of work and of progress.

A file whose values need moving is rewritten, batch by batch, to a hidden temporary file in
the same directory, flushed to disk and renamed over the original (atomic on POSIX), then the
directory is flushed. A file with nothing to move is left as it is. If the file changed while
it was being rewritten (size, time or inode), the rewrite is thrown away and its values are
counted as changed, for the next pass. Progress (the files done) is a journal in the dataset's
directory that the coordinator appends one line to per file (see :meth:`ParquetStore.partition_done`);
pyarrow's dataset discovery skips both kinds of file (names starting with ``_`` and ``.``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ...atomic_file import Temporary as AtomicTemporary, fsync_directory, remove_unlocked, write_atomically
from ...errors import InvalidArgument
from ..errors import ColumnNotFound, FileUnreadable, StoreUnavailable, TableNotFound, UnsupportedFile
from ..report import PartitionResult
from ..spec import Column, row_fields
from .sql import Partition

__all__ = ["FileState", "ParquetStore", "Temporary", "file_state", "replacing"]

TMP_SUFFIX = ".reencrypt.tmp"


@dataclass(frozen=True)
class ParquetStore:
    """A Parquet dataset: a directory of ``.parquet`` files (searched recursively, as
    ``pyarrow.dataset`` does) or one file.

    Args:
        path: the directory or the file.
        progress_file: the name of the checkpoint files in the dataset's directory (each job
            adds its own hash before the extension).
    """

    path: str
    progress_file: str = "_engine_reencrypt_progress.json"  # per job: NAME.<job hash>.json

    scheme = "parquet"
    table = None
    key = None
    writes_whole_partitions = True  # a file is replaced whole, then recorded in the checkpoint

    # ---- the job's calls (engine.reencrypt.stores.base.Store) ----

    def prepare(self, columns: Sequence[Column], *, check_only: bool, sample_rows: int
                ) -> tuple[int, Any]:
        import pyarrow.parquet as pq

        self.check(columns)
        rows = self.count()
        first = next(pq.ParquetFile(self.files()[0]).iter_batches(batch_size=sample_rows), None)
        return rows, first

    def job_partitions(self, job: str, count: int, *, persist: bool) -> list[Partition]:
        """One partition per file (``count`` does not apply)."""
        if not persist:
            return self.partitions({})
        self.check_rewritable()
        self.remove_stale_temporaries()
        return self.partitions(self.load_progress(job))

    def partition_done(self, job: str, part: Partition, result: PartitionResult) -> None:
        """Appends the file and what it held to the job's journal (see :meth:`load_progress`)
        and flushes it to disk: one line per file, so recording the n-th file costs the same
        as the first."""
        path = self.progress_path(job)
        line = json.dumps({"file": str(part.file), "result": result.to_json()}).encode() + b"\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            created = os.fstat(fd).st_size == 0
            if created:
                line = json.dumps({"job": job}).encode() + b"\n" + line
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_directory(path.parent)

    def release_job(self, job: str, run: str) -> None:
        """Nothing runs on after the job: a file is written whole or not at all."""

    def job_results(self, job: str, max_failures: int) -> PartitionResult | None:
        """None: a file's values count once it is in place, as the runs reported them."""
        return None

    def forget_job(self, job: str) -> None:
        self.forget(job)

    @property
    def display(self) -> str:
        return f"parquet://{self.path}"

    @property
    def directory(self) -> Path:
        p = Path(self.path)
        return p if p.is_dir() else p.parent

    def files(self) -> list[str]:
        """The dataset's files, sorted.

        Discovery is pyarrow's (names starting with ``_`` or ``.`` are skipped); no file is
        opened here, so one that is not Parquet is named when it is read.

        Raises:
            TableNotFound: the path does not exist or holds no file.
            FileUnreadable: a directory cannot be listed.
        """
        import pyarrow as pa
        import pyarrow.dataset as ds

        if not os.path.exists(self.path):
            raise TableNotFound(f"{self.display}: no such file or directory")
        try:
            # an empty schema: list the files without opening one (the first would be read)
            files = sorted(ds.dataset(self.path, format="parquet", schema=pa.schema([])).files)
        except (pa.ArrowException, OSError) as exc:
            failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        else:
            if not files:
                raise TableNotFound(f"{self.display} holds no Parquet file")
            return files
        raise FileUnreadable(f"{self.display}: {failure}")

    def schemas(self) -> list[tuple[str, Any]]:
        """(file, its own schema) for every file: files of one dataset may differ, and a
        file is rewritten with its own columns.

        Raises:
            FileUnreadable: a file is not Parquet or cannot be read (the message names it).
        """
        return [(f, self.read_schema(f)) for f in self.files()]

    def read_schema(self, path: str) -> Any:
        """The Arrow schema of one file of the dataset.

        Raises:
            FileUnreadable: the file is not Parquet or cannot be read.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_schema(path)
        except (pa.ArrowException, OSError) as exc:
            failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise FileUnreadable(f"{self.display}: {path} cannot be read as Parquet ({failure}); "
                             "repair it or move it out of the dataset")

    def check(self, columns: Sequence[Column]) -> None:
        """Raises ColumnNotFound for a column that is missing from a file or of a type that
        cannot hold ciphertexts (text or binary tokens; for the three-column layout, binary and
        integer), and for a blind index column or a column an index reads that is missing or
        of the wrong type."""
        for path, schema in self.schemas():
            self.check_schema(schema, columns, os.path.basename(path))

    def check_schema(self, schema: Any, columns: Sequence[Column], file: str) -> None:
        """:meth:`check` for one file of the dataset, of schema ``schema``."""
        import pyarrow as pa

        where = f"{self.display} (file {file})"
        for column in columns:
            for name in column.read_columns():
                if schema.get_field_index(name) < 0:
                    raise ColumnNotFound(f"{where} has no column {name!r}")
            if column.sealed is None:
                t = schema.field(column.name).type
                if not (pa.types.is_string(t) or pa.types.is_large_string(t)
                        or pa.types.is_binary(t) or pa.types.is_large_binary(t)):
                    raise ColumnNotFound(f"column {column.name!r} is {t}; ciphertexts are text "
                                         "or binary")
            for definition in column.indexes:
                at = schema.get_field_index(definition.name)
                if at < 0 or not (pa.types.is_string(schema.field(at).type)
                                  or pa.types.is_large_string(schema.field(at).type)):
                    raise ColumnNotFound(f"blind index column {definition.name!r} must be a "
                                         f"string column of {where}")
        for name in row_fields(columns):
            at = schema.get_field_index(name)
            if at < 0:
                raise ColumnNotFound(f"{where} has no column {name!r} (a blind index "
                                     "reads it)")
            t = schema.field(at).type
            if not (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
                    or pa.types.is_binary(t) or pa.types.is_large_binary(t)):
                raise ColumnNotFound(f"column {name!r} is {t}; a blind index reads text, binary "
                                     "or integer columns")

    def count(self) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        total = 0
        for f in self.files():
            try:
                total += pq.read_metadata(f).num_rows
            except (pa.ArrowException, OSError):
                self.read_schema(f)  # raises FileUnreadable naming the file
                raise
        return total

    def partitions(self, done: Mapping[str, PartitionResult]) -> list[Partition]:
        """One partition per file; those in ``done`` (an earlier run of the job finished them)
        are marked finished and carry what that run found in them."""
        return [Partition(i, file=f, finished=f in done, earlier=done.get(f))
                for i, f in enumerate(self.files())]

    # ---- progress ----

    def progress_path(self, job: str) -> Path:
        """The checkpoint of ``job``: one file per job and dataset (a one-file dataset keeps it
        in the file's directory), so jobs on other columns or files never overwrite or delete
        another's."""
        stem = self.progress_file.removesuffix(".json")
        ident = hashlib.sha256(f"{os.path.abspath(self.path)}\0{job}".encode()).hexdigest()[:16]
        return self.directory / f"{stem}.{ident}.json"

    def load_progress(self, job: str) -> dict[str, PartitionResult]:
        """The files an earlier run of ``job`` finished, each with what it found there (its
        counts and failures, so that a resumed job reports the whole dataset).

        The journal is one JSON line naming the job, then one line per finished file. A last
        line without its newline is a record a killed run was writing: it is cut off here (that
        file is looked at again; its values, already moved, count as current); a journal with
        no whole line (killed during its first write) holds nothing yet. A checkpoint
        written whole as one JSON object by earlier releases is read and rewritten as a journal.

        Raises:
            StoreUnavailable: the checkpoint is corrupt (a line that does not parse, another
                job's journal).
        """
        path = self.progress_path(job)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return {}
        corrupt = StoreUnavailable(f"the checkpoint {path} is corrupt; remove it to start the "
                                   "job over")
        try:
            done = self._parse_progress(job, raw)
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            done = None
        if done is None:
            raise corrupt
        entries, complete_bytes = done
        if complete_bytes is None:  # the single-object form: rewritten as a journal
            self._write_progress(job, entries)
        elif complete_bytes < len(raw):
            with open(path, "r+b") as f:
                f.truncate(complete_bytes)
                os.fsync(f.fileno())
        return entries

    @staticmethod
    def _parse_progress(job: str, raw: bytes
                        ) -> tuple[dict[str, PartitionResult], int | None] | None:
        """(the files done, the length of the complete lines; None for the single-object
        form), or None when ``raw`` is not a checkpoint of ``job``."""
        if raw.startswith(b"{\n"):  # the single object, as earlier releases wrote it
            data = json.loads(raw)
            if not isinstance(data, dict) or not isinstance(data.get(job, {}), dict):
                return None
            return ({str(f): PartitionResult.from_json(r)
                     for f, r in data.get(job, {}).items()}, None)
        end = raw.rfind(b"\n") + 1  # what follows the last newline: a record cut short
        lines = raw[:end].splitlines()
        if not lines:  # the first write (header and first record) was cut short
            return {}, 0
        if json.loads(lines[0]) != {"job": job}:
            return None
        entries: dict[str, PartitionResult] = {}
        for line in lines[1:]:
            record = json.loads(line)
            entries[str(record["file"])] = PartitionResult.from_json(record["result"])
        return entries, end

    def _write_progress(self, job: str, done: Mapping[str, PartitionResult]) -> None:
        """Writes the journal of ``job`` whole (atomically), with the files of ``done``."""
        lines = [json.dumps({"job": job})] + [
            json.dumps({"file": f, "result": done[f].to_json()}) for f in sorted(done)]
        write_atomically(self.progress_path(job), ("\n".join(lines) + "\n").encode(),
                         suffix=TMP_SUFFIX, lock=True)

    def forget(self, job: str) -> None:
        try:
            self.progress_path(job).unlink()
        except FileNotFoundError:
            pass

    def remove_stale_temporaries(self) -> None:
        """Deletes the temporary files of jobs that died (a SIGKILL leaves one behind); never a
        dataset file, nor the temporary of a live job: each job holds a lock on its own (see
        :class:`Temporary`) for as long as it lives, and the kernel drops it when it dies."""
        found: Iterator[tuple[str, list[str]]]
        if os.path.isdir(self.path):
            found = ((root, names) for root, _dirs, names in os.walk(self.directory))
        else:  # one file: its own directory only, not every dataset beside it
            found = iter([(str(self.directory), os.listdir(self.directory))])
        for root, names in found:
            for name in names:
                if name.startswith(".") and name.endswith(TMP_SUFFIX):
                    remove_unlocked(os.path.join(root, name))

    def check_rewritable(self) -> None:
        """Refuses a dataset a job could not rewrite file by file: a file that is a symbolic
        link (renaming over it would replace the link, not the file it names), or a directory
        the job cannot create files in.

        Raises:
            UnsupportedFile: a symbolic link.
            FileUnreadable: a directory without write access.
        """
        directories = {str(self.directory)}
        for path in self.files():
            if os.path.islink(path):
                raise UnsupportedFile(
                    f"{self.display}: {path} is a symbolic link; a job replaces files by "
                    "renaming over them, which would replace the link: give the job the "
                    "directory of the files it names")
            directories.add(os.path.dirname(os.path.abspath(path)))
        for directory in sorted(directories):
            try:  # a real file, not os.access: root passes that where it cannot write either
                Temporary(os.path.join(directory, "probe")).close()
            except OSError as exc:
                raise FileUnreadable(
                    f"{self.display}: cannot create files in {directory} ({exc.strerror}); a "
                    "job writes each new file beside the one it replaces") from None


@dataclass(frozen=True)
class FileState:
    """What the optimistic check compares: a file's identity (device, inode, and that it is
    a regular file and not a link put in its place), its size and times, and a SHA-256 of its
    bytes, which sees an in-place rewrite that keeps the size within one tick of the file
    system's clock (or that sets the times back)."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    digest: bytes
    mode: int
    uid: int
    gid: int


def file_state(path: str) -> FileState | None:
    """The state of the file at ``path`` (its link, not what a link names), or None when there
    is no regular file there any more."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symbolic link now stands there
            return None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        with open(fd, "rb", closefd=False) as f:
            digest = hashlib.file_digest(f, "sha256").digest()
        st = os.fstat(fd)  # the times as they were once read through (a write meanwhile shows)
    finally:
        os.close(fd)
    return FileState(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest,
                     stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)


class Temporary(AtomicTemporary):
    """A new file beside ``path`` that a job writes and then renames over ``path``.

    It is created unnamed where the file system allows (``O_TMPFILE``: a SIGKILL leaves
    nothing) and locked (``flock``) before it has a name, so
    :meth:`ParquetStore.remove_stale_temporaries` of another job never takes it for a dead
    job's. ``target`` is a path pyarrow can write to and read back.
    """

    def __init__(self, path: str) -> None:
        try:
            super().__init__(path, suffix=TMP_SUFFIX, lock=True)
        except InvalidArgument as exc:
            raise FileUnreadable(str(exc)) from None

    def replace(self, state: FileState) -> None:
        """Gives the file ``state``'s mode and owner, flushes it, and renames it over the path
        (atomic on POSIX), then flushes the directory.

        Raises:
            FileUnreadable: the owner cannot be kept (the job runs as another user).
        """
        os.fchmod(self.fd, state.mode)
        st = os.fstat(self.fd)
        if (st.st_uid, st.st_gid) != (state.uid, state.gid):
            try:
                os.fchown(self.fd, state.uid, state.gid)
            except PermissionError:
                raise FileUnreadable(
                    f"{self.path} belongs to uid {state.uid} gid {state.gid}; this job cannot "
                    "give its new file the same owner: run it as that user (or root)") from None
        self.commit()


@contextlib.contextmanager
def replacing(path: str) -> Iterator[None]:
    """Holds a lock on the file now at ``path`` while a job checks it and renames its new
    version over it: a second job that read the same file then waits, and its own check sees
    the first one's file (the application, which takes no such lock, is caught by the check
    alone). Nothing is held if there is no regular file there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
