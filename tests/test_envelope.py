"""Ciphertext envelopes: the seed's JSON shape, tokens, strict parsing, bulk packing."""

from __future__ import annotations

import base64
from datetime import datetime, timezone

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from engine import AesGcm, Batch, SealedBatch
from engine.envelope import (
    EncryptedData,
    EnvelopeError,
    InvalidBase64,
    InvalidLength,
    MalformedEnvelope,
    UnknownFormat,
    as_binary_tokens,
    b64url_decode_rows,
    b64url_encode_rows,
    decode_text_tokens,
    encode_text_tokens,
    is_text_token,
    pack_tokens,
    parse_tokens,
    prefix_each,
    sealed_to_text_tokens,
    take,
    text_token_mask,
    token_header,
)


def sample(**kw) -> EncryptedData:
    fields = dict(iv=b"\x01" * 16, ciphertext=b"secret-ct", auth_tag=b"\x02" * 16, key_version=3,
                  timestamp=datetime(2026, 1, 31, 12, 0, 0, 123000, tzinfo=timezone.utc))
    fields.update(kw)
    return EncryptedData(**fields)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# ---------------------------------------------------------------- EncryptedData


def test_json_shape_matches_seed():
    doc = sample().to_dict()
    assert set(doc) == {"iv", "ciphertext", "authTag", "keyVersion", "timestamp", "algorithm"}
    assert doc["algorithm"] == "aes-256-gcm"
    assert doc["timestamp"] == "2026-01-31T12:00:00.123Z"
    assert base64.b64decode(doc["iv"]) == b"\x01" * 16
    assert doc["keyVersion"] == 3
    assert EncryptedData.from_dict(doc) == sample()
    assert EncryptedData.from_json(sample().to_json()) == sample()


def test_timestamp_forms():
    naive = sample(timestamp="2026-01-31T12:00:00")
    assert naive.timestamp.tzinfo is not None
    z = EncryptedData.from_dict({**sample().to_dict(), "timestamp": "2026-01-31T12:00:00.5Z"})
    assert z.timestamp == datetime(2026, 1, 31, 12, 0, 0, 500000, tzinfo=timezone.utc)
    assert sample(timestamp=None).to_dict()["timestamp"] is None
    with pytest.raises(MalformedEnvelope):
        sample(timestamp="yesterday")


def test_repr_hides_bytes():
    r = repr(sample())
    assert "secret-ct" not in r and "key_version=3" in r


def test_token_roundtrip_and_layout():
    e = sample(header_bound=True)
    raw = e.to_binary_token()
    assert raw[:6] == b"\xef\x01\x00\x00\x00\x03"
    assert raw[6:22] == e.iv and raw[22:-16] == e.ciphertext and raw[-16:] == e.auth_tag
    tok = e.to_token()
    assert tok == "ef1:" + b64url(raw) and "=" not in tok
    back = EncryptedData.from_token(tok)
    assert back.header_bound and back.timestamp is None
    assert (back.iv, back.ciphertext, back.auth_tag, back.key_version) == (
        e.iv, e.ciphertext, e.auth_tag, 3)
    assert EncryptedData.from_token(raw) == back
    assert EncryptedData.from_token(tok.encode()) == back
    seed = sample()
    assert seed.to_binary_token()[1] == 2 and not EncryptedData.from_token(seed.to_token()).header_bound


def test_header_bound_value_has_no_seed_json():
    with pytest.raises(EnvelopeError):
        sample(header_bound=True).to_dict()


def test_aad_binding():
    assert sample(header_bound=True).aad(b"ctx") == token_header(3) + b"ctx"
    assert sample().aad(b"ctx") == b"ctx"
    assert sample().aad(None) is None


# ---------------------------------------------------------------- strict parsing, distinct errors


def good_doc() -> dict:
    return sample().to_dict()


@pytest.mark.parametrize("mutate, error", [
    (lambda d: d.pop("iv"), MalformedEnvelope),
    (lambda d: d.update(keyVersion="three"), MalformedEnvelope),
    (lambda d: d.update(keyVersion=0), MalformedEnvelope),
    (lambda d: d.update(keyVersion=True), MalformedEnvelope),
    (lambda d: d.update(iv=123), MalformedEnvelope),
    (lambda d: d.update(iv="AQEB!QEBAQEBAQEBAQEBAQ=="), InvalidBase64),
    (lambda d: d.update(ciphertext="abc"), InvalidBase64),
    (lambda d: d.update(authTag="AgICAgICAgICAgICAgICAh=="), InvalidBase64),  # non-canonical
    (lambda d: d.update(iv=base64.b64encode(b"x" * 12).decode()), InvalidLength),
    (lambda d: d.update(authTag=base64.b64encode(b"x" * 15).decode()), InvalidLength),
    (lambda d: d.update(algorithm="aes-128-cbc"), UnknownFormat),
])
def test_json_parse_errors_are_distinct(mutate, error):
    doc = good_doc()
    mutate(doc)
    with pytest.raises(error) as info:
        EncryptedData.from_dict(doc)
    assert isinstance(info.value, EnvelopeError) and isinstance(info.value, ValueError)
    others = {MalformedEnvelope, InvalidBase64, InvalidLength, UnknownFormat} - {error}
    assert not any(isinstance(info.value, o) for o in others)


