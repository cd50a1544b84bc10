"""Ciphertext envelopes: the JSON envelope, tokens, strict parsing, bulk packing."""

from __future__ import annotations

import base64
from datetime import datetime, timezone

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from engine import AesGcm, Batch, SealedBatch
from engine.codecs import (
    B64_CHARACTER,
    B64_LENGTH,
    B64_NONCANONICAL,
    B64_PREFIX,
    b64url_decode,
    b64url_encode,
    prefix_each,
)
from engine.formats.envelope import EncryptedData, is_text_token
from engine.formats.tokens import (
    as_binary_tokens,
    decode_text_tokens,
    encode_text_tokens,
    pack_tokens,
    parse_headers,
    parse_tokens,
    sealed_to_text_tokens,
    text_token_mask,
)
from engine.formats.wire import (
    EnvelopeError,
    InvalidBase64,
    InvalidLength,
    MalformedEnvelope,
    UnknownFormat,
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


def test_json_envelope_matches_the_typescript_shape():
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


def test_header_bound_value_has_no_json_envelope():
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


# ---------------------------------------------------------------- native base64url


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=40), st.sampled_from([b"", b"ef1:"]),
       st.integers(1, 3))
def test_native_base64url_matches_stdlib(values, prefix, threads):
    batch = Batch.from_list(values)
    texts = [prefix + base64.urlsafe_b64encode(v).rstrip(b"=") for v in values]
    assert b64url_encode(batch, prefix=prefix, threads=threads).to_list() == texts
    decoded, status = b64url_decode(Batch.from_list(texts), prefix=prefix, threads=threads)
    assert not status.any() and decoded.to_list() == values


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                    "0123456789-_+/=!", max_size=11), min_size=1, max_size=20))
def test_native_decode_agrees_with_stdlib_on_validity(strings):
    decoded, status = b64url_decode(Batch.from_list(strings))
    for i, s in enumerate(strings):
        if any(c in "+/=!" for c in s):
            expected = B64_LENGTH if len(s) % 4 == 1 else B64_CHARACTER
            assert status[i] == expected and not any(decoded[i].tobytes())
        elif len(s) % 4 == 1:
            assert status[i] == B64_LENGTH
        else:
            raw = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
            canonical = base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == s
            assert status[i] == (0 if canonical else B64_NONCANONICAL)
            if canonical:
                assert decoded[i].tobytes() == raw
    _, status = b64url_decode(Batch.from_list(["xx", "ef1:AA", "ef"]), prefix=b"ef1:")
    assert status.tolist() == [B64_PREFIX, 0, B64_PREFIX]


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
    for i in range(len(values)):
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
        parse_tokens(Batch.from_list([b"\xef\x09" + b"\x00" * 40]))
    assert text_token_mask(Batch.from_list([good, "ef1:zz", "x", good])).tolist() == [
        True, False, False, True]
    mixed = Batch.from_list(["", "ef", "ef1:", "Ef1:" + good[4:], "x" + good, good, good + "=",
                             "ef2:" + good[4:], good])
    assert text_token_mask(mixed).tolist() == [False] * 5 + [True, False, False, True]
    assert text_token_mask(mixed.take([5, 0, 8])).tolist() == [True, False, True]
    assert text_token_mask(Batch.from_list([])).tolist() == []


def test_many_lengths_and_large_groups():
    rng = np.random.default_rng(5)
    values = [bytes(rng.integers(0, 256, int(n), dtype=np.uint8))
              for n in rng.integers(0, 300, 3000)]
    cipher = AesGcm(b"z" * 32)
    sealed = cipher.seal_batch(Batch.from_list(values), token_header(9))
    texts = sealed_to_text_tokens(sealed, 9)
    assert texts == [EncryptedData.from_token(t).to_token() for t in texts]
    assert decode_text_tokens(texts) == pack_tokens(sealed, 9)


def test_prefix_each_take_and_slices():
    b = Batch.from_list([b"a", b"", b"ccc"])
    assert prefix_each(b"P:", b).to_list() == [b"P:a", b"P:", b"P:ccc"]
    assert b.take(np.array([2, 0, 2])).to_list() == [b"ccc", b"a", b"ccc"]
    sliced = Batch(b.data, b.offsets[1:])
    assert prefix_each(b"#", sliced).to_list() == [b"#", b"#ccc"]
    assert b.slices([0, 1], [2, 3]).to_list() == [b"ac", b"ccc"]
    with pytest.raises(ValueError):
        b.slices([2], [5])


def test_bulk_paths_make_one_native_call_per_batch(monkeypatch):
    """20,000 tokens: one native base64 pass each way, whatever the lengths."""
    import engine._native as native

    calls = {"encode": 0, "decode": 0}
    real_encode, real_decode = native.b64url_encode, native.b64url_decode

    def encode(*a):
        calls["encode"] += 1
        return real_encode(*a)

    def decode(*a):
        calls["decode"] += 1
        return real_decode(*a)

    monkeypatch.setattr(native, "b64url_encode", encode)
    monkeypatch.setattr(native, "b64url_decode", decode)
    cipher = AesGcm(b"q" * 32)
    values = [b"a" * (i % 37) for i in range(20_000)]
    tokens = cipher.seal_tokens(Batch.from_list(values), token_header(1))
    texts = encode_text_tokens(tokens)
    assert decode_text_tokens(texts) == tokens
    assert calls == {"encode": 1, "decode": 1}
    assert (parse_headers(tokens).key_versions == 1).all()


def test_text_tokens_as_a_batch_and_an_arrow_column():
    import pyarrow as pa

    from engine.formats.tokens import text_tokens_batch

    cipher = AesGcm(b"t" * 32)
    tokens = cipher.seal_tokens(Batch.from_list([b"x" * i for i in range(40)]), token_header(2))
    texts = encode_text_tokens(tokens)
    batch = text_tokens_batch(tokens)
    assert [bytes(t).decode() for t in batch] == texts
    column = batch.to_arrow(text=True)
    assert column.type == pa.large_string() and column.to_pylist() == texts
    with pytest.raises(ValueError, match="UTF-8"):
        Batch.from_list([b"\xff\xfe"]).to_arrow(text=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 2, 3, 4]), st.sampled_from([1, 7, 2**24, 2**32 - 1])),
                max_size=30))
def test_token_headers_group_every_token_once_by_version_then_format(headers):
    """The service opens tokens one (key version, format) group at a time: every token falls
    in exactly the group of its header, and versions up to 2**32 - 1 never collide."""
    from engine.formats.tokens import TokenHeaders

    formats = np.array([f for f, _ in headers], dtype=np.uint8)
    versions = np.array([v for _, v in headers], dtype=np.int64)
    groups = TokenHeaders(formats, versions).groups()
    assert [(v, f) for v, f, _ in groups] == sorted({(v, f) for f, v in headers})
    seen = []
    for version, fmt, where in groups:
        members = np.arange(len(headers)) if where is None else where
        assert where is not None or len(groups) == 1
        assert all(headers[i] == (fmt, version) for i in members.tolist())
        seen += members.tolist()
    assert sorted(seen) == list(range(len(headers)))
