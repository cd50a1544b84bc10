"""Table columns of every Arrow type through the column format (docs/column-format.md): the type
travels in the values, so it comes back after pandas, polars or a schema rewrite dropped every
metadata; a value whose type was edited or that moved to another column fails authentication;
text tokens of earlier releases still decrypt; pandas, polars and pyarrow frames round-trip to
equal frames with equal dtypes (a hypothesis property test over schemas and values)."""

from __future__ import annotations

import datetime
import decimal
import os

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import engine
from engine import EncryptionService, StaticKeyProvider, tables

TEMPLATE = "users:{id}:{column}"


@pytest.fixture(scope="module")
def service():
    return EncryptionService(StaticKeyProvider({1: os.urandom(32)}), metrics=False)


def every_type(n=30):
    """One column per kind of Arrow type, NULLs in each (but the never-NULL id)."""
    def nulls(values):
        return [None if i % 4 == 1 else v for i, v in enumerate(values)]

    r = range(n)
    return pa.table({
        "id": pa.array(r, pa.int64()),
        "i8": pa.array(nulls([i - 15 for i in r]), pa.int8()),
        "u64": pa.array(nulls([2**64 - 1 - i for i in r]), pa.uint64()),
        "f64": pa.array(nulls([i / 3 for i in r]), pa.float64()),
        "f32": pa.array(nulls([float(i) for i in r]), pa.float32()),
        "dec": pa.array(nulls([decimal.Decimal(i) / 100 for i in r]), pa.decimal128(12, 2)),
        "ts": pa.array(nulls([i * 10**6 for i in r]), pa.timestamp("us")),
        "ts_tz": pa.array(nulls([i * 10**9 for i in r]), pa.timestamp("ns", "Europe/Berlin")),
        "date": pa.array(nulls([datetime.date(2020, 1, 1 + i % 28) for i in r]), pa.date32()),
        "t": pa.array(nulls([i for i in r]), pa.time32("s")),
        "dur": pa.array(nulls([i for i in r]), pa.duration("ms")),
        "flag": pa.array(nulls([i % 3 == 0 for i in r]), pa.bool_()),
        "text": pa.array(nulls([f"v{i}" for i in r]), pa.string()),
        "raw": pa.array(nulls([bytes([i]) * i for i in r]), pa.large_binary()),
        "fixed": pa.array(nulls([bytes([i]) * 4 for i in r]), pa.binary(4)),
        "lst": pa.array(nulls([[i, None, i + 1][: i % 4] for i in r]), pa.list_(pa.int64())),
        "st": pa.array(nulls([{"a": i, "b": f"s{i}"} for i in r]),
                       pa.struct([("a", pa.int32()), ("b", pa.string())])),
        "mp": pa.array(nulls([[("k", i)] for i in r]), pa.map_(pa.string(), pa.int64())),
        "cat": pa.array(nulls([f"c{i % 3}" for i in r])).dictionary_encode(),
    })


ENCRYPTED = [n for n in every_type().schema.names if n != "id"]


def test_every_arrow_type_round_trips_as_binary_values(service):
    t = every_type()
    e = tables.encrypt_columns(t, ENCRYPTED, aad_template=TEMPLATE, service=service)
    for name in ENCRYPTED:
        assert e.schema.field(name).type == pa.large_binary(), name
        assert e.column(name).is_null().equals(t.column(name).is_null()), name
    back = tables.decrypt_columns(e, ENCRYPTED, aad_template=TEMPLATE, service=service)
    assert back.schema.names == t.schema.names
    for name in t.schema.names:
        assert back.schema.field(name).type == t.schema.field(name).type, name
        assert back.column(name).to_pylist() == t.column(name).to_pylist(), name


def test_the_type_comes_back_from_the_values_alone(service):
    """Every schema and field metadata dropped (as pandas, polars, CSV or a database do), and
    the values carried as another binary type: each column comes back as its type."""
    t = every_type()
    e = tables.encrypt_columns(t, ENCRYPTED, service=service)
    bare = pa.table({name: e.column(name).cast(pa.binary()) if name in ENCRYPTED
                     else e.column(name) for name in e.schema.names})
    assert all(f.metadata is None for f in bare.schema) and bare.schema.metadata is None
    back = tables.decrypt_columns(bare, ENCRYPTED, service=service)
    assert back.schema.remove_metadata() == t.schema and back.equals(t)


