"""engine.parquet_rewrite: a file rewritten with some columns transformed keeps every other
property, compared through pyarrow.parquet's metadata and the raw bytes of the column chunks
the transform does not own."""

from __future__ import annotations

import base64
import datetime
import decimal
import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from parquet_support import assert_kept, file_properties, page_kinds

from engine.errors import InvalidArgument
from engine.parquet_pages import DATA_PAGE, DATA_PAGE_V2, DICTIONARY_PAGE
from engine.parquet_rewrite import (
    CannotKeepParquet,
    ParquetUnreadable,
    rewrite_parquet,
    writer_options,
)

N = 3000


def sample_table(n: int = N, *, int96_safe: bool = True) -> pa.Table:
    rng = np.random.default_rng(7)
    ids = np.arange(n)
    start = datetime.datetime(2021, 3, 4, 5, 6, 7, 123456)
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "email": pa.array([f"user{i}@example.com" for i in ids]),
        "tok": pa.array([f"token-{i:08d}-{rng.integers(1 << 30)}" for i in ids]),
        "city": pa.array([f"city{i % 13}" for i in ids]),
        "amount": pa.array(rng.normal(size=n)),
        "small": pa.array(ids % 100, pa.int32()),
        "ts": pa.array([start + datetime.timedelta(seconds=int(i)) for i in ids],
                       pa.timestamp("us")),
        "nested": pa.array([{"x": int(i), "y": f"y{i % 7}"} for i in ids]),
        "tags": pa.array([[f"t{i % 3}", f"u{i % 5}"] for i in ids]),
    }, metadata={"owner": "crm", "pipeline": "nightly"})


# Each case: keyword arguments of pyarrow.parquet.write_table.
CASES = {
    "zstd-level-9": dict(compression="zstd", compression_level=9),
    "snappy-row-groups-sorted": dict(compression="snappy", row_group_size=700,
                                     sorting_columns=[pq.SortingColumn(0),
                                                      pq.SortingColumn(3, descending=True)]),
    "gzip-level-4": dict(compression="gzip", compression_level=4, row_group_size=1000),
    "per-column-codecs": dict(
        compression={"id": "zstd", "email": "gzip", "tok": "snappy", "city": "brotli",
                     "amount": "none", "small": "lz4", "ts": "zstd", "nested.x": "snappy",
                     "nested.y": "gzip", "tags.list.element": "brotli"},
        compression_level={"id": 5, "email": 7, "city": 3, "ts": 12, "nested.y": 2,
                           "tags.list.element": 9, "small": 4}),
    "int96-v2-pages-crc": dict(compression="zstd", use_deprecated_int96_timestamps=True,
                               data_page_version="2.0", write_page_checksum=True,
                               row_group_size=1200),
    "dictionary-and-statistics-off": dict(compression="zstd", use_dictionary=["city", "tok"],
                                          write_statistics=["id", "email", "tok"]),
    "encodings-index-bloom": dict(
        compression="snappy", use_dictionary=["city"],
        column_encoding={"id": "DELTA_BINARY_PACKED", "amount": "BYTE_STREAM_SPLIT",
                         "email": "DELTA_BYTE_ARRAY", "small": "DELTA_BINARY_PACKED"},
        write_page_index=True, bloom_filter_options={"id": {"ndv": 500}, "email": True}),
    "version-1-legacy-lists": dict(version="1.0", compression="gzip", row_group_size=999,
                                   use_compliant_nested_type=False),
    "no-stored-schema": dict(store_schema=False, compression="brotli", compression_level=5),
}


def reverse_tokens(_index: int, table: pa.Table) -> dict:
    return {"tok": pc.utf8_reverse(table["tok"])}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_property_of_the_columns_not_owned_is_kept(tmp_path, case):
    src, dst = str(tmp_path / "src.parquet"), str(tmp_path / "dst.parquet")
    pq.write_table(sample_table(), src, **CASES[case])
    done = rewrite_parquet(src, dst, reverse_tokens, columns={"tok"})
    assert done.written and done.rows == N
    assert done.changed_row_groups == done.row_groups == pq.ParquetFile(src).num_row_groups
    assert_kept(src, dst, {"tok"})
    assert pq.read_table(dst)["tok"].to_pylist() == \
        [t[::-1] for t in pq.read_table(src)["tok"].to_pylist()]


