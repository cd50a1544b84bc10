"""A directory of Parquet Modular Encryption files (docs/pme.md): a file is the unit of work.

A PME file names the key version its keys are wrapped under in its key material, in the
clear: what a file is under is read from its footer alone, without any key. A file is moved
to the current version by rewriting it whole through pyarrow (encrypted as it was: the same
columns, the same footer mode, the same layout) into a locked temporary file beside it, which
is checked (it opens with the keys, has the same rows, names the new version) and renamed over
the original only if the original did not change meanwhile; the directory is then flushed.
A SIGKILL at any moment leaves every file either as it was or moved, and the temporary file
unnamed (or named and removed by the next run). The files' own key material is the
checkpoint: a rerun skips the files already under the current version.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...columns.pme import PmeFileKeys, PmeKeys, pme_key_info, reencrypt_parquet_file
from ...keys.base import KeyVersionNotUsable
from ..errors import UnknownStore
from .parquet import ParquetStore, Temporary, file_state, replacing

__all__ = ["PmeStore"]


@dataclass(frozen=True)
class PmeStore:
    """A directory of PME Parquet files (searched recursively, as ``pyarrow.dataset`` does:
    names starting with ``_`` or ``.`` are skipped) or one file.

    Given to :func:`engine.reencrypt.inventory_pme` and :func:`engine.reencrypt.reencrypt_pme`;
    ``parquet-pme:///path/`` names it for the command line (``--store ... --pme``).
    """

    path: str

    scheme = "parquet-pme"
    table = None
    key = None

    @classmethod
    def from_url(cls, url: str) -> "PmeStore":
        """The store of ``parquet:///absolute/dir/`` (or ``parquet-pme://...``, or
        ``parquet://relative/dir/``).

        Raises:
            UnknownStore: another scheme, or no path.
        """
        scheme, sep, rest = url.partition("://") if isinstance(url, str) else ("", "", "")
        if scheme.lower() not in ("parquet", "parquet-pme") or not sep or not rest.strip("/"):
            raise UnknownStore("PME files are a Parquet store: parquet:///path/to/dataset/")
        return cls(rest)

    @property
    def display(self) -> str:
        return f"parquet-pme://{self.path}"

    @property
    def _dataset(self) -> ParquetStore:
        return ParquetStore(self.path)

    def files(self) -> list[str]:
        """The files, sorted (see :meth:`ParquetStore.files`).

        Raises:
            TableNotFound: the path does not exist or holds no file.
            FileUnreadable: a directory cannot be listed.
        """
        return self._dataset.files()

    def key_info(self, path: str) -> PmeFileKeys:
        """The keys a file names, from its footer (no key is used).

        Raises:
            ParquetFooterError: not a Parquet file, or a footer that does not parse.
            OSError: the file cannot be read.
        """
        return pme_key_info(path)

    def prepare(self) -> None:
        """Before a rewrite: refuses what cannot be rewritten file by file (symbolic links,
        directories without write access) and removes the temporary files of runs that were
        killed.

        Raises:
            UnsupportedFile, FileUnreadable: see :meth:`ParquetStore.check_rewritable`.
        """
        self._dataset.check_rewritable()
        self._dataset.remove_stale_temporaries()

    def rewrite(self, path: str, keys: PmeKeys, target: int) -> bool:
        """Moves one file to the current key version (at least ``target``), encrypted as it
        was. Returns False, leaving it as it is, when it changed (or went) meanwhile.

        Raises:
            ParquetFooterError, PmeFileUnreadable, InvalidTag, UnknownKeyVersion: the file
                cannot be read with the keys; it is left as it is.
            KeyVersionNotUsable: the new file does not name the current version.
            OSError: the new file cannot be written or renamed.
        """
        import pyarrow.parquet as pq

        before = file_state(path)
        if before is None:
            return False
        with Temporary(path) as tmp:
            with open(tmp.target, "wb") as out:
                report = reencrypt_parquet_file(path, out, keys=keys)
            named = pme_key_info(tmp.target).versions
            if not named or min(named) < target:
                raise KeyVersionNotUsable(f"{path} was rewritten under key version(s) "
                                          f"{sorted(named)}, not {target}; it is left as it was")
            check = pq.ParquetFile(tmp.target, decryption_properties=keys.decryption_properties())
            if check.metadata.num_rows != report["rows"]:
                raise OSError(f"the rewrite of {path} lost rows; it is left as it was")
            with replacing(path):  # another job's check and rename wait for ours
                if file_state(path) != before:
                    return False
                tmp.replace(before)
        return True
