"""What a job found and did: counts per column, the values that failed, and the two reports
(:class:`Inventory`, :class:`ReencryptionReport`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from ..service import ValueStatus
from .rowkeys import decode_key, encode_key, key_for_json

__all__ = ["ColumnCounts", "Failure", "Inventory", "ReencryptionReport"]

#: A job's status beside :class:`~engine.service.ValueStatus`: a readable value left as it is
#: because its row's blind index cannot be computed (a field of the index fails its normaliser
#: or cannot be opened); writing it alone would leave the index under the old version.
UNINDEXABLE = len(ValueStatus)
FAILURES = (ValueStatus.UNKNOWN_KEY_VERSION, ValueStatus.MALFORMED, ValueStatus.INVALID_TAG,
            UNINDEXABLE)
#: Unreadable values that may still name a key version (a token or envelope that does not parse
#: names none; a row of the three-column layout names one in its key-version column).
NAMED_UNREADABLE = (ValueStatus.INVALID_TAG, ValueStatus.UNKNOWN_KEY_VERSION,
                    ValueStatus.MALFORMED)
READABLE = (ValueStatus.CURRENT, ValueStatus.REENCRYPTED, ValueStatus.OUTDATED, UNINDEXABLE)


def reason(status: int) -> str:
    """The name of a failure status, as reports give it."""
    return "unindexable" if status == UNINDEXABLE else ValueStatus(status).name.lower()


@dataclass
class ColumnCounts:
    """Counts for one column.

    Attributes:
        values: values scanned (NULLs included).
        current: already under the target (current) version.
        reencrypted: moved to the target version by this job.
        outdated: (inventory) readable, under an older version.
        null: NULL values.
        unknown_key_version, malformed, invalid_tag: values that cannot be read, by reason;
            they are never written.
        unindexable: readable values under an older version left as they are because a blind
            index of their row cannot be computed (see ``failures`` for the rows).
        changed: re-encrypted values the application changed between the job's read and its
            write: not written, left for the next pass.
        versions: readable values per key version (before this job moved them).
        unreadable_versions: values whose header names a key version but that cannot be
            read, per version and reason (``invalid_tag``, ``unknown_key_version``, and
            ``malformed`` for a three-column row the job cannot read): they open only with
            that version's key, so purging it loses them.
        missing_versions: derived: the ``unknown_key_version`` values per key version their
            token names, the versions the provider does not have (say, created after the
            snapshot Vault was restored from).
    """

    values: int = 0
    current: int = 0
    reencrypted: int = 0
    outdated: int = 0
    null: int = 0
    unknown_key_version: int = 0
    malformed: int = 0
    invalid_tag: int = 0
    unindexable: int = 0
    changed: int = 0
    versions: dict[int, int] = field(default_factory=dict)
    unreadable_versions: dict[int, dict[str, int]] = field(default_factory=dict)

    @property
    def missing_versions(self) -> dict[int, int]:
        """The ``unknown_key_version`` values per key version (from ``unreadable_versions``)."""
        return {version: by_reason["unknown_key_version"]
                for version, by_reason in sorted(self.unreadable_versions.items())
                if by_reason.get("unknown_key_version")}

    @property
    def failed(self) -> int:
        """Values that cannot be read, or not moved with their blind indexes."""
        return self.unknown_key_version + self.malformed + self.invalid_tag + self.unindexable

    def add_statuses(self, status: np.ndarray, versions: np.ndarray) -> None:
        """Counts one batch's statuses and the versions of its readable values."""
        found = np.bincount(status, minlength=UNINDEXABLE + 1)
        self.values += int(status.shape[0])
        for s in (*ValueStatus, UNINDEXABLE):
            setattr(self, reason(s), getattr(self, reason(s)) + int(found[s]))
        readable = np.isin(status, READABLE)
        v, c = np.unique(versions[readable], return_counts=True)
        for version, count in zip(v.tolist(), c.tolist()):
            self.versions[version] = self.versions.get(version, 0) + count
        for s in NAMED_UNREADABLE:
            named = (status == s) & (versions > 0)
            v, c = np.unique(versions[named], return_counts=True)
            for version, count in zip(v.tolist(), c.tolist()):
                self._add_unreadable(version, reason(s), count)

    def _add_unreadable(self, version: int, why: str, count: int) -> None:
        by_reason = self.unreadable_versions.setdefault(version, {})
        by_reason[why] = by_reason.get(why, 0) + count

    def merge(self, other: "ColumnCounts") -> None:
        for name in ("values", "current", "reencrypted", "outdated", "null",
                     "unknown_key_version", "malformed", "invalid_tag", "unindexable", "changed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for version, count in other.versions.items():
            self.versions[version] = self.versions.get(version, 0) + count
        for version, by_reason in other.unreadable_versions.items():
            for why, count in by_reason.items():
                self._add_unreadable(version, why, count)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["failed"] = self.failed
        d["versions"] = {str(k): v for k, v in sorted(self.versions.items())}
        d["unreadable_versions"] = {str(k): dict(sorted(v.items()))
                                    for k, v in sorted(self.unreadable_versions.items())}
        d["missing_versions"] = {str(k): v for k, v in sorted(self.missing_versions.items())}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ColumnCounts":
        d = {k: v for k, v in d.items() if k != "failed"}
        d["versions"] = {int(k): v for k, v in d.get("versions", {}).items()}
        d["unreadable_versions"] = {int(k): dict(v) for k, v in
                                    d.get("unreadable_versions", {}).items()}
        d.pop("missing_versions", None)
        return cls(**d)


@dataclass(frozen=True)
class Failure:
    """A value that cannot be read: its column, its row's key (for Parquet: file and row
    number) and why."""

    column: str
    key: Any
    reason: str


@dataclass
class PartitionResult:
    """What one partition (a key range or a file) produced; sent back from a worker."""

    rows: int = 0
    columns: dict[str, ColumnCounts] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    failures_total: int = 0
    complete: bool = True

    def merge(self, other: "PartitionResult", max_failures: int) -> None:
        self.rows += other.rows
        for name, counts in other.columns.items():
            self.columns.setdefault(name, ColumnCounts()).merge(counts)
        room = max(0, max_failures - len(self.failures))
        self.failures.extend(other.failures[:room])
        self.failures_total += other.failures_total
        self.complete = self.complete and other.complete

    def copy(self) -> "PartitionResult":
        return replace(self, columns={name: replace(c, versions=dict(c.versions))
                                      for name, c in self.columns.items()},
                       failures=list(self.failures))

    def to_json(self) -> str:
        """What a checkpoint keeps of the rows a job is done with (keys by
        :func:`~engine.reencrypt.rowkeys.encode_key`): a resumed job reports them too."""
        return json.dumps({
            "rows": self.rows, "failures_total": self.failures_total,
            "columns": {name: c.to_dict() for name, c in self.columns.items()},
            "failures": [[f.column, encode_key(f.key), f.reason] for f in self.failures]},
            separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "PartitionResult":
        """The result :meth:`to_json` wrote."""
        d = json.loads(text)
        return cls(rows=d["rows"], failures_total=d["failures_total"],
                   columns={name: ColumnCounts.from_dict(c) for name, c in d["columns"].items()},
                   failures=[Failure(column, decode_key(key), why)
                             for column, key, why in d["failures"]])


@dataclass
class _Report:
    store: str
    table: str | None
    columns: dict[str, ColumnCounts]
    rows: int
    failures: list[Failure]
    failures_total: int
    duration_s: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.duration_s if self.duration_s > 0 else 0.0

    def _base_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "table": self.table,
            "rows": self.rows,
            "columns": {k: v.to_dict() for k, v in self.columns.items()},
            "failed": sum(c.failed for c in self.columns.values()),
            "failures": [{"column": f.column, "key": key_for_json(f.key), "reason": f.reason}
                         for f in self.failures],
            "failures_listed": len(self.failures),
            "duration_s": round(self.duration_s, 6),
            "rows_per_s": round(self.rows_per_s, 1),
        }


@dataclass
class Inventory(_Report):
    """Per column: how many values are under each key version, NULL, or unreadable (by
    reason). :meth:`engine.KeyRotationService.purge` takes it."""

    current_version: int = 0

    def values_under(self, version: int) -> dict[str, int]:
        """How many values each column still has under ``version`` (``table.column`` ->
        count): what purging that version would make unreadable."""
        prefix = f"{self.table}." if self.table else ""
        return {prefix + name: c.versions.get(version, 0) for name, c in self.columns.items()}

    def still_named(self, version: int) -> dict[str, dict[str, int]]:
        """Every value whose header names ``version``, readable or not, per column
        (``table.column`` -> {``readable`` or a failure reason: count}); columns with none
        are left out. Purging the version makes all of them unreadable for good."""
        prefix = f"{self.table}." if self.table else ""
        out = {}
        for name, c in self.columns.items():
            counts = {"readable": c.versions.get(version, 0),
                      **c.unreadable_versions.get(version, {})}
            counts = {k: n for k, n in counts.items() if n}
            if counts:
                out[prefix + name] = counts
        return out

    def all_current(self) -> bool:
        """True when every non-NULL value is readable and under the current version."""
        return all(c.current == c.values - c.null for c in self.columns.values())

    def to_dict(self) -> dict[str, Any]:
        return {**self._base_dict(), "current_version": self.current_version,
                "all_current": self.all_current()}


@dataclass
class ReencryptionReport(_Report):
    """What :func:`engine.reencrypt.reencrypt` did, over every run of the job: a run that
    resumes an interrupted one reports what both found (``resumed_rows`` of the rows were
    counted by the earlier runs; ``duration_s`` and ``rows_per_s`` are this run's).

    ``complete`` is False when the job stopped early; ``changed`` values were left for the
    next pass because the application wrote them meanwhile.
    """

    target_version: int = 0
    complete: bool = True
    resumed_rows: int = 0

    @property
    def rows_per_s(self) -> float:
        rows = self.rows - self.resumed_rows
        return rows / self.duration_s if self.duration_s > 0 else 0.0

    def _total(self, name: str) -> int:
        return sum(getattr(c, name) for c in self.columns.values())

    @property
    def scanned(self) -> int:
        return self._total("values")

    @property
    def reencrypted(self) -> int:
        return self._total("reencrypted")

    @property
    def already_current(self) -> int:
        return self._total("current")

    @property
    def failed(self) -> int:
        return self._total("failed")

    @property
    def changed(self) -> int:
        return self._total("changed")

    def to_dict(self) -> dict[str, Any]:
        return {**self._base_dict(), "target_version": self.target_version,
                "scanned": self.scanned, "reencrypted": self.reencrypted,
                "already_current": self.already_current, "changed": self.changed,
                "complete": self.complete, "resumed_rows": self.resumed_rows}
