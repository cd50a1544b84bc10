"""The column value format (docs/column-format.md): every Arrow type round-trips to an equal
array of the exact type, the bytes match an independent implementation written here with the
``cryptography`` package, and edited or moved values fail authentication."""

from __future__ import annotations

import datetime
import decimal
import hashlib
import os
import struct

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings, strategies as st

import engine
from engine.columns import (
    ColumnTypeMismatch,
    MalformedColumnValue,
    UnknownColumnFormat,
    UnknownColumnType,
    decrypt_array,
    encrypt_array,
    from_text,
    inspect_values,
    to_text,
    type_descriptor,
    type_from_descriptor,
)
from engine.columns.values import plaintexts
from engine.keys import UnknownKeyVersion

KEY1, KEY2 = os.urandom(32), os.urandom(32)


@pytest.fixture
def service():
    return engine.EncryptionService(engine.StaticKeyProvider({1: KEY1}), metrics=False)


def _service(keys=None, **kw):
    return engine.EncryptionService(engine.StaticKeyProvider(keys or {1: KEY1}, **kw),
                                    metrics=False)


# ---------------------------------------------------------------- generated types and arrays

_NAMES = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=4)
_LEAVES = [pa.null(), pa.bool_(), pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(),
           pa.uint16(), pa.uint32(), pa.uint64(), pa.float16(), pa.float32(), pa.float64(),
           pa.date32(), pa.date64(), pa.time32("s"), pa.time32("ms"), pa.time64("us"),
           pa.time64("ns"), pa.month_day_nano_interval(), pa.string(), pa.large_string(),
           pa.string_view(), pa.binary(), pa.large_binary(), pa.binary_view(),
           pa.uuid(), pa.json_(), pa.bool8()]
_ZONES = [None, "UTC", "Europe/Berlin", "+05:30", "America/Argentina/Buenos_Aires"]


@st.composite
def _leaf_types(draw):
    kind = draw(st.sampled_from(["plain", "timestamp", "duration", "decimal", "fixed"]))
    if kind == "plain":
        return draw(st.sampled_from(_LEAVES))
    if kind == "timestamp":
        return pa.timestamp(draw(st.sampled_from("s ms us ns".split())), draw(st.sampled_from(_ZONES)))
    if kind == "duration":
        return pa.duration(draw(st.sampled_from("s ms us ns".split())))
    if kind == "fixed":
        return pa.binary(draw(st.integers(1, 20)))
    maker, top = draw(st.sampled_from([(pa.decimal32, 9), (pa.decimal64, 18), (pa.decimal128, 38),
                                       (pa.decimal256, 76)]))
    precision = draw(st.integers(1, top))
    return maker(precision, draw(st.integers(-3, precision)))


def _fields(children):
    return st.lists(st.tuples(_NAMES, children, st.booleans()), max_size=3,
                    unique_by=lambda f: f[0]).map(
        lambda fs: [pa.field(name, t, nullable=nullable or pa.types.is_null(t))
                    for name, t, nullable in fs])


def _union(children):
    return st.tuples(st.sampled_from(["sparse", "dense"]),
                     st.lists(children, min_size=1, max_size=3),
                     st.permutations(list(range(0, 12)))).map(
        lambda x: (pa.sparse_union if x[0] == "sparse" else pa.dense_union)(
            [pa.field(f"u{i}", t) for i, t in enumerate(x[1])], x[2][: len(x[1])]))


def _nested(children):
    return st.one_of(
        st.tuples(children, _NAMES, st.booleans()).map(
            lambda x: pa.list_(pa.field(x[1] or "item", x[0],
                                        nullable=x[2] or pa.types.is_null(x[0])))),
        children.map(pa.large_list),
        children.map(pa.list_view),
        children.map(pa.large_list_view),
        st.tuples(children, st.integers(0, 3)).map(lambda x: pa.list_(x[0], x[1])),
        _fields(children).map(pa.struct),
        st.tuples(st.sampled_from([pa.string(), pa.int32(), pa.binary(3)]), children,
                  st.booleans()).map(lambda x: pa.map_(x[0], x[1], keys_sorted=x[2])),
        _union(children),
        st.tuples(st.sampled_from([pa.int16(), pa.int32(), pa.int64()]), children).map(
            lambda x: pa.run_end_encoded(x[0], x[1])),
    )


_DICTIONARY = st.tuples(
    st.sampled_from([pa.int8(), pa.int16(), pa.uint32(), pa.int64()]),
    st.sampled_from([pa.string(), pa.int64(), pa.binary(), pa.float64(), pa.date32()]),
    st.booleans()).map(lambda x: pa.dictionary(x[0], x[1], ordered=x[2]))

