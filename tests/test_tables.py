"""Table columns: pyarrow, pandas and polars; AAD templates; NULLs; Parquet/CSV through the
command line; the Dask and multiprocessing recipes of docs/pipelines.md."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import engine
from engine import EncryptionService, FieldEncryption, StaticKeyProvider, tables
from engine.columns import decrypt_array, inspect_values

TEMPLATE = "users:{id}:{column}"


@pytest.fixture
def service():
    return EncryptionService(StaticKeyProvider({1: os.urandom(32)}), metrics=False)


def sample(n=1000):
    return pa.table({
        "id": pa.array(range(n), pa.int64()),
        "email": pa.array([None if i % 7 == 3 else f"user{i}@example.com" for i in range(n)]),
        "ssn": pa.array([f"{i:09d}".encode() for i in range(n)], pa.binary()),
        "score": pa.array([i / 3 for i in range(n)]),
    })


def test_round_trip_keeps_schema_and_nulls(service):
    t = sample()
    e = tables.encrypt_columns(t, ["email", "ssn"], aad_template=TEMPLATE, service=service)
    assert e.schema.names == t.schema.names
    assert e.column("score").chunk(0).buffers()[1].address == t.column("score").chunk(0).buffers()[1].address
    assert e.column("email").null_count == t.column("email").null_count
    assert e.column("email").is_null().equals(t.column("email").is_null())
    assert e.schema.field("ssn").type == pa.large_binary()
    assert all(v[0] == 0xC0 for v in e.column("ssn").to_pylist())  # docs/column-format.md
    assert tables.decrypt_columns(e, ["email", "ssn"], aad_template=TEMPLATE, service=service).equals(t)
    # values of the column format, bound to the AAD the template describes (built here in Python)
    aad = pa.array([f"users:{i}:email" for i in range(len(t))])
    assert decrypt_array(e.column("email").combine_chunks(), "email", service=service, aad=aad) \
        .equals(t.column("email").combine_chunks())


def test_the_template_binds_rows_and_columns(service):
    t = sample(10)
    e = tables.encrypt_columns(t, "ssn", aad_template=TEMPLATE, service=service)
    swapped = e.set_column(0, "id", pa.array([1, 0, *range(2, 10)], pa.int64()))
    with pytest.raises(engine.BatchInvalidTag) as info:
        tables.decrypt_columns(swapped, "ssn", aad_template=TEMPLATE, service=service)
    assert info.value.failed.tolist() == [0, 1]
    with pytest.raises(engine.InvalidTag):
        tables.decrypt_columns(e, "ssn", service=service)
    moved = e.set_column(1, pa.field("email", pa.large_binary()), e.column("ssn"))
    with pytest.raises(engine.InvalidTag):
        tables.decrypt_columns(moved, "email", aad_template=TEMPLATE, service=service)


def test_record_batches_pandas_and_polars(service):
    t = sample(50)
    batch = t.to_batches()[0]
    back = tables.decrypt_columns(tables.encrypt_columns(batch, "email", service=service), "email",
                                  service=service)
    assert isinstance(back, pa.RecordBatch) and back.equals(batch)
    df = t.to_pandas()
    enc = tables.encrypt_columns(df, ["email"], aad_template=TEMPLATE, service=service)
    assert isinstance(enc, pd.DataFrame) and enc["email"].isna().equals(df["email"].isna())
    pd.testing.assert_frame_equal(
        tables.decrypt_columns(enc, ["email"], aad_template=TEMPLATE, service=service), df)
    pf = pl.from_arrow(t)
    enc = tables.encrypt_columns(pf, "email", service=service)
    assert isinstance(enc, pl.DataFrame) and enc["email"].null_count() == pf["email"].null_count()
    assert tables.decrypt_columns(enc, "email", service=service).equals(pf)


def test_field_encryption_dispatches_tables(service):
    t = sample(20)
    fe = FieldEncryption(service)
    enc = fe.encrypt_column(t, "email")
    assert isinstance(enc, pa.Table) and fe.decrypt_column(enc, "email").equals(t)
    df = t.to_pandas()
    bound = FieldEncryption(service, bind_context=True)
    enc = bound.encrypt_column(df, "email")
    pd.testing.assert_frame_equal(bound.decrypt_column(enc, "email"), df)
    with pytest.raises(engine.InvalidTag):
        fe.decrypt_column(enc, "email")  # bound to id and column: the unbound AAD fails


def test_bad_arguments(service):
    t = sample(5)
    with pytest.raises(engine.InvalidArgument):
        tables.encrypt_columns(t, "nope", service=service)
    with pytest.raises(engine.InvalidArgument):
        tables.encrypt_columns(t, [], service=service)
    with pytest.raises(tables.ColumnNotEncrypted):
        tables.decrypt_columns(t, "score", service=service)
    with pytest.raises(engine.InvalidArgument):
        tables.encrypt_columns(t, "ssn", aad_template="{missing}", service=service)
    with pytest.raises(engine.InvalidArgument):
        tables.encrypt_columns(t, "ssn", aad_template="{email}", service=service)  # has NULLs
    with pytest.raises(engine.InvalidArgument):
        tables.encrypt_columns(t, "ssn", aad_template="{id!r}", service=service)
    with pytest.raises(engine.InvalidArgumentType):
        tables.encrypt_columns({"email": ["x"]}, "email", service=service)
    with pytest.raises(tables.ColumnNotEncrypted):  # bad usage: a column never encrypted
        tables.decrypt_columns(t, "ssn", service=service)


# ---------------------------------------------------------------- the command line

@pytest.fixture
def env(tmp_path):
    return {**os.environ, "ENCRYPTION_MASTER_KEY": "tables-master-key-0123456789-abcdefgh", "VAULT_ENABLED": "false",
            "ENGINE_KEY_STATE_FILE": str(tmp_path / "keys.json"), "ENCRYPTION_KDF_ITERATIONS": "1000"}


def cli(*args, env):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_parquet_and_csv_through_the_cli(env, tmp_path):
    t = sample(5000)
    pq.write_table(t, tmp_path / "in.parquet", row_group_size=1000)
    args = ["--column", "email", "--column", "ssn", "--aad-template", TEMPLATE]
    r = cli("encrypt-columns", str(tmp_path / "in.parquet"), str(tmp_path / "enc.parquet"), *args,
            "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["batches"] == 5
    meta = pq.ParquetFile(tmp_path / "enc.parquet")
    assert meta.num_row_groups == 5 and meta.schema_arrow.names == t.schema.names
    r = cli("decrypt-columns", str(tmp_path / "enc.parquet"), str(tmp_path / "out.parquet"), *args, env=env)
    assert r.returncode == 0, r.stderr
    assert pq.read_table(tmp_path / "out.parquet").equals(t)
    # a wrong template: exit 1 and no output file
    r = cli("decrypt-columns", str(tmp_path / "enc.parquet"), str(tmp_path / "bad.parquet"),
            "--column", "email", env=env)
    assert r.returncode == 1 and not (tmp_path / "bad.parquet").exists()

    csv_in = t.drop_columns(["ssn"])
    pacsv.write_csv(csv_in, tmp_path / "in.csv")
    r = cli("encrypt-columns", str(tmp_path / "in.csv"), str(tmp_path / "enc.csv"), "--column", "email",
            env=env)
    assert r.returncode == 0, r.stderr
    assert "user1@example.com" not in (tmp_path / "enc.csv").read_text()
    r = cli("decrypt-columns", str(tmp_path / "enc.csv"), str(tmp_path / "out.csv"), "--column", "email",
            env=env)
    assert r.returncode == 0, r.stderr
    back = pacsv.read_csv(tmp_path / "out.csv", convert_options=pacsv.ConvertOptions(
        strings_can_be_null=True, quoted_strings_can_be_null=False))
    assert back.column("email").to_pylist() == csv_in.column("email").to_pylist()
    assert cli("encrypt-columns", str(tmp_path / "in.csv"), str(tmp_path / "x.txt"), "--column", "nope",
               env=env).returncode == 2
    assert cli("encrypt-columns", str(tmp_path / "in.txt"), str(tmp_path / "x"), "--column", "a",
               env=env).returncode == 2


def test_blind_index_columns_in_files(env, tmp_path):
    """``encrypt-columns --index`` writes the index columns beside the encrypted ones, as the
    table API computes them with the same keys; CSV columns an index reads are read as the
    text written (a leading zero is kept)."""
    from engine.blind_index import IndexDefinition

    t = sample(3000).append_column("zip", pa.array([f"{i % 1000:05d}" for i in range(3000)]))
    pq.write_table(t, tmp_path / "in.parquet", row_group_size=1000)
    pacsv.write_csv(t.drop_columns(["ssn"]), tmp_path / "in.csv")
    indexes = ["--index", "email_idx=email:email:16", "--index", "email+zip:text+digits"]
    for name in ("in.parquet", "in.csv"):
        out = tmp_path / name.replace("in", "enc")
        r = cli("encrypt-columns", str(tmp_path / name), str(out), "--column", "email",
                *indexes, "--index-table", "users", "--json", env=env)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["blind_indexes"] == ["email_idx", "email_zip_idx"]
    provider = engine.EnvironmentKeyProvider(env=env)
    expected = engine.BlindIndexes(*(IndexDefinition.parse(text, "users").build(provider)
                                     for text in indexes[1::2])).compute_all(
        {"email": t["email"].to_pylist(), "zip": t["zip"].to_pylist()})
    from_parquet = pq.read_table(tmp_path / "enc.parquet")
    from_csv = pacsv.read_csv(tmp_path / "enc.csv", convert_options=pacsv.ConvertOptions(
        strings_can_be_null=True, quoted_strings_can_be_null=False,
        column_types={"email_idx": pa.string(), "email_zip_idx": pa.string()}))
    for written in (from_parquet, from_csv):
        assert written.column("email_idx").to_pylist() == expected["email_idx"]
        assert written.column("email_zip_idx").to_pylist() == expected["email_zip_idx"]
        sealed = written.column("email").to_pylist()[1]  # binary in Parquet, text in CSV
        assert sealed[:1] == b"\xc0" if isinstance(sealed, bytes) else sealed.startswith("ec1:")
    assert pq.ParquetFile(tmp_path / "enc.parquet").num_row_groups == 3
    # the library call takes definitions (keyed by the service's provider) or indexes
    service = EncryptionService(provider, metrics=False)
    report = tables.encrypt_columns_file(
        str(tmp_path / "in.parquet"), str(tmp_path / "lib.parquet"), ["email"], service=service,
        blind_indexes=engine.BlindIndex(provider, "users", "email", normalizer="email", bits=16))
    assert report["blind_indexes"] == ["email_idx"]
    assert pq.read_table(tmp_path / "lib.parquet")["email_idx"].to_pylist() == \
        expected["email_idx"]
    for bad, message in ((["--index", "email_idx=email:email:16"], "--index-table"),
                         (["--index", "=:", "--index-table", "users"], "cannot read the index"),
                         (["--index", "phone", "--index-table", "users"], "phone")):
        r = cli("encrypt-columns", str(tmp_path / "in.csv"), str(tmp_path / "bad.csv"),
                "--column", "email", *bad, env=env)
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert not (tmp_path / "bad.csv").exists() and "Traceback" not in r.stderr


def test_an_index_never_replaces_the_data_it_is_computed_from(env, tmp_path):
    """An index column named like an encrypted column, a column an index reads or one the
    AAD template reads is refused before anything is written (``--index email=email`` once
    wrote the encrypted index value in place of the email, and ``--index id=email`` broke
    the AAD's ids)."""
    t = sample(50)
    provider = engine.EnvironmentKeyProvider(env=env)
    service = EncryptionService(provider, metrics=False)
    pq.write_table(t, tmp_path / "in.parquet")
    pacsv.write_csv(t.drop_columns(["ssn"]), tmp_path / "in.csv")
    for name in ("email", "ssn", "id", "score"):  # score: read by the second index
        for src in ("in.parquet", "in.csv") if name != "ssn" else ("in.parquet",):
            out = tmp_path / f"out-{name}-{src}"
            more = ["--column", "ssn"] if src == "in.parquet" else []
            r = cli("encrypt-columns", str(tmp_path / src), str(out), "--column", "email", *more,
                    "--aad-template", TEMPLATE, "--index", f"{name}=email:email",
                    "--index", "other_idx=score", "--index-table", "users", "--json", env=env)
            assert r.returncode == 2 and f"'{name}'" in r.stderr, (name, src, r.stderr)
            assert not out.exists() and "Traceback" not in r.stderr
        index = engine.BlindIndex(provider, "users", "email", name=name)
        with pytest.raises(engine.InvalidArgument, match=f"'{name}'"):
            tables.encrypt_columns(t, ["email", "ssn"], aad_template=TEMPLATE, service=service,
                                   blind_indexes=[index, engine.BlindIndex(provider, "users",
                                                                           "score")])
    records = [{"id": i, "email": f"user{i}@example.com"} for i in range(5)]
    for fields, name in ((FieldEncryption(service), "email"),
                         (FieldEncryption(service, bind_context=True), "id")):
        with pytest.raises(engine.InvalidArgument, match=f"'{name}'"):
            fields.encrypt_column(records, "email",
                                  blind_indexes=engine.BlindIndex(provider, "users", "email",
                                                                  name=name))
    assert records[0] == {"id": 0, "email": "user0@example.com"}


def test_a_rotation_while_rows_are_written_leaves_each_index_under_its_rows_version(env,
                                                                                   tmp_path):
    """The index values are computed, then the values encrypted: a rotation in between (here
    from the normaliser, on its first call) once left rows encrypted under v2 with their
    index under v1; a re-encryption job takes such rows for current, so they dropped out of
    lookups once v1 was purged. Each row's index and ciphertext now share a version."""
    provider = engine.EnvironmentKeyProvider(env=env)
    service = EncryptionService(provider, metrics=False)
    rotation = engine.KeyRotationService(provider, engine.RotationPolicy(),
                                         state_dir=tmp_path / "rotation")
    provider.get_current_key()

    def rotating_lower(value: str) -> str:
        if provider.get_current_key().version < target[0]:
            rotation.rotate_keys()
        return value.lower()

    emails = [f"User{i}@Example.com" for i in range(40)]
    reference = engine.BlindIndex(provider, "users", "email", normalizer=str.lower)

    def assert_one_version(tokens, index_values):
        if isinstance(tokens, (pa.Array, pa.ChunkedArray)):  # the column format
            versions = set(inspect_values(tokens).versions)
        else:
            versions = set(service.reencrypt_many(tokens, check_only=True).key_versions.tolist())
        assert versions == {target[0]}
        assert index_values == reference.compute(emails, version=target[0])

    index = engine.BlindIndex(provider, "users", "email", normalizer=rotating_lower)
    target = [2]
    out = tables.encrypt_columns(pa.table({"email": emails}), ["email"], service=service,
                                 blind_indexes=index)
    assert_one_version(out["email"], out["email_idx"].to_pylist())
    target = [3]
    pq.write_table(pa.table({"email": emails}), tmp_path / "in.parquet")
    tables.encrypt_columns_file(str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"),
                                ["email"], service=service, blind_indexes=index)
    out = pq.read_table(tmp_path / "out.parquet")
    assert_one_version(out["email"], out["email_idx"].to_pylist())
    target = [4]
    rows = FieldEncryption(service).encrypt_column([{"email": e} for e in emails], "email",
                                                   blind_indexes=index)
    assert_one_version([r["email"] for r in rows], [r["email_idx"] for r in rows])


# ---------------------------------------------------------------- the recipes

def encrypt_partition(df: pd.DataFrame) -> pd.DataFrame:
    """The recipe of docs/pipelines.md: the service is built inside the worker, from the environment."""
    return tables.encrypt_columns(df, ["email"], aad_template=TEMPLATE)


def decrypt_partition(df: pd.DataFrame) -> pd.DataFrame:
    return tables.decrypt_columns(df, ["email"], aad_template=TEMPLATE)


def same_frame(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal values and NULLs (Dask may turn object strings into its own string dtype)."""
    assert list(a.columns) == list(b.columns) and a.index.equals(b.index)
    for c in a.columns:
        assert a[c].isna().equals(b[c].isna()), c
        assert a[c].dropna().tolist() == b[c].dropna().tolist(), c


@pytest.fixture
def worker_env(env, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    engine.reset_encryption_service()
    yield
    engine.reset_encryption_service()


def test_dask_map_partitions_on_a_local_cluster(worker_env):
    import dask
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    df = sample(4000).drop_columns(["ssn"]).to_pandas()  # Dask would turn bytes into str
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster):
        ddf = dd.from_pandas(df, npartitions=4)
        sealed_meta = ddf._meta.astype({"email": object})  # encrypted values are bytes
        encrypted = ddf.map_partitions(encrypt_partition, meta=sealed_meta).compute()
        # the column format, its type (with the pandas dtype) inline or by reference
        assert all(v[0] in (0xC0, 0xC1) for v in encrypted["email"].dropna())
        with dask.config.set({"dataframe.convert-string": False}):  # keep bytes as bytes
            sealed = dd.from_pandas(encrypted, npartitions=3)
        back = sealed.map_partitions(decrypt_partition, meta=ddf._meta).compute()
    same_frame(back, df)
    same_frame(decrypt_partition(encrypted), df)  # and here, in the parent


def test_multiprocessing_pool(worker_env):
    df = sample(3000).to_pandas()
    parts = [df.iloc[i:i + 1000] for i in range(0, len(df), 1000)]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        encrypted = pool.map(encrypt_partition, parts)
        back = pool.map(decrypt_partition, encrypted)
    pd.testing.assert_frame_equal(pd.concat(back), df)
    pd.testing.assert_frame_equal(decrypt_partition(pd.concat(encrypted)), df)
