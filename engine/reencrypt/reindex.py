"""Blind indexes in a re-encryption job: the index values of the rows a batch moves, from the
plaintexts the service has just opened, under the version it re-encrypts to.

While a batch is re-sealed, the service hands each column's plaintexts to
:meth:`Plaintexts.keeper` (copied out of its buffer, which it wipes; wiped here once the batch's
indexes are computed). An index belongs to one column of the job (its owner): for each row
whose owner value was re-encrypted, its other fields come from the row's plain columns or from
the plaintexts of the job's other columns (opened again where such a value was already under
the target version). A row whose index cannot be computed keeps its old values (status
:data:`~engine.reencrypt.report.UNINDEXABLE`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..batch import Batch
from ..blind_index import BlindIndex, IndexDefinition, NormalisationError
from ..codecs import interleave
from ..keys.base import KeyProvider
from ..service import EncryptionService, ValueStatus
from .report import UNINDEXABLE
from .spec import Column, column_of

__all__ = ["ColumnPass", "Indexes", "Plaintexts", "build_indexes", "index_values",
           "keep_unindexable", "worker_indexes"]

Indexes = Mapping[IndexDefinition, BlindIndex]


def build_indexes(columns: Sequence[Column], provider: KeyProvider,
                  threads: int | None = None) -> dict[IndexDefinition, BlindIndex]:
    """The blind index of every definition of ``columns``, keyed by ``provider``."""
    return {d: d.build(provider, threads=threads) for c in columns for d in c.indexes}


_indexes: dict[Any, dict[IndexDefinition, BlindIndex]] = {}


def worker_indexes(factory: Callable[[], EncryptionService], columns: Sequence[Column],
                   service: EncryptionService, threads: int | None) -> Indexes:
    """The blind indexes of this worker process (beside its service, see
    :func:`engine.reencrypt.transform.worker_service`), built once per job configuration: an
    index keeps its keys once derived."""
    key = (factory, tuple(columns), threads)
    indexes = _indexes.get(key)
    if indexes is None:
        indexes = _indexes[key] = build_indexes(columns, service.provider, threads)
    return indexes


@dataclass
class ColumnPass:
    """What one column's pass through the service produced: statuses (set to UNINDEXABLE in
    place where a row's index cannot be computed), the versions found, the target version,
    the values to store (stored column -> Arrow), and what went to the service (``values``,
    ``aad``, and each value's row, or None when value i is row i) so that values can be
    opened again."""

    status: np.ndarray
    versions: np.ndarray
    target: int
    new: dict[str, Any]
    values: Any
    aad: Any
    where: np.ndarray | None


class Plaintexts:
    """Plaintexts opened while one batch is re-sealed, per column, copied out of the service's
    buffer (which it wipes) until the batch's blind indexes are computed, then wiped."""

    def __init__(self) -> None:
        self._kept: dict[str, list[tuple[np.ndarray, Batch]]] = {}
        self._scratch: list[Batch] = []

    def keeper(self, name: str) -> Callable[[np.ndarray, Batch], None]:
        """``keep(rows, plain)``: record the plaintexts of column ``name`` at ``rows``."""
        def keep(rows: np.ndarray, plain: Batch) -> None:
            copy = plain.take(np.arange(len(plain)))
            self._kept.setdefault(name, []).append((np.asarray(rows, dtype=np.int64), copy))

        return keep

    def has(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Which of ``rows`` have a plaintext of column ``name``."""
        kept = [r for r, _ in self._kept.get(name, [])]
        return np.isin(rows, np.concatenate(kept)) if kept else np.zeros(rows.shape[0], bool)

    def at(self, name: str, rows: np.ndarray) -> Batch:
        """The plaintexts of column ``name`` at ``rows`` (each of them kept)."""
        kept = self._kept[name]
        if len(kept) == 1:
            where, plain = kept[0]
        else:
            where = np.concatenate([r for r, _ in kept])
            order = np.argsort(where, kind="stable")
            rank = np.empty_like(order)
            rank[order] = np.arange(order.shape[0])
            start = np.cumsum([0] + [len(p) for _, p in kept])
            plain = interleave(where.shape[0], [(rank[a:b], p) for (_, p), a, b
                                                in zip(kept, start[:-1], start[1:])])
            self._scratch.append(plain)
            where = where[order]
        if where.shape == rows.shape and np.array_equal(where, rows):
            return plain
        out = plain.take(np.searchsorted(where, rows))
        self._scratch.append(out)
        return out

    def wipe(self) -> None:
        for batch in self._scratch + [p for kept in self._kept.values() for _, p in kept]:
            batch.data.fill(0)
        self._kept.clear()
        self._scratch.clear()


def index_values(batch: Any, owner: str, index: BlindIndex, by_name: dict[str, ColumnPass],
                  opened: Plaintexts, service: EncryptionService, threads: int | None) -> Any:
    """The index's values for the rows whose ``owner`` value was re-encrypted (null elsewhere),
    under the version it was re-encrypted to. A row whose index cannot be computed (another
    encrypted field of it cannot be opened, or a field fails the normaliser) keeps its old
    value: its status becomes UNINDEXABLE."""
    import pyarrow as pa
    import pyarrow.compute as pc

    result = by_name[owner]
    rows = np.flatnonzero(result.status == ValueStatus.REENCRYPTED)
    usable = np.ones(rows.shape[0], dtype=bool)
    null = np.zeros(rows.shape[0], dtype=bool)
    for name in (f for f in index.columns if f in by_name):
        status = by_name[name].status[rows]
        current = rows[status == ValueStatus.CURRENT]
        if name != owner and current.shape[0]:  # under the target already: not opened yet
            _open_again(by_name[name], current, opened.keeper(name), service, threads)
        null |= status == ValueStatus.NULL
        usable &= (status == ValueStatus.NULL) | opened.has(name, rows)
    result.status[rows[~usable]] = UNINDEXABLE
    todo = rows[usable & ~null]
    while todo.shape[0]:
        fields = {f: opened.at(f, todo) if f in by_name else column_of(batch, f).take(todo)
                  for f in index.columns}
        try:
            values = index.compute(fields if len(fields) > 1 else fields[index.columns[0]],
                                   version=result.target, arrow=True)
            break
        except NormalisationError as exc:  # the positions only: the error holds no value
            failed = exc.failed
        result.status[todo[failed]] = UNINDEXABLE
        todo = np.delete(todo, failed)
    out = pa.nulls(batch.num_rows, pa.large_string())
    if not todo.shape[0]:
        return out
    mask = np.zeros(batch.num_rows, dtype=bool)
    mask[todo] = True
    return pc.replace_with_mask(out, pa.array(mask), values)


def keep_unindexable(batch: Any, result: ColumnPass) -> None:
    """The values to store hold the old value again where the row's index could not be
    computed (a file is rewritten whole: what it is given is what it holds)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    left = result.status == UNINDEXABLE
    if left.any():
        mask = pa.array(left)
        result.new = {name: pc.if_else(mask, column_of(batch, name), new)
                      for name, new in result.new.items()}


def _open_again(column: ColumnPass, rows: np.ndarray, keep: Callable[[np.ndarray, Batch], None],
                service: EncryptionService, threads: int | None) -> None:
    """Opens the column's values at ``rows`` and keeps their plaintexts (those that open)."""
    pos = rows if column.where is None else np.searchsorted(column.where, rows)
    aad = column.aad.take(pos) if isinstance(column.aad, Batch) else column.aad
    service.reencrypt_many(column.values.take(pos), aad, check_only=True, threads=threads,
                           plaintext=lambda at, plain: keep(rows[at], plain))