ARROW_TYPES = st.recursive(st.one_of(_leaf_types(), _DICTIONARY), _nested, max_leaves=5) | \
    st.just(pa.fixed_shape_tensor(pa.int32(), [2, 2])) | \
    st.just(pa.opaque(pa.int64(), "geometry", "vendor"))


def _mask(rng, n, rate):
    return rng.random(n) < rate if rate else np.zeros(n, dtype=bool)


def _fixed(t, n, rng, mask):
    width = t.bit_width // 8
    if pa.types.is_decimal(t):
        top = 10 ** min(t.precision, 18)
        ints = rng.integers(-top + 1, top, n).tolist()
        raw = b"".join(v.to_bytes(width, "little", signed=True) for v in ints)
    elif pa.types.is_date64(t):  # milliseconds of whole days
        raw = (rng.integers(-10_000, 10_000, n) * 86_400_000).astype("<i8").tobytes()
    elif pa.types.is_temporal(t):
        raw = rng.integers(0, 86_400, n).astype(f"<i{width}").tobytes()
    elif pa.types.is_floating(t):
        raw = rng.normal(0, 1e3, n).astype(f"<f{width}").tobytes()
    else:
        raw = rng.integers(0, 256, n * width, dtype=np.uint8).tobytes()
    bitmap = pa.py_buffer(np.packbits(~mask, bitorder="little")) if mask.any() else None
    return pa.Array.from_buffers(t, n, [bitmap, pa.py_buffer(raw)])


def random_array(t, n, rng, rate=None):
    """A random array of type ``t`` with ``n`` values, NULLs at random (not at ``rate=0``)."""
    rate = rng.choice([0.0, 0.3]) if rate is None else rate
    mask = _mask(rng, n, rate)
    if isinstance(t, pa.BaseExtensionType):
        storage = random_array(t.storage_type, n, rng, rate)
        return pa.ExtensionArray.from_storage(t, storage)
    if pa.types.is_dictionary(t):
        k = int(rng.integers(1, 5))
        values = random_array(t.value_type, k, rng, 0.0)
        indices = pa.array(rng.integers(0, k, n), mask=mask).cast(t.index_type)
        return pa.DictionaryArray.from_arrays(indices, values, ordered=t.ordered)
    if pa.types.is_run_end_encoded(t):
        runs = int(rng.integers(1, n + 1)) if n else 0
        cuts = np.sort(rng.choice(np.arange(1, n), runs - 1, replace=False)) if runs > 1 else []
        ends = np.append(np.asarray(cuts, dtype=np.int64), n) if n else np.empty(0, np.int64)
        values = random_array(t.value_type, len(ends), rng, rate)
        return pa.RunEndEncodedArray.from_arrays(pa.array(ends).cast(t.run_end_type), values,
                                                 type=t)
    if pa.types.is_null(t):
        return pa.nulls(n)
    if pa.types.is_boolean(t):
        return pa.array(rng.random(n) < 0.5, mask=mask)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        alphabet = ["a", "é", "€", "😀", "\x00", " "]
        return pa.array(["".join(rng.choice(alphabet, int(rng.integers(0, 6))))
                         for _ in range(n)], type=t, mask=mask)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.array([rng.bytes(int(rng.integers(0, 8))) for _ in range(n)], type=t, mask=mask)
    if pa.types.is_fixed_size_binary(t) or t.id in (pa.month_day_nano_interval().id,):
        width = t.bit_width // 8
        bitmap = pa.py_buffer(np.packbits(~mask, bitorder="little")) if mask.any() else None
        return pa.Array.from_buffers(t, n, [bitmap, pa.py_buffer(rng.bytes(n * width))])
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t):
        sizes = rng.integers(0, 4, n)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        dtype = pa.int64() if pa.types.is_large_list(t) else pa.int32()
        if pa.types.is_map(t):
            keys = random_array(t.key_type, int(offsets[-1]), rng, 0.0)
            items = random_array(t.item_type, int(offsets[-1]), rng)
            entries = pa.StructArray.from_arrays([keys, items], fields=[t.key_field, t.item_field])
            return pa.Array.from_buffers(t, n, [_bitmap(mask), pa.py_buffer(
                offsets.astype(np.int32))], children=[entries])
        child = random_array(t.value_type, int(offsets[-1]), rng)
        return pa.Array.from_buffers(t, n, [_bitmap(mask), pa.array(offsets, dtype).buffers()[1]],
                                     children=[child])
    if pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        m = int(rng.integers(0, 8))
        child = random_array(t.value_type, m, rng)
        starts = rng.integers(0, m + 1, n)
        sizes = np.minimum(rng.integers(0, 4, n), m - starts)
        dtype = np.int64 if pa.types.is_large_list_view(t) else np.int32
        return pa.Array.from_buffers(t, n, [_bitmap(mask), pa.py_buffer(starts.astype(dtype)),
                                            pa.py_buffer(sizes.astype(dtype))], children=[child])
    if pa.types.is_fixed_size_list(t):
        child = random_array(t.value_type, n * t.list_size, rng)
        return pa.Array.from_buffers(t, n, [_bitmap(mask)], children=[child])
    if pa.types.is_struct(t):
        children = [random_array(t.field(i).type, n, rng) for i in range(t.num_fields)]
        return pa.Array.from_buffers(t, n, [_bitmap(mask)], children=children)
    if pa.types.is_union(t):
        codes = np.asarray(t.type_codes, dtype=np.int8)[rng.integers(0, t.num_fields, n)]
        if t.mode == "sparse":
            children = [random_array(t.field(j).type, n, rng) for j in range(t.num_fields)]
            return pa.Array.from_buffers(t, n, [None, pa.py_buffer(codes)], children=children)
        offsets = np.zeros(n, dtype=np.int32)
        children = []
        for j, code in enumerate(t.type_codes):
            chosen = codes == code
            offsets[chosen] = np.arange(int(chosen.sum()), dtype=np.int32)
            children.append(random_array(t.field(j).type, int(chosen.sum()), rng))
        return pa.Array.from_buffers(t, n, [None, pa.py_buffer(codes), pa.py_buffer(offsets)],
                                     children=children)
    return _fixed(t, n, rng, mask)