@pytest.fixture(scope="module")
def wordy() -> pa.Table:
    """Pages of about 1 MiB: small inputs compress alike at neighbouring levels, large ones
    not."""
    rng = np.random.default_rng(3)
    words = pa.array(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"])
    n = 60_000
    parts = [words.take(pa.array(rng.integers(0, 8, n))) for _ in range(6)]
    parts.append(pa.array(rng.integers(0, 1000, n)).cast(pa.string()))
    return pa.table({"text": pc.binary_join_element_wise(*parts, " "),
                     "num": rng.integers(0, 1 << 20, n)})


@pytest.mark.parametrize("codec,level", [("gzip", 7), ("zstd", 7), ("lz4", 7), ("zstd", 1)])
def test_levels_are_read_from_the_pages(wordy, codec, level):
    table = wordy
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=codec, compression_level=level, use_dictionary=False)
    buf.seek(0)
    options = writer_options(pq.ParquetFile(buf), buf)
    assert options["compression_level"] == {"text": level, "num": level}
    assert options["compression"] == {"text": codec, "num": codec}


def test_pandas_categorical_decimal_time_zone_and_maps_are_kept(tmp_path):
    import pandas as pd

    n = 500
    frame = pd.DataFrame({
        "tok": [f"tok{i}" for i in range(n)],
        "cat": pd.Categorical([f"c{i % 4}" for i in range(n)]),
        "when": pd.date_range("2024-01-01", periods=n, freq="h", tz="Europe/Paris"),
        "maybe": pd.array([i if i % 3 else None for i in range(n)], dtype="Int64"),
    }, index=pd.RangeIndex(10, 10 + n, name="row"))
    table = pa.Table.from_pandas(frame)
    table = table.append_column("price", pa.array(
        [decimal.Decimal(i) / 100 for i in range(n)], pa.decimal128(9, 2)))
    table = table.append_column("m", pa.array([[("k", i)] for i in range(n)],
                                              pa.map_(pa.string(), pa.int64())))
    table = table.append_column("t", pa.array([datetime.time(i % 24) for i in range(n)],
                                              pa.time64("us")))
    table = table.append_column("big", pa.array([f"s{i}" for i in range(n)], pa.large_string()))
    src, dst = str(tmp_path / "src.parquet"), str(tmp_path / "dst.parquet")
    pq.write_table(table, src, store_decimal_as_integer=True, write_time_adjusted_to_utc=True,
                   compression="zstd", compression_level=6)
    rewrite_parquet(src, dst, reverse_tokens, columns={"tok"})
    assert_kept(src, dst, {"tok"})
    back = pq.read_table(dst).to_pandas()
    assert back["cat"].dtype == frame["cat"].dtype and back.index.equals(frame.index)
    assert str(back["when"].dtype) == str(frame["when"].dtype)
    assert back["maybe"].dtype == frame["maybe"].dtype


def test_int96_values_beyond_nanoseconds_survive_without_a_stored_schema(tmp_path):
    far = [datetime.datetime(1, 1, 1), datetime.datetime(2020, 5, 6, 7, 8, 9, 123456),
           datetime.datetime(9999, 12, 31, 23, 59, 59)]
    src, dst = str(tmp_path / "src.parquet"), str(tmp_path / "dst.parquet")
    pq.write_table(pa.table({"tok": ["a", "b", "c"], "ts": pa.array(far, pa.timestamp("us"))}),
                   src, use_deprecated_int96_timestamps=True, store_schema=False)
    rewrite_parquet(src, dst, reverse_tokens, columns={"tok"})
    assert_kept(src, dst, {"tok"})
    read = pq.read_table(dst, coerce_int96_timestamp_unit="us")["ts"].to_pylist()
    assert read == far  # read at nanoseconds, 1 and 9999 would have wrapped to other dates


