"""Parquet files through encrypt_columns_file/decrypt_columns_file: every column not encrypted
keeps its codec and level, dictionary encoding and statistics; the file its row groups,
key-value metadata and sort order; encrypted columns are binary values without statistics or
dictionary; and decryption gives the original table back."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine import EncryptionService, StaticKeyProvider, tables
from engine.columns import inspect_values

TEMPLATE = "users:{id}:{column}"


@pytest.fixture(scope="module")
def service():
    return EncryptionService(StaticKeyProvider({1: os.urandom(32)}), metrics=False)


def people(n):
    return pa.table({
        "id": pa.array(range(n), pa.int64()),
        "email": pa.array([None if i % 11 == 4 else f"user{i}@example.com" for i in range(n)]),
        "country": pa.array([("DE", "FR", "NL")[i % 3] for i in range(n)]),
        "score": pa.array([i / 7 for i in range(n)]),
        "born": pa.array([i * 86_400_000_000 for i in range(n)], pa.timestamp("us", "UTC")),
    }).replace_schema_metadata({b"owner": b"crm", b"pipeline": b"nightly"})


def chunks(path):
    meta = pq.ParquetFile(path).metadata
    return {(g, meta.row_group(g).column(c).path_in_schema): meta.row_group(g).column(c)
            for g in range(meta.num_row_groups) for c in range(meta.num_columns)}


def test_every_property_of_the_plain_columns_is_kept(service, tmp_path):
    t = people(20_000)
    src, enc, back = tmp_path / "in.parquet", tmp_path / "enc.parquet", tmp_path / "back.parquet"
    pq.write_table(t, src, row_group_size=6_000, compression="zstd", compression_level=9,
                   use_dictionary=["country", "email"], write_statistics=["id", "score", "email"],
                   sorting_columns=[pq.SortingColumn(0)])
    report = tables.encrypt_columns_file(str(src), str(enc), ["email"], aad_template=TEMPLATE,
                                         service=service)
    assert (report["rows"], report["batches"]) == (20_000, 4)
    before, after = pq.ParquetFile(src).metadata, pq.ParquetFile(enc).metadata
    assert [before.row_group(g).num_rows for g in range(4)] == \
        [after.row_group(g).num_rows for g in range(4)] == [6000, 6000, 6000, 2000]
    assert after.metadata[b"owner"] == b"crm" and after.metadata[b"pipeline"] == b"nightly"
    assert after.row_group(0).sorting_columns == (pq.SortingColumn(0),)
    assert pq.ParquetFile(enc).schema_arrow.field("email").type == pa.large_binary()
    old, new = chunks(src), chunks(enc)
    for (g, path), chunk in new.items():
        was = old[g, path]
        assert chunk.compression == "ZSTD", (g, path)
        if path == "email":
            assert not chunk.is_stats_set and not chunk.has_dictionary_page
            continue
        assert chunk.has_dictionary_page == was.has_dictionary_page, (g, path)
        assert chunk.is_stats_set == was.is_stats_set, (g, path)
        if was.is_stats_set:
            assert chunk.statistics == was.statistics, (g, path)
        assert chunk.total_compressed_size == was.total_compressed_size, (g, path)  # level 9
    assert inspect_values(pq.read_table(enc)["email"]).versions == {1: len(t) - t["email"].null_count}
    tables.decrypt_columns_file(str(enc), str(back), ["email"], aad_template=TEMPLATE,
                                service=service)
    assert pq.read_table(back).equals(t)
    restored = chunks(back)
    for (g, path), chunk in restored.items():
        assert chunk.compression == "ZSTD" and (path == "email" or
                                                 chunk.total_compressed_size ==
                                                 old[g, path].total_compressed_size)


def test_every_type_in_a_file_and_columns_without_values(service, tmp_path):
    t = pa.table({
        "id": pa.array(range(300), pa.int64()),
        "dec": pa.array([None] * 150 + [i for i in range(150)], pa.int64()).cast(
            pa.decimal128(22, 2)),
        "lst": pa.array([[i, i + 1] for i in range(300)], pa.list_(pa.int32())),
        "st": pa.array([{"a": i} for i in range(300)], pa.struct([("a", pa.int16())])),
        "none": pa.array([None] * 300, pa.float32()),
    })
    pq.write_table(t, tmp_path / "in.parquet", row_group_size=100)
    cols = ["dec", "lst", "st", "none"]
    tables.encrypt_columns_file(str(tmp_path / "in.parquet"), str(tmp_path / "e.parquet"), cols,
                                service=service)
    tables.decrypt_columns_file(str(tmp_path / "e.parquet"), str(tmp_path / "b.parquet"), cols,
                                service=service)
    assert pq.read_table(tmp_path / "b.parquet").equals(pq.read_table(tmp_path / "in.parquet"))


def test_files_of_earlier_releases_still_decrypt(service, tmp_path):
    """A Parquet file of ``ef1:`` text tokens (what encrypt_columns_file wrote before the
    column format) decrypts to its original column."""
    t = people(500)
    tokens = pa.array(service.encrypt_many(t["email"].drop_null().to_pylist()))
    column = pa.array([None] * len(t), pa.large_string())
    import pyarrow.compute as pc

    column = pc.replace_with_mask(column, t["email"].is_valid().combine_chunks(),
                                  tokens.cast(pa.large_string()))
    field = pa.field("email", pa.large_string(),
                     metadata={tables.ORIGINAL_TYPE_KEY: b"string"})
    pq.write_table(t.set_column(1, field, column), tmp_path / "old.parquet", row_group_size=200)
    tables.decrypt_columns_file(str(tmp_path / "old.parquet"), str(tmp_path / "b.parquet"),
                                ["email"], service=service)
    back = pq.read_table(tmp_path / "b.parquet")
    assert back["email"].to_pylist() == t["email"].to_pylist()
    assert back.schema.field("email").type == pa.string()


def test_the_command_line_takes_every_type_and_refuses_plain_columns(tmp_path):
    """``encrypt-columns --column score`` (a float column) once exited 3, "backend
    unavailable"; now it encrypts, and a column given to decrypt that is not encrypted (or not
    binary at all) is bad usage, exit 2."""
    import subprocess
    import sys

    env = {**os.environ, "ENCRYPTION_MASTER_KEY": "parquet-tables-master-key-0123456789",
           "VAULT_ENABLED": "false", "ENGINE_KEY_STATE_FILE": str(tmp_path / "keys.json"),
           "ENCRYPTION_KDF_ITERATIONS": "1000"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                              text=True, timeout=300, env=env, cwd=tmp_path)

    t = people(3000)
    pq.write_table(t, tmp_path / "in.parquet", row_group_size=1000, compression="zstd")
    cols = ["--column", "score", "--column", "born", "--column", "email"]
    assert cli("encrypt-columns", "in.parquet", "enc.parquet", *cols).returncode == 0
    r = cli("decrypt-columns", "enc.parquet", "back.parquet", *cols, "--json")
    assert r.returncode == 0, r.stderr
    assert pq.read_table(tmp_path / "back.parquet").equals(pq.read_table(tmp_path / "in.parquet"))
    for column in ("id", "country"):
        r = cli("decrypt-columns", "enc.parquet", "o.parquet", "--column", column)
        assert r.returncode == 2 and f"'{column}'" in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / "o.parquet").exists()


def test_a_file_written_by_pandas_is_read_by_pandas_before_and_after(service, tmp_path):
    """The pandas metadata of the file says the encrypted columns hold bytes (pandas reads the
    encrypted file, where an ``Int64`` entry over binary values once failed), and decryption,
    of the file or of the frame pandas read from it, gives the frame back with its dtypes."""
    import pandas as pd

    df = pd.DataFrame({"id": [1, 2, 3, 4], "n": pd.array([1, None, 3, 4], "Int64"),
                       "c": pd.Categorical(["a", "b", None, "a"]),
                       "s": pd.array(["x", None, "z", "w"], "string")})
    df.to_parquet(tmp_path / "in.parquet")
    cols = ["n", "c", "s"]
    tables.encrypt_columns_file(str(tmp_path / "in.parquet"), str(tmp_path / "enc.parquet"),
                                cols, service=service)
    sealed = pd.read_parquet(tmp_path / "enc.parquet")
    assert all(isinstance(v, bytes) for c in cols for v in sealed[c].dropna())
    pd.testing.assert_frame_equal(tables.decrypt_columns(sealed, cols, service=service), df)
    tables.decrypt_columns_file(str(tmp_path / "enc.parquet"), str(tmp_path / "back.parquet"),
                                cols, service=service)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "back.parquet"), df)
