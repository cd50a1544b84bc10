"""Batch, SealedBatch and the batch seal/open paths: layout, zero-copy, partial failures."""

from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings, strategies as st

import engine


def records(n=50, max_len=300):
    return [os.urandom(int(x)) for x in np.random.default_rng(1).integers(0, max_len, n)]


def test_from_list_round_trip_and_indexing():
    values = records()
    b = engine.Batch.from_list(values)
    assert len(b) == len(values) and b.to_list() == values
    assert [bytes(v) for v in b] == values
    assert isinstance(b[3], memoryview) and b[3] == values[3] and b[-1] == values[-1]
    assert b.offsets.dtype == np.int64 and b.offsets[0] == 0 and b.nbytes == sum(map(len, values))
    with pytest.raises(IndexError):
        b[len(values)]


def test_from_list_accepts_mixed_buffers_and_utf8_text():
    b = engine.Batch.from_list([b"ab", bytearray(b"cd"), memoryview(b"ef"), np.array([1, 2], np.uint16), "é"])
    assert b.to_list() == [b"ab", b"cd", b"ef", b"\x01\x00\x02\x00", "é".encode()]
    assert engine.Batch.from_list([]).to_list() == []


@pytest.mark.parametrize("bad", [[b"a", None], [b"a", 5], [b"a", 1.5]])
def test_from_list_rejects_non_buffers(bad):
    with pytest.raises(engine.InvalidArgumentType, match="record 1"):
        engine.Batch.from_list(bad)
    with pytest.raises(engine.InvalidArgumentType):
        engine.Batch.from_list(b"one value")


@pytest.mark.parametrize("number", [np.float64(1.5), np.int32(7), np.uint8(1), np.bool_(True),
                                    np.array(2.5), np.array(3, np.uint8)])
def test_from_list_refuses_numbers_that_expose_their_bytes(number):
    """np.float64 has a buffer: packed, it would be 8 raw bytes that no reader expects."""
    with pytest.raises(engine.InvalidArgumentType, match="record 1 is a number"):
        engine.Batch.from_list([b"a", number])
    aead = engine.AesGcm(bytes(32))
    with pytest.raises(engine.InvalidArgumentType, match="is a number"):
        aead.seal_batch([number])
    # numpy's text and bytes scalars are str and bytes
    assert engine.Batch.from_list([np.bytes_(b"ok"), np.str_("é")]).to_list() == [b"ok", "é".encode()]


def test_constructor_does_not_copy_data():
    data = np.arange(100, dtype=np.uint8)
    b = engine.Batch(data, [0, 10, 100])
    assert np.shares_memory(b.data, data)
    data[0] = 77
    assert b[0][0] == 77


@pytest.mark.parametrize(
    "offsets, message",
    [
        ([0, 5, 3], "non-decreasing"),
        ([0, 5, 101], "past the end"),
        ([-1, 5], "negative"),
        ([], "n\\+1"),
        ([[0, 1]], "1-D"),
    ],
)
def test_bad_offsets(offsets, message):
    with pytest.raises(engine.InvalidArgument, match=message):
        engine.Batch(bytes(100), np.array(offsets, dtype=np.int64))


def test_offsets_must_be_integers_and_data_a_buffer():
    with pytest.raises(engine.InvalidArgumentType):
        engine.Batch(bytes(10), [0.0, 1.5])
    with pytest.raises(engine.InvalidArgumentType):
        engine.Batch("text", [0, 1])
    with pytest.raises(engine.InvalidArgument, match="contiguous"):
        engine.Batch(np.zeros(20, np.uint8)[::2], [0, 1])


def test_later_changes_to_the_callers_offsets_cannot_reach_native_code(aead):
    offsets = np.array([0, 10, 20], dtype=np.int64)
    b = engine.Batch(bytes(20), offsets)
    offsets[2] = 10**12  # would point far outside the buffer
    assert aead.open_batch(aead.seal_batch(b)) == b
    with pytest.raises(ValueError):
        b.offsets[1] = 5


