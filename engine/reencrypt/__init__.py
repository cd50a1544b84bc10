"""Re-encryption: move stored data to the current key version without losing a record.

After a key rotation, :func:`inventory` shows per column how many values are under each key
version (and how many cannot be read, and why); :func:`reencrypt` moves every readable value to
the current version, batch by batch, resumably; a second :func:`inventory` proves nothing is
left on the old version, and :meth:`engine.KeyRotationService.purge` takes it before deleting
that version::

    from engine.reencrypt import AadRule, inventory, open_store, reencrypt

    store = open_store("sqlite:///crm.db", table="users", key="id")
    report = reencrypt(store, ["ssn"], aad=AadRule.template("users:{id}:ssn"))
    rotation.purge(1, inventory=inventory(store, ["ssn"], aad=...))

Stores: SQLite (stdlib ``sqlite3``, WAL), PostgreSQL (psycopg 3), Parquet datasets
(``pyarrow.dataset``); and directories of Parquet Modular Encryption files
(:class:`PmeStore`, with :func:`inventory_pme` and :func:`reencrypt_pme`: a file's key
version is in its key material, and a file moves whole). Values: text and binary tokens and
the JSON envelope in any text, blob, bytea or json/jsonb column; the three-column layout of
:meth:`engine.SealedBatch.to_arrow` plus a key-version column in Parquet. Execution: this
process, local worker processes (``workers=N``) or a Dask cluster (``dask="tcp://..."``).
"""

from .errors import (
    ColumnNotFound,
    FileUnreadable,
    IndexMismatch,
    JobTakenOver,
    NotEncrypted,
    ReencryptionError,
    ReencryptionInterrupted,
    SchedulerUnavailable,
    StoreUnavailable,
    TableNotFound,
    UnknownStore,
    UnsupportedFile,
    WorkerKeyMismatch,
    WorkerLost,
    WrongKeyOrAad,
)
from .job import handover, inventory, reencrypt
from .pme_jobs import PmeInventory, PmeReencryptionReport, inventory_pme, reencrypt_pme
from .report import ColumnCounts, Failure, Inventory, ReencryptionReport
from .spec import AadRule, Column, SealedLayout
from .stores import ParquetStore, PostgresStore, SqliteStore, open_store
from .stores.pme import PmeStore

__all__ = [
    "AadRule",
    "Column",
    "ColumnCounts",
    "ColumnNotFound",
    "IndexMismatch",
    "Failure",
    "FileUnreadable",
    "Inventory",
    "JobTakenOver",
    "NotEncrypted",
    "ParquetStore",
    "PmeInventory",
    "PmeReencryptionReport",
    "PmeStore",
    "PostgresStore",
    "ReencryptionError",
    "ReencryptionInterrupted",
    "ReencryptionReport",
    "SchedulerUnavailable",
    "SealedLayout",
    "SqliteStore",
    "StoreUnavailable",
    "TableNotFound",
    "UnknownStore",
    "UnsupportedFile",
    "WorkerKeyMismatch",
    "WorkerLost",
    "WrongKeyOrAad",
    "handover",
    "inventory",
    "inventory_pme",
    "open_store",
    "reencrypt",
    "reencrypt_pme",
]