def test_int96_nanoseconds_are_kept_exactly(tmp_path):
    values = pa.array([1_600_000_000_123_456_789, 1_700_000_000_000_000_001], pa.timestamp("ns"))
    src, dst = str(tmp_path / "src.parquet"), str(tmp_path / "dst.parquet")
    pq.write_table(pa.table({"tok": ["a", "b"], "ts": values}), src,
                   use_deprecated_int96_timestamps=True, store_schema=False)
    rewrite_parquet(src, dst, reverse_tokens, columns={"tok"})
    assert pq.read_table(dst)["ts"].equals(pq.read_table(src)["ts"])
    assert_kept(src, dst, {"tok"})


def test_nested_int96_without_a_stored_schema_is_refused(tmp_path):
    src = str(tmp_path / "src.parquet")
    pq.write_table(pa.table({"tok": ["a"], "s": pa.array(
        [{"ts": datetime.datetime(1, 1, 1)}], pa.struct([("ts", pa.timestamp("us"))]))}), src,
        use_deprecated_int96_timestamps=True, store_schema=False)
    with pytest.raises(CannotKeepParquet, match="INT96"):
        rewrite_parquet(src, str(tmp_path / "dst.parquet"), reverse_tokens, columns={"tok"})


def test_lazy_rewrites_write_nothing_until_a_row_group_changes(tmp_path):
    src, dst = str(tmp_path / "src.parquet"), str(tmp_path / "dst.parquet")
    pq.write_table(sample_table(), src, row_group_size=1000, compression="zstd")
    done = rewrite_parquet(src, dst, lambda i, t: None, columns={"tok"})
    assert not done.written and not (tmp_path / "dst.parquet").exists()
    only_last = rewrite_parquet(src, dst, lambda i, t: reverse_tokens(i, t) if i == 2 else None,
                                columns={"tok"})
    assert only_last.written and only_last.changed_row_groups == 1
    assert_kept(src, dst, {"tok"})
    got, want = pq.read_table(dst)["tok"].to_pylist(), pq.read_table(src)["tok"].to_pylist()
    assert got[:2000] == want[:2000] and got[2000:] == [t[::-1] for t in want[2000:]]
    assert rewrite_parquet(src, dst, lambda i, t: None, columns={"tok"}, lazy=False).written
    assert_kept(src, dst, set())


def test_empty_row_groups_and_empty_files_keep_their_shape(tmp_path):
    src, dst = str(tmp_path / "src.parquet"), str(tmp_path / "dst.parquet")
    table = sample_table(10)
    with pq.ParquetWriter(src, table.schema, compression="gzip") as w:
        w.write_table(table.slice(0, 4), row_group_size=4)
        w.write_table(table.slice(0, 0), row_group_size=1)
        w.write_table(table.slice(4), row_group_size=6)
    rewrite_parquet(src, dst, reverse_tokens, columns={"tok"})
    assert file_properties(dst)["rows"] == [4, 0, 6]
    assert_kept(src, dst, {"tok"})
    pq.write_table(table.slice(0, 0), src)
    assert not rewrite_parquet(src, dst, lambda i, t: None, columns={"tok"}).written
    assert rewrite_parquet(src, dst, lambda i, t: None, columns={"tok"}, lazy=False).written
    assert file_properties(dst) == file_properties(src)


def test_a_transform_may_change_the_type_of_its_columns(tmp_path):
    src, dst = str(tmp_path / "src.parquet"), str(tmp_path / "dst.parquet")
    pq.write_table(sample_table(), src, compression="zstd", row_group_size=1000,
                   write_statistics=["id", "tok"])

    def to_binary(_i, t):
        return {"tok": pc.binary_join_element_wise(t["tok"].cast(pa.binary()), b"!", b"")}

    rewrite_parquet(src, dst, to_binary, columns={"tok"}, types={"tok": pa.binary()})
    assert pq.read_schema(dst).field("tok").type == pa.binary()
    assert pq.read_table(dst)["tok"][0].as_py() == pq.read_table(src)["tok"][0].as_py().encode() + b"!"
    others = [n for n in pq.read_schema(src).names if n != "tok"]
    assert pq.read_table(dst, columns=others).equals(pq.read_table(src, columns=others))
    with pytest.raises(InvalidArgument, match="every row group"):
        rewrite_parquet(src, dst, lambda i, t: to_binary(i, t) if i else None, columns={"tok"},
                        types={"tok": pa.binary()})