def _bitmap(mask):
    return pa.py_buffer(np.packbits(~mask, bitorder="little")) if mask.any() else None


def _has(t, predicate):
    if predicate(t):
        return True
    if isinstance(t, pa.BaseExtensionType):
        return _has(t.storage_type, predicate)
    if pa.types.is_dictionary(t) or pa.types.is_run_end_encoded(t):
        return _has(t.value_type, predicate)
    return any(_has(t.field(i).type, predicate) for i in range(getattr(t, "num_fields", 0)))


def assert_same(got, want):
    """Exactly the type (names, nullability, metadata included), and equal values: Arrow's own
    equality, or, where a dictionary or run-end encoding may be laid out otherwise (the format
    keeps values, not layouts), the values as Python objects and the serialization."""
    assert type_descriptor(got.type) == type_descriptor(want.type)
    assert got.type == want.type and len(got) == len(want)
    if isinstance(want, pa.ChunkedArray):
        want, got = want.combine_chunks(), got.combine_chunks()
    if _has(want.type, lambda t: pa.types.is_dictionary(t) or pa.types.is_run_end_encoded(t)):
        assert got.to_pylist() == want.to_pylist()
        a, b = plaintexts(got), plaintexts(want)
        assert a[0] == b[0] and np.array_equal(a[1] if a[1] is not None else np.arange(len(got)),
                                               b[1] if b[1] is not None else np.arange(len(want)))
    else:
        assert got.equals(want)


# ---------------------------------------------------------------- round trips


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(t=ARROW_TYPES, n=st.integers(0, 40), seed=st.integers(0, 2**32 - 1),
       offset=st.integers(0, 3), text=st.booleans())
def test_every_generated_type_round_trips_to_the_exact_type(t, n, seed, offset, text):
    rng = np.random.default_rng(seed)
    array = random_array(t, n + offset, rng).slice(offset)
    service = _service()
    try:
        type_from_descriptor(type_descriptor(t))
    except UnknownColumnType:  # a type Arrow cannot rebuild (a run-end encoding of one, say)
        with pytest.raises(engine.InvalidArgumentType, match="nothing was encrypted"):
            encrypt_array(array, "col", service=service)
        return
    encrypted = encrypt_array(array, "col", service=service)
    assert encrypted.type == pa.large_binary() and len(encrypted) == len(array)
    present = pc.is_valid(encrypted).to_numpy(zero_copy_only=False)
    assert present.sum() == len(plaintexts(array)[0])  # NULLs stay NULL, never encrypted
    carrier = to_text(encrypted) if text else encrypted
    if present.any():
        assert_same(decrypt_array(carrier, "col", service=service), array)
    else:  # no value carries the type: the caller names it
        assert_same(decrypt_array(carrier, "col", service=service, expected=t), array)


@pytest.mark.parametrize("t", [pa.int64(), pa.string(), pa.timestamp("us", "America/New_York"),
                               pa.list_(pa.struct([("a", pa.int8())]))])
def test_chunked_arrays_round_trip_with_companions_in_another_chunk(service, t):
    rng = np.random.default_rng(1)
    chunks = [random_array(t, 3000, rng, 0.1), random_array(t, 5, rng, 0.0)]
    array = pa.chunked_array(chunks, type=t)
    encrypted = encrypt_array(array, "c", service=service)
    assert isinstance(encrypted, pa.ChunkedArray) and encrypted.num_chunks == 2
    # the second chunk alone has no value carrying a long type: the first chunk's serve
    assert_same(decrypt_array(encrypted, "c", service=service), array)