def test_a_value_moved_or_with_its_type_edited_fails_authentication(service):
    t = every_type(10)
    e = tables.encrypt_columns(t, ["i8", "u64", "text"], service=service)
    moved = e.set_column(e.schema.get_field_index("text"), "text", e.column("i8"))
    with pytest.raises(tables.ColumnInvalidTag) as info:
        tables.decrypt_columns(moved, "text", service=service)
    assert isinstance(info.value, engine.InvalidTag) and info.value.column == "text"
    # the format byte says "type inline"; 'l' (int64) edited to 'L' (uint64), same width
    values = e.column("u64").combine_chunks()
    data = np.frombuffer(values.buffers()[2], np.uint8).copy()
    offsets = np.frombuffer(values.buffers()[1], np.int64)[: len(values) + 1]
    present = [i for i in range(len(values)) if values[i].is_valid]
    assert data[offsets[present[0]] + 3] == ord("L")  # format, version, length, descriptor
    data[offsets[present[0]] + 3] = ord("l")
    edited = pa.Array.from_buffers(pa.large_binary(), len(values),
                                   [values.buffers()[0], values.buffers()[1], pa.py_buffer(data)])
    bad = e.set_column(e.schema.get_field_index("u64"), "u64", edited)
    with pytest.raises((tables.ColumnInvalidTag, tables.ColumnTypeUnreadable)) as info:
        tables.decrypt_columns(bad, "u64", service=service)
    assert info.value.column == "u64"


def test_the_template_binds_each_value_to_its_row(service):
    t = every_type(12)
    e = tables.encrypt_columns(t, ["lst", "f64"], aad_template=TEMPLATE, service=service)
    swapped = e.set_column(0, "id", pa.array([1, 0, *range(2, 12)], pa.int64()))
    with pytest.raises(tables.ColumnInvalidTag) as info:
        tables.decrypt_columns(swapped, ["f64"], aad_template=TEMPLATE, service=service)
    assert info.value.failed.tolist() == [0]  # row 1 is NULL: nothing to fail
    with pytest.raises(tables.ColumnInvalidTag):
        tables.decrypt_columns(e, ["lst"], service=service)


def test_text_tokens_of_earlier_releases_still_decrypt(service):
    """Columns written by releases before the column format (``ef1:`` text tokens, the
    original type in the field metadata, or no metadata at all after pandas) still decrypt,
    per-row AAD included; nothing written by them is stranded."""
    n = 20
    emails = [None if i % 6 == 2 else f"user{i}@example.com" for i in range(n)]
    present = [i for i, v in enumerate(emails) if v is not None]
    tokens = service.encrypt_many([emails[i] for i in present],
                                  aad=[f"users:{i}:email" for i in present])
    column = [None] * n
    for i, token in zip(present, tokens):
        column[i] = token
    assert column[0].startswith("ef1:")
    old = pa.table({"id": pa.array(range(n), pa.int64()), "email": pa.array(column, pa.large_string())})
    field = old.schema.field("email").with_metadata({b"engine.encrypted_from": b"string"})
    with_metadata = old.set_column(1, field, old.column("email"))
    for table, want in ((with_metadata, pa.string()), (old, pa.large_string())):
        back = tables.decrypt_columns(table, "email", aad_template=TEMPLATE, service=service)
        assert back.schema.field("email").type == want
        assert back.column("email").to_pylist() == emails
    frame = tables.decrypt_columns(old.to_pandas(), "email", aad_template=TEMPLATE,
                                   service=service)
    assert frame["email"].isna().tolist() == [e is None for e in emails]
    assert frame["email"].dropna().tolist() == [e for e in emails if e is not None]
    with pytest.raises(tables.ColumnInvalidTag):
        tables.decrypt_columns(old, "email", service=service)


def test_a_column_that_is_not_encrypted_is_bad_usage(service):
    t = every_type(8)
    for name in ("f64", "text", "raw"):
        with pytest.raises(tables.ColumnNotEncrypted) as info:
            tables.decrypt_columns(t, name, service=service)
        assert isinstance(info.value, engine.InvalidArgument) and name in str(info.value)
    e = tables.encrypt_columns(t, "text", service=service)
    mixed = e.column("text").combine_chunks().to_pylist()
    mixed[5] = b"plain"
    bad = e.set_column(e.schema.get_field_index("text"), "text", pa.array(mixed, pa.large_binary()))
    with pytest.raises(tables.ColumnNotTokens) as info:
        tables.decrypt_columns(bad, "text", service=service)
    assert (info.value.column, info.value.row) == ("text", 5) and "plain" not in str(info.value)