def test_arrow_round_trip_is_zero_copy():
    values = records()
    arr = pa.array(values, type=pa.large_binary())
    b = engine.Batch.from_arrow(arr)
    assert b.data.ctypes.data == arr.buffers()[2].address
    back = b.to_arrow()
    assert back.buffers()[2].address == b.data.ctypes.data
    assert back.to_pylist() == values
    # binary (int32 offsets), strings, slices and chunked arrays
    assert engine.Batch.from_arrow(pa.array(values, type=pa.binary())).to_list() == values
    assert engine.Batch.from_arrow(pa.array(["x", "yz"])).to_list() == [b"x", b"yz"]
    assert engine.Batch.from_arrow(arr.slice(5, 10)).to_list() == values[5:15]
    assert engine.Batch.from_arrow(pa.chunked_array([arr[:3], arr[3:]])).to_list() == values


def test_arrow_nulls_and_wrong_types_are_refused():
    with pytest.raises(engine.InvalidArgument, match="null"):
        engine.Batch.from_arrow(pa.array([b"a", None]))
    with pytest.raises(engine.InvalidArgumentType):
        engine.Batch.from_arrow(pa.array([1, 2]))


def test_seal_batch_matches_single_record_results(aead, key):
    values = records(200, 2000)
    sealed = aead.seal_batch(values, b"shared aad")
    assert sealed.nonces.shape == (200, 16) and sealed.tags.shape == (200, 16)
    assert np.array_equal(sealed.ciphertexts.offsets, engine.Batch.from_list(values).offsets)
    ref = AESGCM(key)
    for i, v in enumerate(values):
        nonce = sealed.nonces[i].tobytes()
        single = aead.encrypt(nonce, v, b"shared aad")
        assert single == sealed.ciphertexts[i].tobytes() + sealed.tags[i].tobytes()
        assert ref.decrypt(nonce, single, b"shared aad") == v
    assert aead.open_batch(sealed, b"shared aad").to_list() == values


@pytest.mark.parametrize("nonce_size", [8, 12, 16, 32, 128])
@pytest.mark.parametrize("threads", [1, 2, 7])
def test_nonce_sizes_threads_and_per_record_aad(aead, nonce_size, threads):
    values = records(300, 5000)
    aad = [os.urandom(i % 40) for i in range(300)]
    sealed = aead.seal_batch(values, aad, nonce_size=nonce_size, threads=threads)
    assert sealed.nonce_size == nonce_size
    assert aead.open_batch(sealed, engine.Batch.from_list(aad), threads=threads).to_list() == values
    with pytest.raises(engine.BatchInvalidTag) as err:
        aead.open_batch(sealed, b"other", threads=threads)
    assert len(err.value.failed) == sum(1 for v in values) and isinstance(err.value, engine.InvalidTag)


def test_partial_failure_reports_indices_and_keeps_good_records(aead):
    values = records(100, 500)
    sealed = aead.seal_batch(values)
    tags = sealed.tags.copy()
    ct = sealed.ciphertexts.data.copy()
    tags[7, 0] ^= 1
    tags[42, 15] ^= 0x80
    victim = next(i for i in range(60, 100) if len(values[i]))
    ct[sealed.ciphertexts.offsets[victim]] ^= 1
    tampered = engine.SealedBatch(
        nonces=sealed.nonces, tags=tags, ciphertexts=engine.Batch(ct, sealed.ciphertexts.offsets)
    )
    with pytest.raises(engine.BatchInvalidTag) as err:
        aead.open_batch(tampered)
    failed = sorted({7, 42, victim})
    assert err.value.failed.tolist() == failed
    assert str(len(failed)) in str(err.value)
    result = err.value.result
    for i, v in enumerate(values):
        assert result[i].tobytes() == (bytes(len(v)) if i in failed else v)


def test_in_place_seal_and_open(aead):
    values = records(64, 4096)
    batch = engine.Batch.from_list(values)
    buf = batch.data.copy()
    work = engine.Batch(buf, batch.offsets)
    sealed = aead.seal_batch_into(work, buf)
    assert np.shares_memory(sealed.ciphertexts.data, buf)
    assert sealed.ciphertexts.to_list() != values or batch.nbytes == 0
    opened = aead.open_batch_into(sealed, buf)
    assert np.shares_memory(opened.data, buf) and opened.to_list() == values


def test_into_outputs_are_checked(aead):
    batch = engine.Batch.from_list([b"abc", b"de"])
    with pytest.raises(engine.InvalidArgument, match="holds 4 bytes"):
        aead.seal_batch_into(batch, bytearray(4))
    with pytest.raises(engine.InvalidArgument, match="writable"):
        aead.seal_batch_into(batch, bytes(5))
    sealed = aead.seal_batch(batch)
    with pytest.raises(engine.InvalidArgument, match="writable"):
        aead.open_batch_into(sealed, b"12345")


