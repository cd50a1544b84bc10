"""C2SP chunked encryption (Cobblestone-256): Wycheproof vectors, a differential test against an
independent implementation on pyca/cryptography, bad input, and the file objects."""

from __future__ import annotations

import hashlib
import io
import os
import threading

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import engine
from engine import hazmat, stream
from engine.stream import _io, _pipeline, cobblestone

import cobblestone_reference as ref
from vectors import wycheproof_chunked

CHUNK = 16384
SEALED = CHUNK + 16
VECTORS = wycheproof_chunked()
needs_vectors = pytest.mark.vectors


def _release_until_error(key, message, context) -> tuple[bytes, Exception | None]:
    """Streams ``message`` in small pieces, as a consumer would, until the end or an error."""
    got = bytearray()
    try:
        reader = stream.Decryptor(key, io.BytesIO(message), context)
        while True:
            part = reader.read(5000)
            if not part:
                return bytes(got), None
            got += part
    except engine.EngineError as exc:
        return bytes(got), exc


# ---------------------------------------------------------------- Wycheproof

@needs_vectors
def test_all_vectors_are_there():
    assert len(VECTORS) == 35


@needs_vectors
@pytest.mark.parametrize("v", [v for v in VECTORS if v.valid], ids=lambda v: v.id)
def test_wycheproof_valid(v):
    plain = stream.decrypt(v.key, v.ciphertext, v.context)
    assert len(plain) == v.msg_length and hashlib.sha512(plain).digest() == v.msg_sha512
    # streaming, random access (whole, and from the end), raw mode
    assert stream.Decryptor(v.key, io.BytesIO(v.ciphertext), v.context).read() == plain
    reader = stream.open_message(v.key, io.BytesIO(v.ciphertext), v.context)
    assert reader.seek(0, io.SEEK_END) == len(plain)
    reader.seek(0)
    assert reader.read() == plain
    raw = hazmat.ChunkCipher(v.aead_key, v.base_nonce)
    assert raw.open(v.ciphertext[56:]) == plain
    # encryption: raw mode is deterministic, and so is the whole message given the salt
    assert raw.seal(plain) == v.ciphertext[56:]
    assert stream.encrypt(v.key, plain, v.context, salt=v.ciphertext[:24]) == v.ciphertext


@needs_vectors
@pytest.mark.parametrize("v", [v for v in VECTORS if not v.valid], ids=lambda v: v.id)
def test_wycheproof_invalid(v):
    expected = engine.InvalidArgument if "InvalidKeySize" in v.flags else stream.MessageInvalid
    with pytest.raises(expected):
        stream.decrypt(v.key, v.ciphertext, v.context)
    if "InvalidKeySize" in v.flags:
        return
    if "HeaderFailure" in v.flags:  # refused before any chunk, by every interface
        with pytest.raises((stream.CommitmentMismatch, stream.TruncatedMessage)):
            stream.Decryptor(v.key, io.BytesIO(v.ciphertext), v.context)
        with pytest.raises((stream.CommitmentMismatch, stream.TruncatedMessage)):
            stream.open_message(v.key, io.BytesIO(v.ciphertext), v.context)
        return
    # streaming: exactly the authenticated prefix, then an error, then errors again
    released, error = _release_until_error(v.key, v.ciphertext, v.context)
    assert isinstance(error, stream.MessageInvalid)
    if "PartialPlaintext" in v.flags:
        assert len(released) == v.msg_length
        assert hashlib.sha512(released).digest() == v.msg_sha512
    else:
        assert released == b""
    reader = stream.Decryptor(v.key, io.BytesIO(v.ciphertext), v.context)
    with pytest.raises(stream.MessageInvalid):
        reader.read()
    for _ in range(3):
        with pytest.raises(stream.MessageInvalid):
            reader.read(1)
    # random access: reading everything fails; authenticating the length fails unless only
    # the final chunk is valid
    with pytest.raises(stream.MessageInvalid):
        stream.open_message(v.key, io.BytesIO(v.ciphertext), v.context).read()
    if "ValidFinalChunk" not in v.flags:
        with pytest.raises(stream.MessageInvalid):
            stream.open_message(v.key, io.BytesIO(v.ciphertext), v.context).seek(-1, io.SEEK_END)
    # raw mode
    with pytest.raises(stream.MessageInvalid):
        hazmat.ChunkCipher(v.aead_key, v.base_nonce).open(v.ciphertext[56:])


