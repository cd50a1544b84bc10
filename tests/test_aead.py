"""AesGcm as a drop-in for cryptography's AESGCM: buffers, tamper detection and bad input."""

from __future__ import annotations

import mmap
import os
import pickle
import threading

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import engine
from engine.aead import MESSAGE_MAX_BYTES

BUFFER_KINDS = {
    "bytes": bytes,
    "bytearray": bytearray,
    "memoryview": memoryview,
    "numpy": lambda b: np.frombuffer(b, dtype=np.uint8).copy(),
    "numpy-uint32": lambda b: np.frombuffer(b + bytes(-len(b) % 4), dtype=np.uint32),
}


@pytest.mark.parametrize("kind", BUFFER_KINDS)
@pytest.mark.parametrize("nonce_size", [8, 12, 16, 60, 128])
def test_every_buffer_kind_matches_cryptography(key, kind, nonce_size):
    conv = BUFFER_KINDS[kind]
    ref = AESGCM(key)
    a = engine.AesGcm(conv(key) if kind != "numpy-uint32" else key)
    for length in (0, 1, 2, 15, 16, 17, 64, 1000, 16383, 16384, 70000):
        nonce, data, aad = os.urandom(nonce_size), os.urandom(length), os.urandom(length % 50)
        if kind == "numpy-uint32":  # multi-byte items: the engine sees their raw bytes
            if nonce_size % 4:
                continue
            data, aad = data + bytes(-len(data) % 4), aad + bytes(-len(aad) % 4)
        expected = ref.encrypt(nonce, data, aad)
        got = a.encrypt(conv(nonce), conv(data), conv(aad))
        assert type(got) is bytes and got == expected
        back = a.decrypt(conv(nonce), conv(expected), conv(aad))
        assert type(back) is bytes and back == data


def test_none_and_empty_associated_data_are_the_same(aead):
    nonce = os.urandom(16)
    assert aead.encrypt(nonce, b"x", None) == aead.encrypt(nonce, b"x", b"")


def test_outputs_are_fresh_objects_and_shared_singletons_stay_intact(aead):
    nonce = os.urandom(12)
    one = aead.encrypt(nonce, b"\x00")
    for pt in (b"", b"\x01", b"ab"):
        assert aead.decrypt(nonce, aead.encrypt(nonce, pt)) == pt
    assert aead.decrypt(nonce, one) == b"\x00"
    assert bytes(1) == b"\x00" and bytes(0) == b"" and bytes([1]) == b"\x01"
    a, b = aead.encrypt(nonce, b"same"), aead.encrypt(nonce, b"same")
    assert a == b and a is not b