def test_objects_that_are_not_tables_get_a_typed_error(service):
    for thing in ({"a": [1]}, [1, 2], pd.Series([1, 2]), pl.Series([1, 2]), None, "a"):
        with pytest.raises(engine.InvalidArgumentType):
            tables.encrypt_columns(thing, "a", service=service)
        with pytest.raises(engine.InvalidArgumentType):
            tables.decrypt_columns(thing, "a", service=service)
    mixed = pd.DataFrame({"a": [1, "x", b"y"]})
    with pytest.raises(engine.InvalidArgumentType):
        tables.encrypt_columns(mixed, "a", service=service)


# ---------------------------------------------------------------- frames

def pandas_frame(n=25):
    def nulls(values, dtype):
        return pd.array([None if i % 5 == 3 else v for i, v in enumerate(values)], dtype=dtype)

    r = range(n)
    return pd.DataFrame({
        "id": np.arange(n, dtype=np.int64),
        "i64": np.arange(n, dtype=np.int64) * 3,
        "f64": np.where(np.arange(n) % 5 == 3, np.nan, np.arange(n) / 7),
        "nullable": nulls(list(r), "Int64"),
        "nullable_u8": nulls(list(r), "UInt8"),
        "boolean": nulls([i % 2 == 0 for i in r], "boolean"),
        "obj_str": [None if i % 5 == 3 else f"s{i}" for i in r],
        "string": nulls([f"s{i}" for i in r], "string"),
        "string_pa": nulls([f"s{i}" for i in r], "string[pyarrow]"),
        "arrow_i32": nulls(list(r), pd.ArrowDtype(pa.int32())),
        "arrow_ts": nulls([i * 10**6 for i in r], pd.ArrowDtype(pa.timestamp("us", "UTC"))),
        "bytes": [None if i % 5 == 3 else bytes([i]) * 3 for i in r],
        "cat": pd.Categorical([None if i % 5 == 3 else f"c{i % 3}" for i in r]),
        "when": pd.date_range("2024-01-01", periods=n, freq="h", tz="Europe/Paris"),
        "naive": pd.date_range("2024-01-01", periods=n, freq="D"),
    }, index=pd.RangeIndex(100, 100 + n))


def test_pandas_dtypes_round_trip(service):
    df = pandas_frame()
    columns = [c for c in df.columns if c != "id"]
    enc = tables.encrypt_columns(df, columns, aad_template=TEMPLATE, service=service)
    assert isinstance(enc, pd.DataFrame) and enc.index.equals(df.index)
    for c in columns:
        assert enc[c].isna().equals(df[c].isna()), c
        assert all(isinstance(v, bytes) for v in enc[c].dropna()), c
    back = tables.decrypt_columns(enc, columns, aad_template=TEMPLATE, service=service)
    assert dict(back.dtypes) == dict(df.dtypes)
    pd.testing.assert_frame_equal(back, df)


def test_polars_frames_lazy_frames_and_record_batches(service):
    pf = pl.DataFrame({
        "id": list(range(20)),
        "n": [None if i % 4 == 1 else i for i in range(20)],
        "s": [f"s{i}" for i in range(20)],
        "d": [decimal.Decimal(i) / 10 for i in range(20)],
        "l": [[i, i + 1] for i in range(20)],
        "st": [{"a": i, "b": "x"} for i in range(20)],
        "c": pl.Series([f"c{i % 3}" for i in range(20)], dtype=pl.Categorical),
        "ts": pl.datetime_range(datetime.datetime(2024, 1, 1), datetime.datetime(2024, 1, 20),
                                "1d", time_zone="UTC", eager=True),
    })
    cols = ["n", "s", "d", "l", "st", "c", "ts"]
    enc = tables.encrypt_columns(pf, cols, aad_template=TEMPLATE, service=service)
    assert isinstance(enc, pl.DataFrame) and all(enc.schema[c] == pl.Binary for c in cols)
    back = tables.decrypt_columns(enc, cols, aad_template=TEMPLATE, service=service)
    assert back.schema == pf.schema and back.equals(pf)
    lazy = tables.encrypt_columns(pf.lazy(), cols, service=service)
    assert isinstance(lazy, pl.LazyFrame)
    back = tables.decrypt_columns(lazy, cols, service=service)
    assert isinstance(back, pl.LazyFrame) and back.collect().equals(pf)
    batch = every_type().to_batches()[0]
    back = tables.decrypt_columns(tables.encrypt_columns(batch, ENCRYPTED, service=service),
                                  ENCRYPTED, service=service)
    assert isinstance(back, pa.RecordBatch) and back.equals(batch)