def test_json_errors():
    with pytest.raises(MalformedEnvelope):
        EncryptedData.from_json("{not json")
    with pytest.raises(MalformedEnvelope):
        EncryptedData.from_json("[1, 2]")
    assert EncryptedData.from_dict({**good_doc(), "keyVersion": "3"}).key_version == 3


TOKEN = sample(header_bound=True).to_token()


@pytest.mark.parametrize("token, error", [
    ("hello world", MalformedEnvelope),
    ("", MalformedEnvelope),
    ("ef2:" + TOKEN[4:], UnknownFormat),
    (TOKEN[:-1] + "!", InvalidBase64),
    (TOKEN + "A" * ((1 - len(TOKEN[4:])) % 4), InvalidBase64),  # body length 1 mod 4
    ("ef1:" + b64url(b"\xef\x01" + b"\x00" * 20), InvalidLength),
    ("ef1:" + b64url(b"\xee\x01" + b"\x00" * 40), UnknownFormat),
    ("ef1:" + b64url(b"\xef\x07" + b"\x00" * 40), UnknownFormat),
    ("ef1:" + b64url(b"\xef\x01\x00\x00\x00\x00" + b"\x00" * 40), MalformedEnvelope),
])
def test_token_parse_errors_are_distinct(token, error):
    with pytest.raises(error):
        EncryptedData.from_token(token)
    assert not is_text_token(token)


def test_non_canonical_base64url_is_rejected():
    raw = b"\xef\x01\x00\x00\x00\x01" + b"\x00" * 33  # 39 bytes: 52 chars, no leftover bits
    raw2 = raw + b"\x00"  # 40 bytes -> 54 chars, 2 leftover bits in the last char
    tok = "ef1:" + b64url(raw2)
    assert EncryptedData.from_token(tok)
    bad = tok[:-1] + "B"  # sets a leftover bit
    with pytest.raises(InvalidBase64):
        EncryptedData.from_token(bad)
    with pytest.raises(InvalidBase64):
        decode_text_tokens([bad])


def test_binary_token_errors():
    with pytest.raises(InvalidLength):
        EncryptedData.from_token(b"\xef\x01" + b"\x00" * 10)
    with pytest.raises(UnknownFormat):
        EncryptedData.from_token(b"\x00\xff" + b"\x00" * 40)
    with pytest.raises(MalformedEnvelope):
        EncryptedData.parse(12)


# ---------------------------------------------------------------- vectorized base64url


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=30), st.integers(0, 60))
def test_vectorized_base64url_matches_stdlib(values, width):
    rows = np.zeros((len(values), width), dtype=np.uint8)
    for i, v in enumerate(values):
        v = v[:width]
        rows[i, : len(v)] = np.frombuffer(v, dtype=np.uint8)
    chars = b64url_encode_rows(rows)
    for i in range(len(values)):
        assert chars[i].tobytes().decode() == b64url(rows[i].tobytes())
    back, bad = b64url_decode_rows(chars)
    assert not bad.any() and np.array_equal(back, rows)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                    "0123456789-_+/=!", min_size=8, max_size=8),
                min_size=1, max_size=20))
def test_vectorized_decode_agrees_with_stdlib_on_validity(strings):
    chars = np.frombuffer("".join(strings).encode(), dtype=np.uint8).reshape(len(strings), 8)
    rows, bad = b64url_decode_rows(chars)
    for i, s in enumerate(strings):
        valid = all(c not in "+/=!" for c in s)
        assert bool(bad[i]) == (not valid)
        if valid:
            assert rows[i].tobytes() == base64.urlsafe_b64decode(s)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=70), max_size=40), st.integers(1, 2**32 - 1))
