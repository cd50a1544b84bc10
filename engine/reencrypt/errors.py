"""The errors of the re-encryption pipeline (all :class:`engine.EngineError`)."""

from __future__ import annotations

from typing import Any

from ..errors import EngineError, InvalidArgument

__all__ = [
    "ColumnNotFound",
    "FileUnreadable",
    "IndexMismatch",
    "JobTakenOver",
    "NotEncrypted",
    "ReencryptionError",
    "ReencryptionInterrupted",
    "SchedulerUnavailable",
    "StoreUnavailable",
    "TableNotFound",
    "UnknownStore",
    "UnsupportedFile",
    "WorkerKeyMismatch",
    "WorkerLost",
    "WrongKeyOrAad",
]


class ReencryptionError(EngineError):
    """Base class of the pipeline's own errors."""


class UnknownStore(ReencryptionError, InvalidArgument):
    """A store URL with an unknown scheme, or one that names nothing usable."""


class TableNotFound(ReencryptionError, InvalidArgument):
    """The table (or the Parquet dataset) does not exist."""


class ColumnNotFound(ReencryptionError, InvalidArgument):
    """A column named by the job (value, key or AAD column) does not exist or has a type the
    job cannot use (or, read by a blind index as a plain column, holds ciphertexts)."""


class IndexMismatch(ReencryptionError, InvalidArgument):
    """A blind index, as the job was given it, computes none of the index values stored in
    the rows sampled: its normaliser, bits, table or fields are not the application's."""


class NotEncrypted(ReencryptionError, InvalidArgument):
    """A column's first values are not ciphertexts of the engine (plain text, say): the job
    refuses to start rather than report every row as failed."""


class WrongKeyOrAad(ReencryptionError, InvalidArgument):
    """Every value sampled from a column fails authentication: the AAD rule or the key
    configuration is not the application's."""


class StoreUnavailable(ReencryptionError, RuntimeError):
    """The store cannot be reached, read or written (the database is down, a file is not
    readable, ...)."""


class SchedulerUnavailable(ReencryptionError, RuntimeError):
    """The Dask scheduler does not answer."""


class JobTakenOver(ReencryptionError, RuntimeError):
    """Another run of the same job started and took over its checkpoints (two runs at once:
    a scheduled one overlapping a manual one); this run stopped without writing its last
    batch, and the other goes on."""


class WorkerLost(ReencryptionError, RuntimeError):
    """A worker process died (killed, out of memory): the job stopped; what it committed
    stays, and a new run resumes from its checkpoints."""


class ReencryptionInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a job. What it committed stays and a new run resumes from its
    checkpoints; ``report`` (a :class:`~engine.reencrypt.ReencryptionReport` with ``complete``
    False) says what every run of the job has done so far. A ``KeyboardInterrupt``, so code
    that handles Ctrl-C handles it."""

    def __init__(self, report: Any) -> None:
        super().__init__("interrupted; what was committed stays, and a new run resumes")
        self.report = report


class WorkerKeyMismatch(ReencryptionError, RuntimeError):
    """A worker's encryption service does not hold the coordinator's current key: it would
    seal values under a key the application does not use, so the job stops."""


class FileUnreadable(StoreUnavailable, OSError):
    """A file of a Parquet dataset cannot be read or written (not Parquet, truncated,
    permission denied, no space left); the message names it."""


class UnsupportedFile(ReencryptionError, InvalidArgument):
    """A file of a Parquet dataset the job cannot rewrite as it is: a symbolic link, or a
    property pyarrow cannot write back (the message names it)."""