def test_sliced_input_offsets_are_rebased(aead):
    values = records(30)
    arr = pa.array(values, type=pa.large_binary()).slice(10, 10)
    sealed = aead.seal_batch(arr)
    assert sealed.ciphertexts.offsets[0] == 0
    assert aead.open_batch(sealed).to_list() == values[10:20]


def test_associated_data_count_must_match(aead):
    with pytest.raises(engine.InvalidArgument, match="2 values for 3 records"):
        aead.seal_batch([b"a", b"b", b"c"], [b"x", b"y"])
    sealed = aead.seal_batch([b"a", b"b", b"c"])
    with pytest.raises(engine.InvalidArgument, match="4 values for 3 records"):
        aead.open_batch(sealed, [b"x"] * 4)


def test_batch_argument_checks(aead):
    with pytest.raises(engine.InvalidArgumentType):
        aead.seal_batch(b"not a batch")
    with pytest.raises(engine.InvalidArgument, match="nonce must be 8 to 128"):
        aead.seal_batch([b"a"], nonce_size=4)
    for threads in (0, -1, 1.5, True):
        with pytest.raises(engine.InvalidArgument, match="threads"):
            aead.seal_batch([b"a"], threads=threads)
    with pytest.raises(engine.InvalidArgumentType):
        aead.open_batch([b"a"])


def test_empty_batches(aead):
    sealed = aead.seal_batch([])
    assert len(sealed) == 0 and sealed.nonces.shape == (0, 16)
    assert len(aead.open_batch(sealed)) == 0
    sealed = aead.seal_batch([b"", b""])
    assert aead.open_batch(sealed).to_list() == [b"", b""]


def test_sealed_batch_rebuilt_from_parquet(aead, tmp_path):
    values = records(500, 1000)
    sealed = aead.seal_batch(values, nonce_size=12)
    pq.write_table(sealed.to_arrow(), tmp_path / "sealed.parquet")
    table = pq.read_table(tmp_path / "sealed.parquet")
    again = engine.SealedBatch.from_arrow(table)
    assert again.nonce_size == 12
    assert aead.open_batch(again).to_list() == values
    # the same columns as plain numpy arrays and Python lists
    rebuilt = engine.SealedBatch(
        nonces=np.array(sealed.nonces), tags=[t.tobytes() for t in sealed.tags],
        ciphertexts=sealed.ciphertexts.to_list(),
    )
    assert aead.open_batch(rebuilt).to_list() == values


def test_sealed_batch_shape_checks():
    ct = engine.Batch.from_list([b"a", b"b"])
    with pytest.raises(engine.InvalidArgument):
        engine.SealedBatch(nonces=np.zeros((3, 16), np.uint8), tags=np.zeros((2, 16), np.uint8), ciphertexts=ct)
    with pytest.raises(engine.InvalidArgument):
        engine.SealedBatch(nonces=np.zeros((2, 16), np.uint8), tags=np.zeros((2, 15), np.uint8), ciphertexts=ct)
    with pytest.raises(engine.InvalidArgument):
        engine.SealedBatch(nonces=[b"x" * 16, b"y" * 12], tags=[b"t" * 16] * 2, ciphertexts=ct)
    with pytest.raises(engine.InvalidArgumentType):
        engine.SealedBatch(nonces=np.zeros((2, 16), np.float32), tags=np.zeros((2, 16), np.uint8), ciphertexts=ct)


def test_native_batch_helpers_check_threads_like_aesgcm():
    from engine.codecs import b64url_encode

    b = engine.Batch.from_list([b"abc"])
    for threads in (0, 2**40, 1.5):
        with pytest.raises(engine.InvalidArgument, match="threads"):
            b64url_encode(b, threads=threads)
        with pytest.raises(engine.InvalidArgument, match="threads"):
            b.take([0], threads=threads)


# ---------------------------------------------------------------- Python objects in bulk (C)