def test_bulk_text_tokens_match_single_value_tokens(values, version):
    cipher = AesGcm(b"k" * 32)
    sealed = cipher.seal_batch(Batch.from_list(values) if values else Batch._trusted(
        np.empty(0, np.uint8), np.zeros(1, np.int64)), token_header(version))
    binary = pack_tokens(sealed, version)
    texts = encode_text_tokens(binary)
    assert texts == sealed_to_text_tokens(sealed, version)
    assert texts == sealed_to_text_tokens(sealed, version, threads=2)
    for i, v in enumerate(values):
        e = EncryptedData(sealed.nonces[i].tobytes(), sealed.ciphertexts[i].tobytes(),
                          sealed.tags[i].tobytes(), version, header_bound=True)
        assert binary[i].tobytes() == e.to_binary_token()
        assert texts[i] == e.to_token() == "ef1:" + b64url(e.to_binary_token())
    if values:
        assert decode_text_tokens(texts) == binary
        assert as_binary_tokens(texts) == binary and as_binary_tokens(binary) is binary
        parsed = parse_tokens(binary)
        assert (parsed.key_versions == version).all() and (parsed.formats == 1).all()
        opened = cipher.open_batch(SealedBatch._trusted(parsed.nonces, parsed.tags,
                                                        parsed.ciphertexts), token_header(version))
        assert opened.to_list() == values


def test_bulk_errors_name_the_record_and_type():
    good = sample(header_bound=True).to_token()
    cases = [
        ([good, "nope"], MalformedEnvelope),
        ([good, good[:-1] + "*"], InvalidBase64),
        ([good, "ef1:" + b64url(b"\xef\x01" + b"\x00" * 10)], InvalidLength),
        ([good, "ef9:" + good[4:]], UnknownFormat),
        ([good, "ef1:" + b64url(b"\xef\x05" + b"\x00" * 40)], UnknownFormat),
    ]
    for tokens, error in cases:
        with pytest.raises(error, match="token 1"):
            decode_text_tokens(tokens)
    with pytest.raises(InvalidLength):
        parse_tokens(Batch.from_list([b"\xef\x01" + b"\x00" * 5]))
    with pytest.raises(UnknownFormat):
        parse_tokens(Batch.from_list([b"\xef\x03" + b"\x00" * 40]))
    assert text_token_mask(Batch.from_list([good, "ef1:zz", "x", good])).tolist() == [
        True, False, False, True]


def test_many_lengths_and_large_groups():
    rng = np.random.default_rng(5)
    values = [bytes(rng.integers(0, 256, int(n), dtype=np.uint8))
              for n in rng.integers(0, 300, 3000)]
    cipher = AesGcm(b"z" * 32)
    sealed = cipher.seal_batch(Batch.from_list(values), token_header(9))
    texts = sealed_to_text_tokens(sealed, 9)
    assert texts == [EncryptedData.from_token(t).to_token() for t in texts]
    assert decode_text_tokens(texts) == pack_tokens(sealed, 9)


def test_prefix_each_and_take():
    b = Batch.from_list([b"a", b"", b"ccc"])
    assert prefix_each(b"P:", b).to_list() == [b"P:a", b"P:", b"P:ccc"]
    assert take(b, np.array([0, 2])).to_list() == [b"a", b"ccc"]
    sliced = Batch(b.data, b.offsets[1:])
    assert prefix_each(b"#", sliced).to_list() == [b"#", b"#ccc"]


@pytest.mark.parametrize("distinct", [3, 2000])  # grouped memcpy path, per-byte index path
def test_copy_records_matches_slicing(distinct):
    from engine.envelope import copy_records

    rng = np.random.default_rng(distinct)
    n = 4000
    lengths = rng.integers(0, distinct, n)
    src = rng.integers(0, 256, int(lengths.sum()) + 100, dtype=np.uint8)
    src_starts = np.concatenate(([0], np.cumsum(lengths)[:-1])) + 50
    perm = rng.permutation(n)
    dst_lengths = lengths[perm]
    dst_starts_sorted = np.concatenate(([0], np.cumsum(dst_lengths + 3)[:-1]))
    dst_starts = np.empty(n, dtype=np.int64)
    dst_starts[perm] = dst_starts_sorted
    dst = np.zeros(int((dst_lengths + 3).sum()), dtype=np.uint8)
    copy_records(src, src_starts, lengths, dst, dst_starts)
    for i in range(0, n, 37):
        a, b, d = int(src_starts[i]), int(lengths[i]), int(dst_starts[i])
        assert dst[d : d + b].tobytes() == src[a : a + b].tobytes()


def test_vectorized_parse_uses_no_per_record_python(monkeypatch):
    """The bulk paths iterate once per distinct length: 20,000 tokens of 3 lengths."""
    calls = []
    import engine.envelope as env

    real = env.b64url_decode_rows
    monkeypatch.setattr(env, "b64url_decode_rows", lambda c: (calls.append(1), real(c))[1])
    cipher = AesGcm(b"q" * 32)
    values = [b"a" * (i % 3) for i in range(20_000)]
    sealed = cipher.seal_batch(Batch.from_list(values), token_header(1))
    texts = sealed_to_text_tokens(sealed, 1)
    assert decode_text_tokens(texts) == pack_tokens(sealed, 1)
    assert len(calls) == 3
