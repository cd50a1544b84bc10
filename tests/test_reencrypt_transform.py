"""The cryptographic step of a job (engine.reencrypt.transform): its typed results, and their
trip through Arrow IPC between a worker process and the coordinator."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from engine import EncryptionService, StaticKeyProvider
from engine.reencrypt import Column
from engine.reencrypt.transform import ColumnOutcome, Resealed, reseal
from engine.service import ValueStatus

OLD = EncryptionService(StaticKeyProvider({1: bytes(range(32))}), metrics=False)
NEW = EncryptionService(StaticKeyProvider({1: bytes(range(32)), 2: bytes(range(1, 33))}),
                        metrics=False)


def _same(a: Resealed, b: Resealed) -> None:
    assert len(a.columns) == len(b.columns)
    for x, y in zip(a.columns, b.columns):
        assert x.status.dtype == np.uint8 and y.status.dtype == np.uint8
        assert np.array_equal(x.status, y.status) and np.array_equal(x.versions, y.versions)
        assert list(x.values) == list(y.values) and list(x.indexes) == list(y.indexes)
        for name in x.values:
            assert x.values[name].equals(y.values[name]), name
        for name in x.indexes:
            assert x.indexes[name].equals(y.indexes[name]), name


def test_results_of_several_columns_with_and_without_indexes_cross_ipc_unchanged():
    first = ColumnOutcome(np.array([1, 2, 0], np.uint8), np.array([1, 2, 0], np.int64),
                          {"a": pa.array([b"x", None, b"zz"], pa.large_binary())},
                          {"a_idx": pa.array(["k", None, None])})
    second = ColumnOutcome(np.array([2, 2, 2], np.uint8), np.array([2, 2, 2], np.int64),
                           {"nonce": pa.array([b"n" * 16] * 3, pa.binary(16)),
                            "ct": pa.array([b"c", b"", b"ccc"]),
                            "tag": pa.array([b"t" * 16] * 3, pa.binary(16)),
                            "version": pa.array([2, 2, 2], pa.int32())}, {})
    check_only = ColumnOutcome(np.array([3, 3, 3], np.uint8), np.zeros(3, np.int64), {}, {})
    for result in (Resealed((first, second, check_only)), Resealed((check_only,)),
                   Resealed(())):
        _same(result, Resealed.from_ipc(result.to_ipc()))


def test_reseal_moves_a_token_column_and_its_result_survives_ipc():
    tokens = OLD.encrypt_many([f"value {i}" for i in range(50)])
    batch = pa.record_batch({"id": pa.array(range(50)), "v": pa.array(tokens, pa.large_string())})
    result = reseal(batch, [Column("v")], NEW)
    [outcome] = result.columns
    assert outcome.reencrypted().all() and set(outcome.versions.tolist()) == {1}
    moved = outcome.values["v"].to_pylist()
    assert NEW.decrypt_many(moved).to_list() == [f"value {i}".encode() for i in range(50)]
    _same(result, Resealed.from_ipc(result.to_ipc()))
    again = reseal(pa.record_batch({"id": pa.array(range(50)),
                                    "v": pa.array(moved, pa.large_string())}), [Column("v")], NEW)
    assert (again.columns[0].status == ValueStatus.CURRENT).all()
    assert set(again.columns[0].versions.tolist()) == {2}