# ---------------------------------------------------------------- property test

_SCALARS = {
    "int64": (pa.int64(), st.integers(-2**63, 2**63 - 1)),
    "int16": (pa.int16(), st.integers(-2**15, 2**15 - 1)),
    "uint32": (pa.uint32(), st.integers(0, 2**32 - 1)),
    "float64": (pa.float64(), st.floats(allow_nan=False)),
    "bool": (pa.bool_(), st.booleans()),
    "string": (pa.string(), st.text(max_size=12)),
    "large_string": (pa.large_string(), st.text(max_size=12)),
    "binary": (pa.binary(), st.binary(max_size=12)),
    "decimal": (pa.decimal128(18, 3), st.decimals(-10**14, 10**14, places=3)),
    "date32": (pa.date32(), st.dates(datetime.date(1900, 1, 1), datetime.date(2200, 1, 1))),
    "timestamp_tz": (pa.timestamp("us", "Asia/Tokyo"),
                     st.datetimes(datetime.datetime(1900, 1, 1), datetime.datetime(2200, 1, 1),
                                  timezones=st.just(datetime.timezone.utc))),
}


@st.composite
def arrow_types(draw, depth=0):
    kind = draw(st.sampled_from(list(_SCALARS) + (["list", "struct"] if depth < 2 else [])))
    if kind == "list":
        inner, values = draw(arrow_types(depth + 1))
        return pa.list_(inner), st.lists(values, max_size=3)
    if kind == "struct":
        parts = [draw(arrow_types(depth + 1)) for _ in range(draw(st.integers(1, 2)))]
        names = [f"f{i}" for i in range(len(parts))]
        return (pa.struct([(n, t) for n, (t, _) in zip(names, parts)]),
                st.fixed_dictionaries({n: v for n, (_, v) in zip(names, parts)}))
    return _SCALARS[kind]


@st.composite
def tables_of(draw):
    n = draw(st.integers(0, 12))
    fields, arrays = [], {"id": pa.array(range(n), pa.int64())}
    for i in range(draw(st.integers(1, 4))):
        data_type, values = draw(arrow_types())
        column = draw(st.lists(st.one_of(st.none(), values), min_size=n, max_size=n))
        arrays[f"c{i}"] = pa.array(column, data_type)
        fields.append(f"c{i}")
    return pa.table(arrays), fields


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=tables_of(), carrier=st.sampled_from(["arrow", "batch", "polars", "lazy", "pandas"]))
def test_property_any_schema_round_trips_in_every_frame(service, data, carrier):
    table, columns = data
    if carrier not in ("arrow", "batch"):  # frames keep no schema: the values carry the type
        assume(all(table.column(c).null_count < len(table) for c in columns))
    if carrier == "arrow":
        frame, same = table, lambda a: a.equals(table)
    elif carrier == "batch":
        batch = table.combine_chunks().to_batches()
        frame = batch[0] if batch else pa.RecordBatch.from_pylist([], schema=table.schema)
        same = frame.equals  # noqa: E731
    elif carrier in ("polars", "lazy"):
        frame = pl.from_arrow(table)
        expected = frame

        def same(a):
            got = a.collect() if isinstance(a, pl.LazyFrame) else a
            return got.schema == expected.schema and got.equals(expected)

        frame = frame.lazy() if carrier == "lazy" else frame
    else:
        frame = table.to_pandas()
        expected = frame

        def same(a):
            pd.testing.assert_frame_equal(a, expected)
            return dict(a.dtypes) == dict(expected.dtypes)

    enc = tables.encrypt_columns(frame, columns, aad_template=TEMPLATE, service=service)
    assert type(enc) is type(frame)
    assert same(tables.decrypt_columns(enc, columns, aad_template=TEMPLATE, service=service))