# ---------------------------------------------------------------- differential

BOUNDARIES = [0, 1, 15, 16, 17, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK - 1, 2 * CHUNK,
              2 * CHUNK + 1, 3 * CHUNK]


@pytest.fixture
def small_window(monkeypatch):
    """Three chunks per native call, so that short messages cross window boundaries too."""
    monkeypatch.setattr(cobblestone, "WINDOW_CHUNKS", 3)
    monkeypatch.setattr(cobblestone, "RANDOM_ACCESS_CHUNKS", 2)


lengths = st.one_of(st.sampled_from(BOUNDARIES),
                    st.builds(lambda k, d: max(0, k * CHUNK + d), st.integers(0, 8), st.integers(-2, 2)),
                    st.integers(0, 12 * CHUNK))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(length=lengths, key=st.binary(min_size=32, max_size=32), salt=st.binary(min_size=24, max_size=24),
       context=st.binary(max_size=40), seed=st.integers(0, 2**32 - 1))
def test_matches_the_reference(small_window, length, key, salt, context, seed):
    data = __import__("random").Random(seed).randbytes(length)
    ours = stream.encrypt(key, data, context, salt=salt)
    assert ours == ref.seal(key, data, context, salt)
    assert stream.decrypt(key, ours, context) == data
    assert stream.decrypt(key, stream.encrypt(key, data, context), context) == data
    fresh = stream.encrypt(key, data, context)
    assert ref.open_(key, fresh, context) == data and fresh[:24] != salt


@pytest.mark.parametrize("length", [3 * 2**20, 5 * 2**20 + 1, 4 * 2**20 - 7])
def test_several_mib_match_the_reference(length):
    key, salt = os.urandom(32), os.urandom(24)
    data = os.urandom(length)
    ours = stream.encrypt(key, data, b"ctx", salt=salt)
    assert ours == ref.seal(key, data, b"ctx", salt)
    assert ref.open_(key, ours, b"ctx") == data


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(length=lengths, pieces=st.lists(st.integers(1, 3 * CHUNK), min_size=1, max_size=20),
       start=st.integers(0, 12 * CHUNK), size=st.integers(0, 5 * CHUNK))