def test_floats_keep_their_bits_nan_payloads_and_negative_zero(service):
    bits = np.array([0x7FF8000000000001, 0xFFF0000000000000, 0x8000000000000000, 1, 0x7FF4DEADBEEF0000],
                    dtype=np.uint64)
    array = pa.Array.from_buffers(pa.float64(), 5, [None, pa.py_buffer(bits)])
    back = decrypt_array(encrypt_array(array, "f", service=service), "f", service=service)
    assert np.array_equal(np.frombuffer(back.buffers()[1], np.uint64)[:5], bits)


def test_dictionary_order_and_unused_entries_are_rebuilt_from_the_values(service):
    array = pa.DictionaryArray.from_arrays(pa.array([2, 0, None, 2], pa.int8()),
                                           pa.array(["z", "unused", "a"]), ordered=True)
    back = decrypt_array(encrypt_array(array, "d", service=service), "d", service=service)
    assert back.type == array.type and back.to_pylist() == ["a", "z", None, "a"]
    assert back.dictionary.to_pylist() == ["a", "z"]  # first appearance; "unused" is no value


def test_fixed_width_values_are_sealed_from_arrows_buffer_without_a_copy():
    array = pa.array(np.arange(1000, dtype=np.int64))
    plain, rows = plaintexts(array)
    assert rows is None
    assert np.shares_memory(plain.data, np.frombuffer(array.buffers()[1], np.uint8))
    strings = pa.array(["a", "bc", "def"]).slice(1)
    plain, _ = plaintexts(strings)
    assert np.shares_memory(plain.data, np.frombuffer(strings.buffers()[2], np.uint8))
    assert plain.to_list() == [b"bc", b"def"]


def test_a_column_is_one_native_call_per_key_version(service, monkeypatch):
    calls = []
    real = engine.AesGcm.seal_tokens

    def counting(self, *a, **kw):
        calls.append(len(a[0]))
        return real(self, *a, **kw)

    monkeypatch.setattr(engine.AesGcm, "seal_tokens", counting)
    encrypt_array(pa.array([datetime.datetime(2024, 1, 1)] * 5000,
                           pa.timestamp("ns", "America/New_York")), "t", service=service)
    assert calls == [5000]  # companions included: one call, not one per value or per header


def test_values_under_several_key_versions_decrypt_together():
    provider = engine.StaticKeyProvider({1: KEY1, 2: KEY2}, current=1)
    service = engine.EncryptionService(provider, metrics=False)
    old = encrypt_array(pa.array([1, 2, None]), "n", service=service)
    provider.create_version()
    new = encrypt_array(pa.array([3, None, 4]), "n", service=service)
    mixed = pa.concat_arrays([old, new])
    assert inspect_values(mixed).versions == {1: 2, 3: 2}
    assert decrypt_array(mixed, "n", service=service).to_pylist() == [1, 2, None, 3, None, 4]


def test_xaes_key_versions_write_their_own_format_and_24_byte_nonces():
    service = _service(algorithm="xaes-256-gcm")
    array = pa.array(["x", None, "yz"])
    encrypted = encrypt_array(array, "s", service=service)
    value = encrypted[0].as_py()
    assert value[0] == 0xC2 and len(value) == 1 + 1 + 2 + 24 + 1 + 16
    assert decrypt_array(encrypted, "s", service=service).equals(array)


# ---------------------------------------------------------------- the format's bytes, written independently


def _varint(v):
    out = bytearray()
    while True:
        if v < 0x80:
            return bytes(out + bytes([v]))
        out.append(v & 0x7F | 0x80)
        v >>= 7


def _aad(version, column, descriptor, algorithm=0):
    name = column.encode()
    return (b"engine.column.v1\x00" + bytes([algorithm]) + struct.pack(">I", version)
            + _varint(len(name)) + name + _varint(len(descriptor)) + descriptor)


def _open_reference(value, column, key=KEY1, known=None):
    """An independent reader of one value: (plaintext, descriptor)."""
    fmt, pos = value[0], 1
    assert fmt in (0xC0, 0xC1)
    version = 0
    for shift in range(0, 35, 7):
        version |= (value[pos] & 0x7F) << shift
        pos += 1
        if value[pos - 1] < 0x80:
            break
    if fmt == 0xC0:
        length = value[pos]
        descriptor = value[pos + 1 : pos + 1 + length]
        pos += 1 + length
    else:
        descriptor = known[value[pos : pos + 4]]
        pos += 4
    nonce, body = value[pos : pos + 12], value[pos + 12 :]
    return AESGCM(key).decrypt(nonce, body, _aad(version, column, descriptor)), descriptor