def test_the_transformed_columns_may_drop_statistics_and_dictionary(tmp_path):
    src, dst = str(tmp_path / "src.parquet"), str(tmp_path / "dst.parquet")
    pq.write_table(sample_table(), src, compression="zstd", use_dictionary=["tok", "city"],
                   write_statistics=["id", "tok"], row_group_size=1000)
    rewrite_parquet(src, dst, reverse_tokens, columns={"tok"}, statistics=False,
                    dictionary=False)
    before, after = pq.ParquetFile(src).metadata, pq.ParquetFile(dst).metadata
    names = [before.schema.column(j).path for j in range(before.num_columns)]
    for g in range(before.num_row_groups):
        for j, name in enumerate(names):
            a, b = before.row_group(g).column(j), after.row_group(g).column(j)
            if name == "tok":
                assert a.is_stats_set and a.has_dictionary_page
                assert not b.is_stats_set and not b.has_dictionary_page
            else:
                assert (b.is_stats_set, b.has_dictionary_page) == \
                    (a.is_stats_set, a.has_dictionary_page), name


@pytest.mark.parametrize("bad", [
    lambda t: {"email": t["email"]},  # not owned
    lambda t: {"tok": t["tok"].slice(1)},  # wrong length
    lambda t: {"tok": t["tok"].cast(pa.large_string())},  # wrong type
])
def test_a_transform_that_breaks_its_contract_is_refused(tmp_path, bad):
    src = str(tmp_path / "src.parquet")
    pq.write_table(sample_table(100), src)
    with pytest.raises(InvalidArgument):
        rewrite_parquet(src, str(tmp_path / "dst.parquet"), lambda i, t: bad(t), columns={"tok"})


def test_files_that_are_not_parquet_are_refused(tmp_path):
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 not really")
    with pytest.raises(ParquetUnreadable):
        rewrite_parquet(str(junk), str(tmp_path / "dst"), reverse_tokens, columns={"tok"})
    src = tmp_path / "src.parquet"
    pq.write_table(sample_table(100), src)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(src.read_bytes()[:-100])
    with pytest.raises(ParquetUnreadable):
        rewrite_parquet(str(truncated), str(tmp_path / "dst"), reverse_tokens, columns={"tok"})


def test_an_encrypted_parquet_file_is_refused(tmp_path):
    import pyarrow.parquet.encryption as pe

    class Kms(pe.KmsClient):
        def __init__(self, _config):
            super().__init__()

        def wrap_key(self, key, _master):
            return base64.b64encode(key)

        def unwrap_key(self, wrapped, _master):
            return base64.b64decode(wrapped)

    factory = pe.CryptoFactory(lambda config: Kms(config))
    props = factory.file_encryption_properties(
        pe.KmsConnectionConfig(), pe.EncryptionConfiguration(footer_key="f", column_keys={
            "c": ["tok"]}, double_wrapping=False))
    src = str(tmp_path / "src.parquet")
    table = sample_table(50)
    with pq.ParquetWriter(src, table.schema, encryption_properties=props) as w:
        w.write_table(table)
    with pytest.raises(ParquetUnreadable):
        rewrite_parquet(src, str(tmp_path / "dst.parquet"), reverse_tokens, columns={"tok"})
    assert not (tmp_path / "dst.parquet").exists()


def test_page_headers_are_read_as_written(tmp_path):
    src = str(tmp_path / "src.parquet")
    pq.write_table(sample_table(), src, **CASES["int96-v2-pages-crc"])
    kinds = page_kinds(src, 0, 1)
    assert kinds[0] == (DICTIONARY_PAGE, True) and kinds[1] == (DATA_PAGE_V2, True)
    pq.write_table(sample_table(), src, use_dictionary=False)
    assert page_kinds(src, 0, 1)[0] == (DATA_PAGE, False)