def test_every_single_bit_flip_is_rejected(aead):
    nonce, data, aad = os.urandom(16), os.urandom(40), os.urandom(20)
    sealed = aead.encrypt(nonce, data, aad)
    for field, value in (("nonce", nonce), ("sealed", sealed), ("aad", aad)):
        for bit in range(len(value) * 8):
            flipped = bytearray(value)
            flipped[bit // 8] ^= 1 << (bit % 8)
            args = {"nonce": nonce, "sealed": sealed, "aad": aad, field: bytes(flipped)}
            with pytest.raises(engine.InvalidTag):
                aead.decrypt(args["nonce"], args["sealed"], args["aad"])


def test_wrong_key_missing_aad_and_truncation_are_rejected(aead):
    nonce = os.urandom(16)
    sealed = aead.encrypt(nonce, b"secret", b"ctx")
    with pytest.raises(engine.InvalidTag):
        engine.AesGcm(os.urandom(32)).decrypt(nonce, sealed, b"ctx")
    with pytest.raises(engine.InvalidTag):
        aead.decrypt(nonce, sealed, None)
    for cut in range(len(sealed)):
        with pytest.raises(engine.InvalidTag):
            aead.decrypt(nonce, sealed[:cut], b"ctx")


def test_invalid_tag_says_nothing_more(aead):
    with pytest.raises(engine.InvalidTag) as err:
        aead.decrypt(os.urandom(16), os.urandom(40))
    assert str(err.value) == "authentication failed"


@pytest.mark.parametrize("bad_key", [b"", b"k" * 16, b"k" * 24, b"k" * 31, b"k" * 33])
def test_key_must_be_32_bytes_and_is_never_echoed(bad_key):
    with pytest.raises(engine.InvalidArgument) as err:
        engine.AesGcm(bad_key)
    assert isinstance(err.value, ValueError)
    assert "kkkk" not in str(err.value)


@pytest.mark.parametrize("bad", ["a str", 12345, None, 1.5, [1, 2]])
def test_non_buffers_are_type_errors(aead, bad):
    with pytest.raises(engine.InvalidArgumentType):
        engine.AesGcm(bad)
    with pytest.raises(TypeError):
        aead.encrypt(bad, b"data")
    with pytest.raises(TypeError):
        aead.encrypt(os.urandom(16), bad if bad is not None else "x")
    with pytest.raises(TypeError):
        aead.decrypt(os.urandom(16), bad if bad is not None else "x")


@pytest.mark.parametrize("size", [0, 1, 7, 129, 256])
def test_nonce_size_out_of_range(aead, size):
    with pytest.raises(engine.InvalidArgument, match="nonce must be 8 to 128 bytes"):
        aead.encrypt(os.urandom(size), b"data")
    with pytest.raises(engine.InvalidArgument):
        aead.decrypt(os.urandom(size), os.urandom(32))


def test_non_contiguous_arrays_are_refused(aead):
    strided = np.zeros(64, dtype=np.uint8)[::2]
    with pytest.raises(engine.InvalidArgument, match="contiguous"):
        aead.encrypt(os.urandom(16), strided)
    with pytest.raises(engine.InvalidArgument, match="contiguous"):
        aead.encrypt(os.urandom(16), b"x", strided)
    with pytest.raises(engine.InvalidArgument, match="contiguous"):
        engine.AesGcm(np.zeros(64, dtype=np.uint8)[::2])


def test_message_over_gcm_limit_is_refused_before_any_native_call(aead, tmp_path):
    # A sparse file mapped into memory: 2**36 bytes of address space, no memory or disk used.
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.truncate(MESSAGE_MAX_BYTES + 64)
    with open(path, "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
        with pytest.raises(engine.MessageTooLong, match="68719476704"):
            aead.encrypt(os.urandom(16), m)
        with pytest.raises(engine.MessageTooLong):
            aead.decrypt(os.urandom(16), m)
        with pytest.raises(engine.MessageTooLong):
            aead.seal_batch_into(engine.Batch(m, [0, MESSAGE_MAX_BYTES + 1]), m)
        with pytest.raises(engine.MessageTooLong):
            aead.seal_batch(engine.Batch(m, [0, 1, MESSAGE_MAX_BYTES + 2]))


def test_not_picklable_and_repr_hides_the_key(key):
    a = engine.AesGcm(key)
    with pytest.raises(TypeError):
        pickle.dumps(a)
    with pytest.raises(TypeError):
        pickle.dumps(a._key)
    assert key.hex() not in repr(a) and "backend" in repr(a)


def test_generate_key():
    k = engine.AesGcm.generate_key()
    assert len(k) == 32 and k != engine.AesGcm.generate_key()
    with pytest.raises(engine.InvalidArgument):
        engine.AesGcm.generate_key(128)


def test_one_object_shared_by_many_threads(aead, key):
    ref = AESGCM(key)
    errors = []

    def work():
        try:
            for _ in range(300):
                nonce, data = os.urandom(16), os.urandom(int.from_bytes(os.urandom(2), "big") % 5000)
                assert aead.decrypt(nonce, aead.encrypt(nonce, data)) == data
                assert ref.decrypt(nonce, aead.encrypt(nonce, data, b"a"), b"a") == data
            batch = engine.Batch.from_list([os.urandom(i) for i in range(200)])
            assert aead.open_batch(aead.seal_batch(batch, threads=2)) == batch
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_backend_info_and_selection(monkeypatch):
    info = engine.backend_info()
    assert set(info) >= {"backend", "version", "isa", "threads", "available"}
    assert info["backend"] in info["available"] and info["threads"] >= 1
    forced = os.environ.get("ENGINE_BACKEND")
    if forced:
        assert info["backend"] == forced
        assert engine.AesGcm(os.urandom(32)).backend == forced
    for name in info["available"]:
        assert engine.AesGcm(os.urandom(32), backend=name).backend == name
        assert engine.backend_info(name)["isa"] != "none"
    monkeypatch.setenv("ENGINE_BACKEND", "rot13")
    with pytest.raises(engine.InvalidArgument, match="unknown backend"):
        engine.AesGcm(os.urandom(32))


def test_backends_agree(key):
    available = engine.backend_info()["available"]
    nonce, data = os.urandom(16), os.urandom(5000)
    outs = {engine.AesGcm(key, backend=b).encrypt(nonce, data, b"x") for b in available}
    assert len(outs) == 1


def test_random_bytes():
    assert len(engine.random_bytes(33)) == 33 and engine.random_bytes(16) != engine.random_bytes(16)
    with pytest.raises(engine.InvalidArgument):
        engine.random_bytes(-1)


def test_temporaries_and_subclasses_work_like_any_method(key):
    """A drop-in for cryptography's AESGCM is used as a temporary, and subclassed."""
    nonce = os.urandom(12)
    sealed = engine.AesGcm(key).encrypt(nonce, bytearray(b"x"))
    assert engine.AesGcm(key).decrypt(nonce, sealed) == b"x"
    tag_only = engine.AesGcm(key).encrypt(nonce, b"")
    assert engine.AesGcm(key).decrypt(nonce, tag_only) == b""
    assert engine.AesGcm(key).decrypt(nonce, memoryview(tag_only)) == b""

    class Logged(engine.AesGcm):
        __slots__ = ("calls",)

        def encrypt(self, nonce, data, associated_data=None):
            self.calls = getattr(self, "calls", 0) + 1
            return super().encrypt(nonce, data, associated_data)

    logged = Logged(key)
    assert logged.encrypt(nonce, b"y") == engine.AesGcm(key).encrypt(nonce, b"y")
    assert logged.calls == 1
    assert not hasattr(engine.AesGcm(key), "__dict__")
    assert engine.AesGcm.encrypt.__doc__ and "16-byte tag" in engine.AesGcm.encrypt.__doc__


def test_open_tokens_into_a_buffer_checks_its_placements(aead):
    tokens = aead.seal_tokens([b"hello", b"", b"world!"], b"HDR")
    out = bytearray(16)
    with pytest.raises(engine.InvalidArgumentType, match="both or neither"):
        aead.open_tokens(tokens, 3, out=out)
    with pytest.raises(engine.InvalidArgumentType, match="both or neither"):
        aead.open_tokens(tokens, 3, out_starts=[0, 5, 5])
    with pytest.raises(engine.InvalidArgumentType, match="integers"):
        aead.open_tokens(tokens, 3, out=out, out_starts=[0.0, 5.9, 5.9])
    for overlapping in ([0, 5, 3], [3, 9, 0], [0, 0, 2]):
        with pytest.raises(engine.InvalidArgument, match="over each other"):
            aead.open_tokens(tokens, 3, out=out, out_starts=overlapping)
    for outside in ([0, 5, 11], [-1, 5, 5]):
        with pytest.raises(engine.InvalidArgument, match="inside out"):
            aead.open_tokens(tokens, 3, out=out, out_starts=outside)
    # any order, and an empty plaintext anywhere, is fine when nothing overlaps
    assert aead.open_tokens(tokens, 3, out=out, out_starts=np.array([10, 0, 0], np.uint32)) is None
    assert bytes(out[:6]) == b"world!" and bytes(out[10:15]) == b"hello"