def _seal_reference(plaintext, column, descriptor, version=1, key=KEY1):
    """An independent writer of one value (inline type)."""
    nonce = os.urandom(12)
    return (bytes([0xC0]) + _varint(version) + _varint(len(descriptor)) + descriptor + nonce
            + AESGCM(key).encrypt(nonce, plaintext, _aad(version, column, descriptor)))


# (array, descriptor, each value's plaintext as the specification writes it)
KNOWN = [
    (pa.array([1, -2], pa.int64()), b"l", [struct.pack("<q", 1), struct.pack("<q", -2)]),
    (pa.array([7], pa.uint16()), b"S", [b"\x07\x00"]),
    (pa.array([True, False]), b"b", [b"\x01", b"\x00"]),
    (pa.array(["héllo", ""]), b"u", ["héllo".encode(), b""]),
    (pa.array([b"\x00\xff"], pa.large_binary()), b"Z", [b"\x00\xff"]),
    (pa.array([datetime.datetime(2024, 5, 6, 7, 8, 9, 123456)], pa.timestamp("us")), b"tsu:",
     [struct.pack("<q", 1714979289123456)]),
    (pa.array([datetime.datetime(2024, 5, 6, tzinfo=datetime.timezone.utc)],
              pa.timestamp("ms", "UTC")), b"tsm:UTC", [struct.pack("<q", 1714953600000)]),
    (pa.array([datetime.date(1970, 1, 2)], pa.date32()), b"tdD", [struct.pack("<i", 1)]),
    (pa.array([decimal.Decimal("-1.25")], pa.decimal128(5, 2)), b"d:5,2",
     [(-125).to_bytes(16, "little", signed=True)]),
    (pa.array([2.5], pa.float32()), b"f", [struct.pack("<f", 2.5)]),
    (pa.array([b"abc"], pa.binary(3)), b"w:3", [b"abc"]),
    # list<int64> [1, NULL, 3]: lengths block (1 byte: count 3), bitmap 0b101, the two values
    (pa.array([[1, None, 3]]), b"\x00\x02+l\x00\x00\x00\x01\x01l\x02\x04item\x00\x00",
     [b"\x01\x03" + b"\x05" + struct.pack("<qq", 1, 3)]),
    # struct<a: int64, b: string> {a: 5, b: NULL}: a's section, then b's (bitmap 0, empty block)
    (pa.array([{"a": 5, "b": None}], pa.struct([("a", pa.int64()), ("b", pa.string())])),
     b"\x00\x02+s\x00\x00\x00\x02\x01l\x02\x01a\x00\x00\x01u\x02\x01b\x00\x00",
     [b"\x01" + struct.pack("<q", 5) + b"\x00" + b"\x00"]),
    # dictionary<int8, string>: the value itself
    (pa.array(["x"]).dictionary_encode().cast(pa.dictionary(pa.int8(), pa.string())),
     b"\x00\x01c\x80\x00\x00\x00\x01u\x02\x00\x00\x00", [b"x"]),
]


@pytest.mark.parametrize("array, descriptor, plain", KNOWN, ids=[str(k[0].type) for k in KNOWN])
def test_known_answers_against_an_independent_implementation(service, array, descriptor, plain):
    assert type_descriptor(array.type) == descriptor
    assert type_from_descriptor(descriptor) == array.type
    encrypted = encrypt_array(array, "col", service=service).to_pylist()
    for value, want in zip(encrypted, plain):
        got, found = _open_reference(value, "col")
        assert (got, found) == (want, descriptor)
        assert len(value) - len(want) == 1 + 1 + 1 + len(descriptor) + 12 + 16
    # and values the reference writes, the engine reads
    written = pa.array([_seal_reference(p, "col", descriptor) for p in plain], pa.binary())
    assert_same(decrypt_array(written, "col", service=service), array)


def test_long_descriptors_travel_by_digest_with_one_whole_copy_per_1024_values(service):
    t = pa.timestamp("ns", "America/New_York")
    descriptor = b"tsn:America/New_York"
    assert type_descriptor(t) == descriptor
    array = pa.array(np.arange(2500), pa.int64()).cast(t)
    values = encrypt_array(array, "when", service=service).to_pylist()
    whole = [i for i, v in enumerate(values) if v[0] == 0xC0]
    assert whole == [0, 1024, 2048]
    digest = hashlib.sha256(descriptor).digest()[:4]
    for i in (1, 2499):
        assert values[i][0] == 0xC1 and values[i][2:6] == digest
        got, _ = _open_reference(values[i], "when", known={digest: descriptor})
        assert got == struct.pack("<q", i)
    assert len(values[1]) - 8 == 1 + 1 + 4 + 12 + 16


