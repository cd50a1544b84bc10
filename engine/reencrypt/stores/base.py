"""What a re-encryption job needs of a store, whatever holds the values: :class:`Store`.

A job (``engine.reencrypt.job``) talks to its store only through these calls; how a store keeps
its checkpoints (a table of the same database, a file beside a dataset) and what a partition is
(a range of keys, a file) stay inside the store's own module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    from ..report import PartitionResult
    from ..spec import Column
    from .sql import Partition

__all__ = ["Store"]


@runtime_checkable
class Store(Protocol):
    """A store of encrypted values that a job can count and move to a new key version.

    ``display`` names it in reports and errors (never with a password); ``table`` is its table
    and ``key`` the table's primary key column (both None for a dataset of files).
    ``writes_whole_partitions`` says how a partition is written: False, batch by batch in
    transactions that also move the job's checkpoint (its values count as each batch commits,
    and worker processes run the cryptography of batches); True, all at once (a Parquet file
    replaced whole: its values count once it is in place, and a worker process takes a whole
    partition).
    """

    @property
    def table(self) -> str | None: ...

    @property
    def key(self) -> str | None: ...

    @property
    def writes_whole_partitions(self) -> bool: ...

    @property
    def display(self) -> str: ...

    def prepare(self, columns: Sequence[Column], *, check_only: bool, sample_rows: int
                ) -> tuple[int, Any]:
        """Checks the store, the key and the columns (raising the job's typed errors); returns
        the number of rows and the first ``sample_rows`` rows as Arrow data (None if empty)."""
        ...

    def job_partitions(self, job: str, count: int, *, persist: bool) -> list[Partition]:
        """The job's partitions (about ``count`` of them where the store can choose). With
        ``persist``, a job that writes: those an earlier run of ``job`` finished are marked
        finished and carry what it found (:attr:`Partition.earlier`)."""
        ...

    def partition_done(self, job: str, part: Partition, result: PartitionResult) -> None:
        """Records that ``part`` is done with what it held, for a later run to resume from."""
        ...

    def release_job(self, job: str, run: str) -> None:
        """The job stopped: partitions of run ``run`` still running elsewhere stop at their
        next batch."""
        ...

    def job_results(self, job: str, max_failures: int) -> PartitionResult | None:
        """What every run of ``job`` committed, from the store's checkpoints; None when the
        store keeps no more than the runs themselves reported."""
        ...

    def forget_job(self, job: str) -> None:
        """The job is complete: its checkpoints go, so a later run makes a new pass."""
        ...