def test_batch_offsets_cannot_be_made_writable_again():
    a = engine.AesGcm(engine.AesGcm.generate_key())
    batches = [engine.Batch.from_list([b"ab", b"c"]), engine.Batch(b"abc", [0, 1, 3]),
               engine.Batch.from_list(["x", "yz"]), a.seal_batch([b"ab", b"c"]).ciphertexts,
               engine.Batch.from_list([b"ab", b"c"]).take([1, 0]),
               engine.Batch.from_list([b"ab", b"c"]).slices(np.array([0, 1]), np.array([1, 1]))]
    for b in batches:
        with pytest.raises(ValueError, match="WRITEABLE"):
            b.offsets.flags.writeable = True


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(), st.binary(), st.binary().map(bytearray)), max_size=30))
def test_from_list_and_the_c_packer_match_the_python_reference(values):
    from engine import _native

    expected = [v.encode() if isinstance(v, str) else bytes(v) for v in values]
    offsets = [0, *np.cumsum([len(e) for e in expected]).tolist()]
    b = engine.Batch.from_list(values)
    assert b.to_list() == expected and b.offsets.tolist() == offsets
    assert len(engine.Batch.from_list(tuple(values))) == len(values)
    out = np.empty(_native.packed_size(values), np.uint8)
    offs = _native.pack_into(values, out)
    assert out.tobytes() == b"".join(expected) and np.frombuffer(offs, np.int64).tolist() == offsets


def test_from_list_edge_cases():
    for values in (["ok", "secret\ud800"], ["ok", "secret\ud800", memoryview(b"x")]):
        with pytest.raises(engine.InvalidArgument, match="lone surrogate") as e:
            engine.Batch.from_list(values)  # a lone surrogate has no UTF-8 form
        assert "secret" not in repr(e.value) and "secret" not in repr(e.value.args)
    with pytest.raises(engine.InvalidArgumentType, match="record 1"):
        engine.Batch.from_list(["a", None])
    mixed = engine.Batch.from_list([b"a", memoryview(b"bc"), np.frombuffer(b"d", np.uint8)])
    assert mixed.to_list() == [b"a", b"bc", b"d"]  # other buffers: the general path
    assert engine.Batch.from_list([]).to_list() == []

    class S(str):
        pass

    assert engine.Batch.from_list([S("é"), S("x")]).to_list() == ["é".encode(), b"x"]


def test_pickled_batches_come_back_checked_and_locked():
    import pickle

    a = engine.AesGcm(engine.AesGcm.generate_key())
    b = engine.Batch(np.frombuffer(b"abcdefgh", np.uint8), [2, 4, 8])
    sealed = a.seal_batch(b)
    for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
        b2 = pickle.loads(pickle.dumps(b, protocol=proto))
        assert b2.to_list() == [b"cd", b"efgh"]
        with pytest.raises(ValueError, match="WRITEABLE"):
            b2.offsets.flags.writeable = True
        s2 = pickle.loads(pickle.dumps(sealed, protocol=proto))
        assert a.open_batch(s2).to_list() == [b"cd", b"efgh"]
        with pytest.raises(ValueError, match="WRITEABLE"):
            s2.ciphertexts.offsets.flags.writeable = True


def test_plaintext_buffers_never_come_from_the_reusable_pool():
    a = engine.AesGcm(engine.AesGcm.generate_key())
    batch = engine.Batch(np.zeros(8 << 20, np.uint8), np.arange(0, (8 << 20) + 1, 1 << 16))
    sealed = a.seal_batch(batch)
    assert isinstance(sealed.ciphertexts.data.base, pa.Buffer)  # public output: pooled
    opened = a.open_batch(sealed)
    assert not isinstance(opened.data.base, pa.Buffer)
    svc = engine.EncryptionService(engine.StaticKeyProvider({1: bytes(32)}))
    tokens = svc.encrypt_many(batch, binary=True)
    assert not isinstance(svc.decrypt_many(tokens).data.base, pa.Buffer)
    assert not isinstance(a.open_tokens(a.seal_tokens(batch, b"h"), 1).data.base, pa.Buffer)
    assert not isinstance(batch.take(np.arange(len(batch))).data.base, pa.Buffer)


# ---- aliasing between inputs and outputs -------------------------------------------------------


def _records(rng, n, size):
    lengths = rng.integers(0, size, n)
    return [rng.bytes(int(k)) for k in lengths]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(-64, 64), st.integers(0, 48), st.sampled_from([1, 2]),
       st.integers(0, 2**32 - 1))