def test_per_value_overhead_of_common_types(service):
    """The size budget of issue 21: nonce, tag and header in at most 40 bytes a value."""
    overhead = {}
    for name, array in {
        "string": pa.array(["someone@example.com"] * 10),
        "int64": pa.array(range(10), pa.int64()),
        "timestamp[us]": pa.array(range(10), pa.int64()).cast(pa.timestamp("us")),
        "timestamp[us, UTC]": pa.array(range(10), pa.int64()).cast(pa.timestamp("us", "UTC")),
        "timestamp[ns, Europe/Berlin]": pa.array(range(10), pa.int64()).cast(
            pa.timestamp("ns", "Europe/Berlin")),
        "decimal128(38, 10)": pa.array([decimal.Decimal(1)] * 10, pa.decimal128(38, 10)),
    }.items():
        plain = plaintexts(array)[0]
        values = encrypt_array(array, "c", service=service).to_pylist()
        overhead[name] = max(len(v) - p for v, p in zip(values[1:], plain.lengths().tolist()[1:]))
    assert overhead == {"string": 32, "int64": 32, "timestamp[us]": 35, "timestamp[us, UTC]": 38,
                        "timestamp[ns, Europe/Berlin]": 34, "decimal128(38, 10)": 38}


# ---------------------------------------------------------------- tampering and misuse


def _edit(array, row, edit):
    values = array.to_pylist()
    values[row] = edit(values[row])
    return pa.array(values, pa.large_binary())


def test_a_value_moved_to_another_column_fails(service):
    a = encrypt_array(pa.array([1, 2, 3]), "a", service=service)
    b = encrypt_array(pa.array([4, 5, 6]), "b", service=service)
    swapped = _edit(a, 1, lambda _: b[1].as_py())
    with pytest.raises(engine.BatchInvalidTag) as caught:
        decrypt_array(swapped, "a", service=service)
    assert caught.value.failed.tolist() == [1]
    with pytest.raises(engine.BatchInvalidTag) as caught:
        decrypt_array(a, "renamed", service=service)
    assert caught.value.failed.tolist() == [0, 1, 2]


def test_an_edited_type_fails_even_of_the_same_width(service):
    array = encrypt_array(pa.array([-1], pa.int64()), "n", service=service)
    as_unsigned = _edit(array, 0, lambda v: v[:3] + b"L" + v[4:])  # int64 -> uint64
    with pytest.raises(engine.BatchInvalidTag):
        decrypt_array(as_unsigned, "n", service=service)
    as_time = _edit(array, 0, lambda v: v[:2] + b"\x04tsu:" + v[4:])  # a longer descriptor
    with pytest.raises(engine.BatchInvalidTag):
        decrypt_array(as_time, "n", service=service)


def test_an_edited_long_type_fails_in_every_value(service):
    t = pa.timestamp("us", "Europe/Berlin")
    array = encrypt_array(pa.array([1, 2], pa.int64()).cast(t), "t", service=service)
    other = b"tsu:Europe/Zurich"
    digest = hashlib.sha256(other).digest()[:4]
    edited = pa.array([array[0].as_py().replace(b"Berlin", b"Zurich"),
                       array[1].as_py()[:2] + digest + array[1].as_py()[6:]], pa.large_binary())
    with pytest.raises(engine.BatchInvalidTag) as caught:
        decrypt_array(edited, "t", service=service)
    assert caught.value.failed.tolist() == [0, 1]


def test_an_edited_key_version_fails():
    provider = engine.StaticKeyProvider({1: KEY1, 2: KEY2}, current=1)
    service = engine.EncryptionService(provider, metrics=False)
    array = encrypt_array(pa.array(["a"]), "s", service=service)
    with pytest.raises(engine.BatchInvalidTag):
        decrypt_array(_edit(array, 0, lambda v: v[:1] + b"\x02" + v[2:]), "s", service=service)
    with pytest.raises(UnknownKeyVersion):
        decrypt_array(_edit(array, 0, lambda v: v[:1] + b"\x03" + v[2:]), "s", service=service)


def test_truncated_values_and_other_formats_are_refused(service):
    array = encrypt_array(pa.array(["abc", "d"]), "s", service=service)
    with pytest.raises(engine.BatchInvalidTag):
        decrypt_array(_edit(array, 0, lambda v: v[:-1]), "s", service=service)
    with pytest.raises(MalformedColumnValue):
        decrypt_array(_edit(array, 1, lambda v: v[:20]), "s", service=service)
    with pytest.raises(UnknownColumnFormat):
        decrypt_array(_edit(array, 1, lambda v: b"\xc7" + v[1:]), "s", service=service)
    with pytest.raises(UnknownColumnFormat):  # a token of the engine's other format
        decrypt_array(service.encrypt_many(["x"], binary=True).to_arrow(), "s", service=service)
    with pytest.raises(MalformedColumnValue):  # key version 0
        decrypt_array(_edit(array, 0, lambda v: v[:1] + b"\x00" + v[2:]), "s", service=service)
    with pytest.raises(MalformedColumnValue):  # a non-minimal varint
        decrypt_array(_edit(array, 0, lambda v: v[:1] + b"\x81\x00" + v[2:]), "s", service=service)
    with pytest.raises(MalformedColumnValue):
        decrypt_array(pa.array(["ec1:!!"]), "s", service=service)


