"""Parquet datasets through ``pyarrow.dataset``: a file is the unit of work and of progress.

A file whose values need moving is rewritten, batch by batch, to a hidden temporary file in
the same directory, flushed to disk and renamed over the original (atomic on POSIX), then the
directory is flushed. A file with nothing to move is left as it is. If the file changed while
it was being rewritten (size, time or inode), the rewrite is thrown away and its values are
counted as changed, for the next pass. Progress (the files done) is a small JSON file in the
dataset's directory, written atomically by the coordinator; pyarrow's dataset discovery skips
both kinds of file (names starting with ``_`` and ``.``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import ColumnNotFound, StoreUnavailable, TableNotFound
from ..spec import Column, row_fields
from .sql import Partition

__all__ = ["ParquetStore"]

TMP_SUFFIX = ".reencrypt.tmp"


@dataclass(frozen=True)
class ParquetStore:
    """A Parquet dataset: a directory of ``.parquet`` files (searched recursively, as
    ``pyarrow.dataset`` does) or one file.

    Args:
        path: the directory or the file.
        progress_file: the name of the checkpoint file in the dataset's directory.
    """

    path: str
    progress_file: str = "_engine_reencrypt_progress.json"

    scheme = "parquet"
    table = None
    key = None

    @property
    def display(self) -> str:
        return f"parquet://{self.path}"

    @property
    def directory(self) -> Path:
        p = Path(self.path)
        return p if p.is_dir() else p.parent

    def files(self) -> list[str]:
        """The dataset's files, sorted.

        Raises:
            TableNotFound: the path does not exist or holds no Parquet file.
            StoreUnavailable: a file cannot be read as Parquet.
        """
        import pyarrow as pa
        import pyarrow.dataset as ds

        if not os.path.exists(self.path):
            raise TableNotFound(f"{self.display}: no such file or directory")
        try:
            files = sorted(ds.dataset(self.path, format="parquet").files)
        except (pa.ArrowInvalid, OSError) as exc:
            failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        else:
            if not files:
                raise TableNotFound(f"{self.display} holds no Parquet file")
            return files
        raise StoreUnavailable(f"{self.display}: {failure}")

    def schemas(self) -> list[tuple[str, Any]]:
        """(file, its own schema) for every file: files of one dataset may differ, and a
        file is rewritten with its own columns."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return [(f, pq.read_schema(f)) for f in self.files()]
        except (pa.ArrowInvalid, OSError) as exc:
            failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise StoreUnavailable(f"{self.display}: {failure}")

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
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files())

    def partitions(self, done: set[str]) -> list[Partition]:
        """One partition per file not in ``done``."""
        return [Partition(i, file=f) for i, f in enumerate(self.files()) if f not in done]

    # ---- progress ----

    @property
    def progress_path(self) -> Path:
        return self.directory / self.progress_file

    def load_progress(self, job: str) -> set[str]:
        """The files an earlier run of ``job`` finished."""
        try:
            data = json.loads(self.progress_path.read_text())
        except FileNotFoundError:
            return set()
        except ValueError:
            raise StoreUnavailable(f"the checkpoint {self.progress_path} is corrupt; remove it "
                                   "to start the job over") from None
        return set(data.get(job, []))

    def save_progress(self, job: str, done: set[str]) -> None:
        """Records the files of ``job`` done so far (atomically: temp file, fsync, rename)."""
        write_atomically(self.progress_path,
                         json.dumps({job: sorted(done)}, indent=0).encode())

    def forget(self, job: str) -> None:
        try:
            self.progress_path.unlink()
        except FileNotFoundError:
            pass

    def remove_stale_temporaries(self) -> None:
        """Deletes temporary files a killed run left behind (never a dataset file)."""
        for root, _dirs, names in os.walk(self.directory):
            for name in names:
                if name.startswith(".") and name.endswith(TMP_SUFFIX):
                    os.unlink(os.path.join(root, name))


def file_signature(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def temporary_for(path: str) -> str:
    p = Path(path)
    return str(p.with_name(f".{p.name}.{os.getpid()}{TMP_SUFFIX}"))


def fsync_directory(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file, fsync and rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)
