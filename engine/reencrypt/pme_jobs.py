"""The two jobs on a directory of Parquet Modular Encryption files (:class:`PmeStore`):
:func:`inventory_pme` counts files per key version from their key material alone, and
:func:`reencrypt_pme` moves them to the current version, file by file, resumably. Their
reports have the shape :meth:`engine.KeyRotationService.purge` takes, so that a version still
named by a file is not purged."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import audit as audit_events
from ..columns.parquet_footer import ParquetFooterError
from ..columns.pme import PmeFileUnreadable, PmeKeys
from ..errors import InvalidTag
from ..keys.base import UnknownKeyVersion
from ..service import EncryptionService, get_encryption_service
from .errors import ReencryptionInterrupted
from .stores.pme import PmeStore

__all__ = ["PmeInventory", "PmeReencryptionReport", "inventory_pme", "reencrypt_pme"]

Progress = Callable[[int, int], None]
#: The name under which :meth:`PmeInventory.still_named` reports files (a "column" of the
#: store, for :class:`engine.rotation.VersionStillInUse`).
FILES = "PME files"


@dataclass
class _PmeCounts:
    store: str
    files: int = 0
    plain: int = 0
    foreign: int = 0
    versions: dict[int, int] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    duration_s: float = 0.0

    def _file_versions(self, versions: set[int]) -> None:
        for v in versions:
            self.versions[v] = self.versions.get(v, 0) + 1

    def _base_dict(self) -> dict[str, Any]:
        return {"store": self.store, "files": self.files, "plain": self.plain,
                "foreign": self.foreign,
                "versions": {str(v): n for v, n in sorted(self.versions.items())},
                "failed": len(self.failures),
                "failures": [{"file": f, "reason": r} for f, r in self.failures],
                "duration_s": round(self.duration_s, 6)}


@dataclass
class PmeInventory(_PmeCounts):
    """Files per key version their key material names (a file that names two counts under
    each), with the versions the provider does not hold.

    Attributes:
        files: files found; ``plain`` of them are not PME, ``foreign`` are PME under master keys
            that are not the engine's.
        versions: key version -> files naming it.
        missing_versions: key version -> files naming a version the provider does not hold.
        failures: (file, reason) of the files whose footer cannot be read.
        current_version: the provider's current version.
    """

    missing_versions: dict[int, int] = field(default_factory=dict)
    current_version: int = 0

    def still_named(self, version: int) -> dict[str, dict[str, int]]:
        """The files naming ``version``, as :meth:`engine.reencrypt.Inventory.still_named`
        gives values: ``{"PME files": {"readable" | "unknown_key_version": count}}``."""
        missing = self.missing_versions.get(version, 0)
        counts = {"readable": self.versions.get(version, 0) - missing,
                  "unknown_key_version": missing}
        counts = {k: n for k, n in counts.items() if n}
        return {FILES: counts} if counts else {}

    def all_current(self) -> bool:
        """True when every engine PME file names only the current version and every footer
        was read."""
        return not self.failures and set(self.versions) <= {self.current_version}

    def to_dict(self) -> dict[str, Any]:
        return {**self._base_dict(), "current_version": self.current_version,
                "missing_versions": {str(v): n for v, n in sorted(self.missing_versions.items())},
                "all_current": self.all_current()}


@dataclass
class PmeReencryptionReport(_PmeCounts):
    """What :func:`reencrypt_pme` did (``versions``: what the files named before).

    Attributes:
        reencrypted: files moved to the target version.
        already_current: files already under it (a rerun's skipped files).
        changed: files the application changed (or removed) while they were rewritten: left
            as they are, for the next run.
        failures: (file, reason) of the files that cannot be read with the keys; left as
            they are.
        complete: False when the job stopped early.
    """

    target_version: int = 0
    reencrypted: int = 0
    already_current: int = 0
    changed: int = 0
    complete: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {**self._base_dict(), "target_version": self.target_version,
                "reencrypted": self.reencrypted, "already_current": self.already_current,
                "changed": self.changed, "complete": self.complete}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnknownKeyVersion):
        return "unknown_key_version"
    if isinstance(exc, InvalidTag):
        return "invalid_tag"
    return f"malformed: {exc}"


def inventory_pme(store: PmeStore, *, service: EncryptionService | None = None,
                  progress: Progress | None = None) -> PmeInventory:
    """Counts the files of ``store`` per key version their key material names. Only footers
    are read: no key is unwrapped, nothing decrypted.

    Raises:
        TableNotFound: the path does not exist or holds no file.
        FileUnreadable: a directory cannot be listed, or a file cannot be opened.
    """
    from .errors import FileUnreadable

    service = service if service is not None else get_encryption_service()
    provider = service.provider
    held = {v.version for v in provider.list_versions()}
    started = time.perf_counter()
    files = store.files()
    report = PmeInventory(store.display, files=len(files),
                          current_version=provider.get_current_key().version)
    for done, path in enumerate(files, start=1):
        try:
            info = store.key_info(path)
        except ParquetFooterError as exc:
            report.failures.append((path, _reason(exc)))
            info = None
        except OSError as exc:
            raise FileUnreadable(f"{store.display}: {path} cannot be read "
                                 f"({exc.strerror or exc})") from None
        if info is not None:
            report.plain += not info.encrypted
            report.foreign += info.encrypted and not info.versions
            report._file_versions(info.versions)
            for v in info.versions - held:
                report.missing_versions[v] = report.missing_versions.get(v, 0) + 1
        if progress is not None:
            progress(done, len(files))
    report.duration_s = time.perf_counter() - started
    return report


def reencrypt_pme(store: PmeStore, *, service: EncryptionService | None = None,
                  progress: Progress | None = None,
                  observer: Callable[[str, dict], None] | None = None) -> PmeReencryptionReport:
    """Moves every engine PME file of ``store`` that names an older key version to the
    current one, one file at a time (see :mod:`engine.reencrypt.stores.pme`). Files already
    under the current version, plain files and PME files under other master keys are left as
    they are; a file that cannot be read with the keys is reported and left as it is. Run it
    again after an interruption or a crash: it goes on where it stopped.

    Args:
        observer: called as ``observer("file", {"file": path})`` before each rewrite (tests).

    Raises:
        TableNotFound, UnsupportedFile, FileUnreadable: the store cannot be rewritten.
        KeyVersionNotUsable: the current key version may not encrypt.
        ReencryptionInterrupted: Ctrl-C; its ``report`` says what was done (every file is
            either moved or as it was).
    """
    service = service if service is not None else get_encryption_service()
    keys = PmeKeys(service)
    target = service.provider.get_current_key().version
    store.prepare()
    files = store.files()
    report = PmeReencryptionReport(store.display, files=len(files), target_version=target)
    audit = service.audit
    if audit is not None:
        audit.record(audit_events.REENCRYPTION_STARTED, store=store.display, table=None,
                     columns=[FILES], target_version=target, files=len(files))
    started = time.perf_counter()
    try:
        for done, path in enumerate(files, start=1):
            _move(store, path, keys, target, report, observer)
            if progress is not None:
                progress(done, len(files))
    except KeyboardInterrupt:
        report.complete = False
    finally:
        report.duration_s = time.perf_counter() - started
        if audit is not None:
            audit.record(audit_events.REENCRYPTION_COMPLETED, store=store.display, table=None,
                         target_version=target, complete=report.complete,
                         reencrypted=report.reencrypted,
                         already_current=report.already_current, changed=report.changed,
                         failed=len(report.failures), duration_s=round(report.duration_s, 3))
        keys.forget()
    if not report.complete:
        raise ReencryptionInterrupted(report)
    return report


def _move(store: PmeStore, path: str, keys: PmeKeys, target: int,
          report: PmeReencryptionReport, observer: Callable[[str, dict], None] | None) -> None:
    try:
        info = store.key_info(path)
    except ParquetFooterError as exc:
        report.failures.append((path, _reason(exc)))
        return
    report._file_versions(info.versions)
    if not info.encrypted:
        report.plain += 1
    elif not info.versions:
        report.foreign += 1
    elif info.versions == {target}:
        report.already_current += 1
    else:
        if observer is not None:
            observer("file", {"file": path})
        try:
            moved = store.rewrite(path, keys, target)
        except (ParquetFooterError, PmeFileUnreadable, InvalidTag, UnknownKeyVersion) as exc:
            report.failures.append((path, _reason(exc)))
            return
        if moved:
            report.reencrypted += 1
        else:
            report.changed += 1