def test_values_of_different_types_in_one_column_are_refused(service):
    a = encrypt_array(pa.array([1]), "c", service=service)
    b = encrypt_array(pa.array(["x"]), "c", service=service)
    with pytest.raises(ColumnTypeMismatch):
        decrypt_array(pa.concat_arrays([a, b]), "c", service=service)
    with pytest.raises(ColumnTypeMismatch):
        decrypt_array(a, "c", service=service, expected=pa.int32())


def test_rows_filtered_away_from_the_whole_type_need_it_named(service):
    t = pa.timestamp("us", "America/Sao_Paulo")
    array = encrypt_array(pa.array(range(5), pa.int64()).cast(t), "t", service=service)
    rest = array.slice(1)  # the value that carried the whole type is gone
    with pytest.raises(UnknownColumnType):
        decrypt_array(rest, "t", service=service)
    assert inspect_values(rest).data_type is None
    back = decrypt_array(rest, "t", service=service, types=[t])
    assert back.type == t and back.cast(pa.int64()).to_pylist() == [1, 2, 3, 4]


def test_per_row_associated_data_binds_values_to_their_rows(service):
    ids = pa.array(["u1", "u2"])
    array = encrypt_array(pa.array(["a@x", "b@x"]), "email", service=service, aad=ids)
    assert decrypt_array(array, "email", service=service, aad=ids).to_pylist() == ["a@x", "b@x"]
    swapped = pa.array([array[1].as_py(), array[0].as_py()], pa.large_binary())
    with pytest.raises(engine.BatchInvalidTag) as caught:
        decrypt_array(swapped, "email", service=service, aad=ids)
    assert caught.value.failed.tolist() == [0, 1]


def test_an_unregistered_extension_type_is_refused_not_turned_into_its_storage(service):
    class Point(pa.ExtensionType):
        def __init__(self):
            super().__init__(pa.int64(), "test.point")

        def __arrow_ext_serialize__(self):
            return b""

        @classmethod
        def __arrow_ext_deserialize__(cls, storage_type, serialized):
            return cls()

    pa.register_extension_type(Point())
    try:
        array = pa.ExtensionArray.from_storage(Point(), pa.array([1, None]))
        encrypted = encrypt_array(array, "p", service=service)
        assert_same(decrypt_array(encrypted, "p", service=service), array)
    finally:
        pa.unregister_extension_type("test.point")
    with pytest.raises(UnknownColumnType):
        decrypt_array(encrypted, "p", service=service)


def test_bad_descriptors_are_refused_cleanly():
    for bad in [b"", b"\x00", b"\x00\x05+l", b"?", b"\x00\x01l\x40\x00\x00\x00",
                b"\x00" + b"\x02+l\x00\x00\x00\x01" * 80]:
        with pytest.raises((MalformedColumnValue, UnknownColumnType)):
            type_from_descriptor(bad)


def test_text_form_round_trips_and_keeps_nulls(service):
    array = encrypt_array(pa.array([1, None, 3]), "n", service=service)
    text = to_text(array)
    assert text.type == pa.large_string() and text.null_count == 1
    assert all(v.startswith("ec1:") for v in text.to_pylist() if v is not None)
    assert from_text(text).equals(array)


def test_nothing_secret_reaches_the_errors(service):
    secret = "4111-1111-1111-1111"
    array = encrypt_array(pa.array([secret]), "card", service=service)
    for call in (lambda: decrypt_array(array, "other", service=service),
                 lambda: decrypt_array(array, "card", service=service, expected=pa.int64())):
        with pytest.raises(engine.EngineError) as caught:
            call()
        text = f"{caught.value!r} {caught.value} {caught.value.__context__!r}"
        assert secret not in text and KEY1.hex() not in text


# the vectors of docs/column-format.md, section 8
DOC_KEY = bytes(range(32))
DOC_VECTORS = [
    ("age", pa.array([42], pa.int64()),
     "c001016c000102030405060708090a0b6d02d61bc5e5c21bf65ced9debce7058a3be7ccbe3794b45"),
    ("scores", pa.array([[1, None, 3]]),
     "c0011200022b6c00000001016c02046974656d0000000102030405060708090a0b4601d31ac5e5c21b8d4197"
     "88b1e9786d83d6870d96ad6af1089bf8d33228add0ee4ee0"),
]