def test_an_output_shifted_against_its_input_is_refused_and_nothing_changes(n, shift, base,
                                                                             threads, seed):
    """Only exactly in place (every record written over itself) or fully disjoint outputs are
    accepted; any other overlap would overwrite records not yet read."""
    aead = engine.AesGcm(engine.AesGcm.generate_key())
    rng = np.random.default_rng(seed)
    values = _records(rng, n, 300)
    lengths = np.array([len(v) for v in values])
    total = int(lengths.sum())
    arena = np.zeros(total + 2 * 64 + base + 8, np.uint8)
    start = 64 + base
    arena[start:start + total] = np.frombuffer(b"".join(values), np.uint8)
    offsets = np.concatenate([[0], np.cumsum(lengths)]) + start
    batch = engine.Batch(arena, offsets)
    out = arena[start + shift:start + shift + total]
    before = arena.copy()
    if shift != 0 and abs(shift) < total:
        with pytest.raises(engine.InvalidArgument, match="overlaps"):
            aead.seal_batch_into(batch, out, threads=threads)
        assert np.array_equal(arena, before)  # refused before anything was written
        return
    sealed = aead.seal_batch_into(batch, out, threads=threads)
    opened = aead.open_batch(sealed, threads=threads)
    assert opened.to_list() == values


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("where", ["ciphertexts", "nonces", "tags"])
def test_open_into_refuses_an_output_over_another_input(aead, threads, where):
    n, size = 50, 100
    sealed = aead.seal_batch([b"x" * size] * n)
    # nonces, tags and free space in one arena; the ciphertexts in another, with room behind
    arena = np.zeros(n * (32 + size), np.uint8)
    nonces = arena[:n * 16].reshape(n, 16)
    tags = arena[n * 16:n * 32].reshape(n, 16)
    nonces[:] = sealed.nonces
    tags[:] = sealed.tags
    ct_arena = np.zeros(n * size + 1, np.uint8)
    ct_arena[:n * size] = sealed.ciphertexts.data
    stored = engine.SealedBatch(nonces=nonces, tags=tags,
                                ciphertexts=engine.Batch(ct_arena, sealed.ciphertexts.offsets))
    if where == "ciphertexts":
        arena, start = ct_arena, 1
    else:  # a window that starts inside that column (and runs into the free space)
        start = {"nonces": 8, "tags": n * 16 + 8}[where]
    before = arena.copy()
    with pytest.raises(engine.InvalidArgument, match="overlaps"):
        aead.open_batch_into(stored, arena[start:start + n * size], threads=threads)
    assert np.array_equal(arena, before)
    assert aead.open_batch(stored).to_list() == [b"x" * size] * n


@pytest.mark.parametrize("threads", [1, 2])
def test_a_failed_in_place_open_leaves_the_ciphertext_as_it_was(aead, threads):
    n = 64
    values = [bytes([i]) * (200 + i) for i in range(n)]
    aad = [f"row:{i}".encode() for i in range(n)]
    batch = engine.Batch.from_list(values)
    buf = np.array(batch.data)
    sealed = aead.seal_batch_into(engine.Batch(buf, batch.offsets), buf, aad, threads=threads)
    ciphertext = buf.copy()
    wrong = list(aad)
    bad = [3, 17, 40, 63]
    for i in bad:
        wrong[i] = b"another row"
    with pytest.raises(engine.BatchInvalidTag) as err:
        aead.open_batch_into(sealed, buf, wrong, threads=threads)
    assert err.value.failed.tolist() == bad
    offsets = batch.offsets
    for i in range(n):
        got = buf[offsets[i]:offsets[i + 1]].tobytes()
        if i in bad:  # still the ciphertext, so the right AAD opens it later
            assert got == ciphertext[offsets[i]:offsets[i + 1]].tobytes()
        else:
            assert got == values[i]
    retry = engine.SealedBatch(nonces=sealed.nonces[bad], tags=sealed.tags[bad],
                               ciphertexts=[buf[offsets[i]:offsets[i + 1]].tobytes() for i in bad])
    assert aead.open_batch(retry, [aad[i] for i in bad]).to_list() == [values[i] for i in bad]


def test_a_failed_open_into_a_separate_buffer_zero_fills_the_failures(aead):
    sealed = aead.seal_batch([b"a" * 40, b"b" * 40], [b"1", b"2"])
    out = np.full(80, 0xAA, np.uint8)
    with pytest.raises(engine.BatchInvalidTag) as err:
        aead.open_batch_into(sealed, out, [b"1", b"x"])
    assert err.value.failed.tolist() == [1]
    assert out[:40].tobytes() == b"a" * 40 and not out[40:].any()