def test_file_objects(small_window, length, pieces, start, size):
    key, data = os.urandom(32), os.urandom(length)
    out = io.BytesIO()
    with stream.Encryptor(key, out, "ctx") as w:
        pos = 0
        for p in pieces * (1 + length // max(1, sum(pieces))):
            if pos >= length:
                break
            assert w.write(data[pos:pos + p]) == len(data[pos:pos + p])
            pos += p
        w.write(data[pos:])
    message = out.getvalue()
    assert ref.open_(key, message, b"ctx") == data
    reader = stream.Decryptor(key, io.BytesIO(message), "ctx")
    assert b"".join(iter(lambda: reader.read(7777), b"")) == data
    ra = stream.open_message(key, io.BytesIO(message), "ctx")
    ra.seek(start)
    assert ra.read(size) == data[start:start + size]
    assert ra.tell() == min(start + size, max(start, length)) or start > length
    assert ra.seek(-min(size, length), io.SEEK_END) == length - min(size, length)
    assert ra.read() == data[length - min(size, length):]


def test_pipes_with_short_reads_and_writes():
    """A raw pipe (short reads resumed until a window is full) both ways."""
    key, data = os.urandom(32), os.urandom(5 * SEALED + 12345)
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()

    def feed(fd, payload):
        with open(fd, "wb", buffering=0) as f:
            for i in range(0, len(payload), 1000):
                f.write(payload[i:i + 1000])

    t = threading.Thread(target=feed, args=(w1, data))
    t.start()
    sealed = io.BytesIO()
    with open(r1, "rb", buffering=0) as src:
        stream.encrypt_stream(key, src, sealed)
    t.join()
    t = threading.Thread(target=feed, args=(w2, sealed.getvalue()))
    t.start()
    out = io.BytesIO()
    with open(r2, "rb", buffering=0) as src:
        assert stream.decrypt_stream(key, src, out) == len(data)
    t.join()
    assert out.getvalue() == data


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_streams_keep_order_and_release_only_the_authenticated_prefix(small_window, threads):
    """Many windows through the helper threads (or none): the same bytes as the reference, and
    on a bad chunk exactly the chunks before it reach the output."""
    key, salt = os.urandom(32), os.urandom(24)
    data = os.urandom(40 * CHUNK + 999)
    out = io.BytesIO()
    assert stream.encrypt_stream(key, io.BytesIO(data), out, b"c", salt=salt, threads=threads) == len(data)
    message = out.getvalue()
    assert message == ref.seal(key, data, b"c", salt)
    back = io.BytesIO()
    assert stream.decrypt_stream(key, io.BytesIO(message), back, b"c", threads=threads) == len(data)
    assert back.getvalue() == data
    for bad in (0, 7, 17, 40):  # chunk 17 is in the middle of a window of three
        tampered = bytearray(message)
        tampered[56 + bad * SEALED + 5] ^= 1
        back = io.BytesIO()
        with pytest.raises(stream.ChunkInvalid) as info:
            stream.decrypt_stream(key, io.BytesIO(bytes(tampered)), back, b"c", threads=threads)
        assert info.value.index == bad and back.getvalue() == data[:bad * CHUNK]
    back = io.BytesIO()
    with pytest.raises(stream.TruncatedMessage):
        stream.decrypt_stream(key, io.BytesIO(message[:56 + 20 * SEALED]), back, b"c", threads=threads)
    assert back.getvalue() == data[:20 * CHUNK]


class _FailingSource(io.RawIOBase):
    """Gives ``good`` bytes, then raises ``error`` from every read."""

    def __init__(self, good: int, error: BaseException) -> None:
        self.left, self.error = good, error

    def readable(self):
        return True

    def readinto(self, b):
        if not self.left:
            raise self.error
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


@pytest.mark.parametrize("error", [OSError(5, "Input/output error"), KeyboardInterrupt()])
def test_an_interrupted_stream_stops_its_helper_threads(small_window, error):
    before = threading.active_count()
    out = io.BytesIO()
    with pytest.raises(type(error)):
        stream.encrypt_stream(os.urandom(32), _FailingSource(10 * CHUNK, error), out, threads=3)
    assert threading.active_count() == before
    # what was written is whole chunks of a message that does not end: never a valid message
    assert (len(out.getvalue()) - 56) % SEALED == 0


def test_a_failing_native_call_is_raised_on_the_calling_thread(small_window, monkeypatch):
    before = threading.active_count()
    calls = []

    def refuse(self, base_nonce, first, *args, **kwargs):
        calls.append(threading.current_thread().name)
        if first == 9:  # the fourth window of three chunks
            raise engine.NativeError("the native library failed")
        return real(self, base_nonce, first, *args, **kwargs)

    real = engine.AesGcm.seal_chunks_into
    monkeypatch.setattr(engine.AesGcm, "seal_chunks_into", refuse)
    out = io.BytesIO()
    with pytest.raises(engine.NativeError):
        stream.encrypt_stream(os.urandom(32), io.BytesIO(bytes(20 * CHUNK)), out, threads=2)
    assert threading.active_count() == before
    assert set(calls) == {"engine-stream"}  # the work ran on the helpers, the error came back
    assert len(out.getvalue()) == 56 + 9 * SEALED  # the three windows before it, nothing after


# ---------------------------------------------------------------- bad input

def _chunks(message: bytes) -> list[bytes]:
    body = message[56:]
    return [body[i:i + SEALED] for i in range(0, len(body), SEALED)]


@pytest.fixture(scope="module")
def sample():
    key, data = os.urandom(32), os.urandom(4 * CHUNK + 100)
    return key, data, stream.encrypt(key, data, b"ctx")


def test_truncation_anywhere_is_refused(sample):
    key, data, message = sample
    cuts = {0, 1, 23, 24, 55, 56, 57, 71, 72, len(message) - 1, len(message) - 16,
            len(message) - 17} | {56 + k * SEALED + d for k in range(1, 5) for d in (-1, 0, 1, 16)}
    for cut in sorted(c for c in cuts if 0 <= c < len(message)):
        with pytest.raises(stream.MessageInvalid):
            stream.decrypt(key, message[:cut], b"ctx")
        released, error = _release_until_error(key, message[:cut], b"ctx")
        assert isinstance(error, stream.MessageInvalid) and data.startswith(released)
        assert len(released) % CHUNK == 0 and len(released) <= max(0, cut - 56) // SEALED * CHUNK


def test_reordered_duplicated_flipped_trailing(sample):
    key, data, message = sample
    header, chunks = message[:56], _chunks(message)
    bad = {
        "swapped": header + b"".join([chunks[1], chunks[0], *chunks[2:]]),
        "duplicated": header + b"".join([chunks[0], chunks[0], *chunks[2:]]),
        "dropped": header + b"".join([chunks[0], *chunks[2:]]),
        "trailing byte": message + b"\x00",
        "trailing chunk": message + chunks[-1],
        "final chunk moved": header + b"".join([*chunks[:-2], chunks[-1]]),
    }
    for pos in (0, 23, 24, 55, 56, 56 + CHUNK, 56 + SEALED - 1, len(message) - 1):
        flipped = bytearray(message)
        flipped[pos] ^= 0x80
        bad[f"flip {pos}"] = bytes(flipped)
    for name, m in bad.items():
        with pytest.raises(stream.MessageInvalid):
            stream.decrypt(key, m, b"ctx")
        released, error = _release_until_error(key, m, b"ctx")
        assert isinstance(error, stream.MessageInvalid) and data.startswith(released), name


def test_wrong_key_or_context_fails_the_commitment(sample):
    key, _, message = sample
    with pytest.raises(stream.CommitmentMismatch) as info:
        stream.decrypt(os.urandom(32), message, b"ctx")
    assert str(info.value) == "wrong key or context (the key commitment does not match)"
    with pytest.raises(stream.CommitmentMismatch):
        stream.decrypt(key, message, b"ctx2")
    with pytest.raises(engine.InvalidTag):
        stream.decrypt(key, message, "")


def test_arguments():
    with pytest.raises(engine.InvalidArgument):
        stream.encrypt(b"short", b"x")
    with pytest.raises(engine.InvalidArgumentType):
        stream.encrypt("a str key is not a key", b"x")
    with pytest.raises(engine.InvalidArgumentType):
        stream.encrypt(bytes(32), b"x", context=3)
    with pytest.raises(engine.InvalidArgument):
        stream.encrypt(bytes(32), b"x", salt=b"too short")
    with pytest.raises(engine.InvalidArgument):
        hazmat.ChunkCipher(bytes(32), bytes(11))
    with pytest.raises(engine.InvalidArgumentType):
        stream.decrypt_stream(bytes(32), object(), io.BytesIO())
    with pytest.raises(TypeError):
        __import__("pickle").dumps(hazmat.ChunkCipher(bytes(32), bytes(12)))
    err = stream.ChunkInvalid(3)
    assert __import__("pickle").loads(__import__("pickle").dumps(err)).index == 3
    assert isinstance(err, engine.InvalidTag) and "3" in str(err)


def test_an_aborted_writer_leaves_a_truncated_message():
    key, out = os.urandom(32), io.BytesIO()
    with pytest.raises(RuntimeError):
        with stream.Encryptor(key, out) as w:
            w.write(b"x" * 100)
            raise RuntimeError("the producer failed")
    with pytest.raises(stream.TruncatedMessage):
        stream.decrypt(key, out.getvalue())
    out = io.BytesIO()
    w = stream.Encryptor(key, out)
    w.write(b"y" * 10)
    del w
    with pytest.raises(stream.TruncatedMessage):
        stream.decrypt(key, out.getvalue())


@pytest.mark.measures_memory
def test_a_4_gib_stream_stays_in_bounded_memory():
    """Peak RSS of a 4 GiB streaming encrypt, above the interpreter's baseline with the engine
    imported (in a fresh process): under 64 MiB."""
    from bench.bench_files import memory_case

    result = memory_case(4 << 30)
    assert result["above baseline MiB"] < 64, result


# ---------------------------------------------------------------- plaintext wiped

class _Recorded(_io.Window):
    """A window that remembers itself and, at each wipe, whether a chunk after its first held
    anything (so that a wipe of the first chunk only would be seen)."""

    __slots__ = ()
    made: list = []
    beyond_first: list = []

    def __init__(self, chunks: int) -> None:
        super().__init__(chunks)
        _Recorded.made.append(self)

    def wipe(self) -> None:
        _Recorded.beyond_first.append(bool(self._plain[CHUNK:].any()))
        super().wipe()


@pytest.fixture
def recorded_windows(monkeypatch):
    monkeypatch.setattr(_pipeline, "Window", _Recorded)
    monkeypatch.setattr(cobblestone, "Window", _Recorded)
    monkeypatch.setattr(cobblestone, "WINDOW_CHUNKS", 4)
    monkeypatch.setattr(cobblestone, "RANDOM_ACCESS_CHUNKS", 4)
    _Recorded.made, _Recorded.beyond_first = [], []
    yield _Recorded
    assert _Recorded.made, "no window was used"
    dirty = [i for i, w in enumerate(_Recorded.made) if w._plain.any()]
    assert not dirty, f"windows {dirty} of {len(_Recorded.made)} still hold plaintext"
    assert any(_Recorded.beyond_first), "no window held plaintext beyond its first chunk"


class _FailingSink(io.RawIOBase):
    def __init__(self, after: int, error: BaseException) -> None:
        self.after, self.error, self.writes = after, error, 0

    def writable(self) -> bool:
        return True

    def write(self, b):
        self.writes += 1
        if self.writes > self.after:
            raise self.error
        return len(b)


PLAIN = bytes(range(1, 256)) * (11 * CHUNK // 255)  # no zero byte: any leftover shows


@pytest.mark.parametrize("threads", [1, 2])
def test_stream_windows_are_wiped_whole(recorded_windows, threads):
    key = os.urandom(32)
    sealed = io.BytesIO()
    stream.encrypt_stream(key, io.BytesIO(PLAIN), sealed, threads=threads)
    out = io.BytesIO()
    stream.decrypt_stream(key, io.BytesIO(sealed.getvalue()), out, threads=threads)
    assert out.getvalue() == PLAIN


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_stream_windows_are_wiped_whole_when_the_output_fails(recorded_windows, threads, error):
    key = os.urandom(32)
    message = stream.encrypt(key, PLAIN)
    with pytest.raises(type(error)):
        stream.decrypt_stream(key, io.BytesIO(message), _FailingSink(2, error), threads=threads)
    with pytest.raises(type(error)):
        stream.encrypt_stream(key, io.BytesIO(PLAIN), _FailingSink(3, error), threads=threads)


@pytest.mark.parametrize("threads", [1, 2])
def test_stream_windows_are_wiped_whole_after_a_bad_chunk(recorded_windows, threads):
    key = os.urandom(32)
    message = bytearray(stream.encrypt(key, PLAIN))
    message[56 + 9 * (CHUNK + 16) + 5] ^= 1  # chunk 9: windows 0 and 1 authenticate
    out = io.BytesIO()
    with pytest.raises(stream.ChunkInvalid):
        stream.decrypt_stream(key, io.BytesIO(bytes(message)), out, threads=threads)
    assert out.getvalue() == PLAIN[:9 * CHUNK]


def test_file_objects_wipe_their_window_whole(recorded_windows):
    key = os.urandom(32)
    sealed = io.BytesIO()
    with stream.Encryptor(key, sealed) as w:
        w.write(PLAIN[:3 * CHUNK + 100])  # stays in the window until close
    with stream.Decryptor(key, io.BytesIO(sealed.getvalue())) as r:
        assert r.read(CHUNK + 1) == PLAIN[:CHUNK + 1]
    reader = stream.open_message(key, io.BytesIO(sealed.getvalue()))
    assert reader.read() == PLAIN[:3 * CHUNK + 100]
    reader.close()
    aborted = stream.Encryptor(key, io.BytesIO())
    aborted.write(PLAIN[:2 * CHUNK + 5])
    aborted.abort()


def test_random_access_positions_are_integers():
    key = os.urandom(32)
    reader = stream.open_message(key, io.BytesIO(stream.encrypt(key, PLAIN[:50_000])))
    for bad in (1.5, "10", None, 2.0):
        with pytest.raises(engine.InvalidArgumentType, match="integer"):
            reader.seek(bad)
        with pytest.raises(engine.InvalidArgumentType, match="integer"):
            reader.seek(0, bad)
    assert reader.tell() == 0
    assert reader.seek(__import__("numpy").int64(100)) == 100 and reader.read(5) == PLAIN[100:105]
    assert reader.seek(-5, io.SEEK_END) == 49_995 and reader.read() == PLAIN[49_995:50_000]
    with pytest.raises(engine.InvalidArgument):
        reader.seek(0, 7)