@pytest.mark.parametrize("column, array, value", DOC_VECTORS, ids=["int64", "list"])
def test_the_documented_vectors(column, array, value):
    raw = bytes.fromhex(value)
    plain, descriptor = _open_reference(raw, column, key=DOC_KEY)
    assert raw[-28 - len(plain):-28 - len(plain) + 12] == bytes(range(12))
    assert plain == plaintexts(array)[0].to_list()[0]
    service = _service({1: DOC_KEY})
    assert_same(decrypt_array(pa.array([raw], pa.binary()), column, service=service), array)
    assert encrypt_array(array, column, service=service).to_pylist()[0][:-28 - len(plain)] == \
        raw[:-28 - len(plain)]  # the header; the nonce is fresh


# ---------------------------------------------------------------- what the format stands on


def test_seal_tokens_writes_into_a_callers_buffer_at_the_starts_given(keyed_aead):
    aead = keyed_aead
    records = [b"ab", b"", b"cdef"]
    sizes = [len(r) + 3 + 12 + 16 for r in records]
    starts = np.array([5, 5 + sizes[0] + 7, 200], dtype=np.int64)
    out = np.zeros(300, dtype=np.uint8)
    assert aead.seal_tokens(records, b"hdr", b"aad", bind_header=False, nonce_size=12,
                            out=out, out_starts=starts) is None
    assert not out[:5].any() and not out[5 + sizes[0] : starts[1]].any()
    for record, start, size in zip(records, starts.tolist(), sizes):
        token = bytes(out[start : start + size])
        assert token[:3] == b"hdr"
        assert AESGCM(aead.key).decrypt(token[3:15], token[15:], b"aad") == record
    with pytest.raises(engine.InvalidArgument):  # a token past the end
        aead.seal_tokens(records, b"hdr", out=out, out_starts=[0, 50, 290], nonce_size=12)
    with pytest.raises(engine.InvalidArgument):
        aead.seal_tokens(records, b"hdr", out=out, out_starts=[-1, 50, 100], nonce_size=12)
    data = np.frombuffer(b"".join(records) + bytes(200), dtype=np.uint8).copy()
    batch = engine.Batch(data, np.array([0, 2, 2, 6], dtype=np.int64))
    with pytest.raises(engine.InvalidArgument):  # out overlaps the plaintexts
        aead.seal_tokens(batch, b"hdr", out=data, out_starts=[10, 60, 120], nonce_size=12)


@pytest.fixture
def keyed_aead():
    return _Keyed(os.urandom(32))


class _Keyed:
    """An AesGcm and its key, for checking its output with cryptography."""

    def __init__(self, key):
        self.key, self._cipher = key, engine.AesGcm(key)

    def __getattr__(self, name):
        return getattr(self._cipher, name)


def test_sealing_keys_count_usage_and_refuse_a_version_that_may_not_encrypt():
    provider = engine.StaticKeyProvider({1: KEY1})
    service = engine.EncryptionService(provider, metrics=False, usage_lease=1)
    encrypt_array(pa.array(range(5000)), "n", service=service)
    assert provider.usage(1) == 5000
    provider.set_state(1, "decrypt-only")
    with pytest.raises(engine.KeyVersionNotUsable):
        encrypt_array(pa.array([1]), "n", service=service)
    assert encrypt_array(pa.array([None], pa.int64()), "n", service=service).null_count == 1


def test_providers_wrap_locally_unless_they_say_otherwise():
    assert engine.StaticKeyProvider({1: KEY1}).key_wrapper() is None


def test_an_authentic_value_that_breaks_its_type_is_refused_without_showing_it():
    """A writer holding the key that does not follow the specification: a string that is not
    UTF-8, a list claiming more items than it holds. The error names no content and carries
    no context that does."""
    service = _service({1: DOC_KEY})
    secret = b"\xffsecret-\xfe"
    for plain, descriptor in ((secret, b"u"),
                              (b"\x01\x09" + b"\xff" + secret, type_descriptor(pa.list_(pa.int8())))):
        forged = pa.array([_seal_reference(plain, "c", descriptor, key=DOC_KEY)], pa.binary())
        with pytest.raises(MalformedColumnValue) as caught:
            decrypt_array(forged, "c", service=service)
        error = caught.value
        assert error.__context__ is None and error.__cause__ is None
        assert b"secret" not in repr(error).encode()


def test_a_type_arrow_cannot_rebuild_is_refused_before_anything_is_encrypted(service):
    t = pa.large_list(pa.run_end_encoded(pa.int16(), pa.run_end_encoded(pa.int16(), pa.null())))
    with pytest.raises(UnknownColumnType):
        type_from_descriptor(type_descriptor(t))
    with pytest.raises(engine.InvalidArgumentType, match="nothing was encrypted"):
        encrypt_array(random_array(t, 0, np.random.default_rng(0)), "col", service=service)