def test_small_argument_mistakes_are_typed_errors(aead):
    batch = engine.Batch.from_list([b"a", b"bb"])
    with pytest.raises(engine.InvalidArgumentType, match="list or tuple"):
        engine.Batch.from_list({b"a": 1})
    with pytest.raises(engine.InvalidArgument, match="outside"):
        batch.take([5])
    with pytest.raises(engine.InvalidArgument, match="outside"):
        batch.take([-3])
    assert batch.take([-1, 0]).to_list() == [b"bb", b"a"]
    with pytest.raises(engine.InvalidArgumentType):
        batch.take([0.5])
    with pytest.raises(engine.InvalidArgumentType, match="nonce_size"):
        aead.seal_batch(batch, nonce_size=16.0)
    with pytest.raises(engine.InvalidArgumentType, match="backend"):
        engine.AesGcm(bytes(32), backend=5)
    sealed = aead.seal_batch(batch)
    for width in (0, 4, 200):
        with pytest.raises(engine.InvalidArgument, match="nonces must be"):
            engine.SealedBatch(nonces=np.zeros((2, width), np.uint8), tags=sealed.tags,
                               ciphertexts=sealed.ciphertexts)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 70_000), max_size=12), st.sampled_from([1, 2, 3]),
       st.sampled_from(["none", "one", "each"]), st.sampled_from([12, 16]))
def test_open_list_gives_what_open_batch_gives(lengths, threads, aad_kind, nonce_size):
    aead = engine.AesGcm(engine.AesGcm.generate_key())
    values = [os.urandom(k) for k in lengths]
    aad = {"none": None, "one": b"ctx",
           "each": [str(i).encode() * i for i in range(len(values))]}[aad_kind]
    sealed = aead.seal_batch(values, aad, nonce_size=nonce_size)
    got = aead.open_list(sealed, aad, threads=threads)
    assert got == values == aead.open_batch(sealed, aad).to_list()
    assert all(type(v) is bytes for v in got)
    if values and aad_kind == "each":
        wrong = list(aad)
        wrong[-1] = b"other"
        with pytest.raises(engine.BatchInvalidTag) as err:
            aead.open_list(sealed, wrong, threads=threads)
        assert err.value.failed.tolist() == [len(values) - 1]
        assert err.value.result[:-1] == values[:-1] and not any(err.value.result[-1])
    assert b"" == b"" and bytes(1) == b"\x00"  # shared objects left intact


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 300_000), min_size=1, max_size=8), st.sampled_from([1, 2]),
       st.sampled_from(["none", "one", "each"]), st.sampled_from([12, 16, 32]))
def test_large_bytes_sealed_where_they_are_match_the_packed_path(lengths, threads, aad_kind,
                                                                 nonce_size):
    """A list of large bytes objects is sealed from the objects themselves (no packing copy);
    every record must be what cryptography makes with the same nonce and AAD."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = engine.AesGcm.generate_key()
    aead, ref = engine.AesGcm(key), AESGCM(key)
    values = [os.urandom(k) for k in lengths]
    aad = {"none": None, "one": b"ctx", "each": [b"r%d" % i for i in range(len(values))]}[aad_kind]
    sealed = aead.seal_batch(values, aad, nonce_size=nonce_size, threads=threads)
    assert sealed.ciphertexts.offsets.tolist() == np.concatenate([[0], np.cumsum(lengths)]).tolist()
    for i, v in enumerate(values):
        a = aad[i] if aad_kind == "each" else aad
        got = bytes(sealed.ciphertexts[i]) + sealed.tags[i].tobytes()
        assert got == ref.encrypt(sealed.nonces[i].tobytes(), v, a)
    assert aead.open_list(sealed, aad) == values
    mixed = values[:-1] + [bytearray(values[-1])]  # not all bytes: packed first, same result
    assert aead.open_list(aead.seal_batch(mixed, aad, nonce_size=nonce_size), aad) == values

# ---------------------------------------------------------------- threads= reaches the native call
# Observed from outside, with no hook in the product: while a large native call runs with the GIL
# released, a Python thread samples /proc/self/task and counts the threads that are running or
# runnable (state R). threads=1 must never show more than the caller's thread; threads=2 must
# show two at some point. Counting running threads rather than existing ones holds for workers
# started per call and for a pool of idle workers alike. Not counted: the sampler, threads on
# their way out (a joined thread still runs its exit for a moment), and helper threads that
# libraries start and name for themselves (jemalloc's background purger in pyarrow wakes up
# after large frees); native workers inherit the process's name. On a loaded machine a sample
# can miss the second thread, so calls repeat until it is seen (the assertion is on the maximum).

BIG = 16 << 20
PF_EXITING = 0x4


def thread_states() -> dict[int, tuple[bytes, bool]]:
    """tid -> (name, running) for this process's threads, except those on their way out."""
    states = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                raw = f.read()
        except (FileNotFoundError, ProcessLookupError):  # the thread has just gone
            continue
        name, _, rest = raw.partition(b" (")[2].rpartition(b") ")
        fields = rest.split()  # state, ppid, pgrp, session, tty, tpgid, flags, ...
        if not int(fields[6]) & PF_EXITING:
            states[int(tid)] = (name, fields[0] == b"R")
    return states


def most_threads_seen(call, want: int, attempts: int) -> int:
    """The most running threads sampled while ``call()`` repeats (until ``want`` is seen)."""
    import threading

    stop, ready = threading.Event(), threading.Event()
    seen = [0]
    process_name = thread_states()[os.getpid()][0]

    def running(skip):
        return sum(run for tid, (_, run) in thread_states().items() if tid not in skip)

    def sample():
        me = threading.get_native_id()
        helpers = {tid for tid, (name, _) in thread_states().items() if name != process_name}
        deadline = time.monotonic() + 5
        while running({me, os.getpid(), *helpers}) and time.monotonic() < deadline:
            time.sleep(0.001)  # the previous round's sampler, runnable but waiting for a CPU
        ready.set()
        while not stop.wait(0.0002):  # a thread that wakes up is scheduled sooner than one
            seen[0] = max(seen[0], running({me, *helpers}))  # that spins

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        ready.wait()
        for _ in range(attempts):
            call()
            if seen[0] >= want:
                break
    finally:
        stop.set()
        sampler.join()
    return seen[0]


def _threaded_calls():
    """name -> function(threads) running one large native batch call of that kind."""
    key = os.urandom(32)
    aead = engine.AesGcm(key)
    data = np.full(BIG, 7, np.uint8)
    batch = engine.Batch(data, np.arange(0, BIG + 1, BIG // 64))
    out = np.ones(BIG, np.uint8)
    sealed = aead.seal_batch(batch)
    header = b"\xef\x01\x00\x00\x00\x01"
    tokens = aead.seal_tokens(batch, header)
    from engine.keys import StaticKeyProvider
    from engine.service import EncryptionService

    def service(threads):
        return EncryptionService(StaticKeyProvider({1: key}), threads=threads, metrics=False)

    binary = service(1).encrypt_many(batch, binary=True)
    return {
        "seal_batch_into": lambda t: aead.seal_batch_into(batch, out, threads=t),
        "open_batch_into": lambda t: aead.open_batch_into(sealed, out, threads=t),
        "seal_tokens": lambda t: aead.seal_tokens(batch, header, threads=t),
        "open_tokens": lambda t: aead.open_tokens(tokens, len(header), out=out,
                                                  out_starts=np.arange(0, BIG, BIG // 64),
                                                  threads=t),
        "encrypt_many": lambda t: service(t).encrypt_many(batch, binary=True),
        "decrypt_many": lambda t: service(t).decrypt_many(binary),
    }


@pytest.fixture(scope="module")
def threaded_calls():
    return _threaded_calls()


@pytest.mark.parametrize("name", ["seal_batch_into", "open_batch_into", "seal_tokens",
                                  "open_tokens", "encrypt_many", "decrypt_many"])
def test_threads_argument_sets_how_many_threads_run(threaded_calls, name):
    call = threaded_calls[name]
    assert most_threads_seen(lambda: call(1), want=2, attempts=5) <= 1
    assert most_threads_seen(lambda: call(2), want=2, attempts=50) == 2
    assert most_threads_seen(lambda: call(1), want=2, attempts=5) <= 1


def test_an_empty_sealed_batch_from_empty_lists_opens(aead):
    empty = engine.SealedBatch(nonces=[], tags=[], ciphertexts=[])
    assert aead.open_batch(empty).to_list() == [] and aead.open_list(empty) == []
