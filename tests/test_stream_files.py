"""Engine files: Cobblestone-256 under the service's versioned keys, across rotation."""

from __future__ import annotations

import io
import os

import pytest

import engine
from engine import EncryptionService, EnvironmentKeyProvider, StaticKeyProvider, stream
from engine.keys import DerivationPolicy
from engine.stream import FileEncryption, file_header, read_file_header

import cobblestone_reference as ref

MASTER = "test-master-key-of-at-least-32-bytes!!"


@pytest.fixture(params=["static", "environment"])
def provider(request, tmp_path):
    if request.param == "static":
        return StaticKeyProvider({1: os.urandom(32)})
    return EnvironmentKeyProvider(master_key=MASTER, state_path=tmp_path / "keys.json",
                                  policy=DerivationPolicy(iterations=1000))


@pytest.fixture
def files(provider):
    return FileEncryption(EncryptionService(provider, metrics=False))


def test_layout_is_a_header_then_a_standard_message():
    raw = os.urandom(32)
    files = FileEncryption(EncryptionService(StaticKeyProvider({7: raw}), metrics=False))
    data = os.urandom(40000)
    blob = files.encrypt(data, "users.csv")
    header = blob[:9]
    assert header == file_header(7) == b"EFCB\x01\x00\x00\x00\x07" and read_file_header(header) == 7
    # the rest is a plain Cobblestone-256 message under the version's key, context bound
    assert ref.open_(raw, blob[9:], header + b"users.csv") == data
    assert stream.decrypt(raw, blob[9:], header + b"users.csv") == data
    assert files.decrypt(blob, "users.csv") == data


def test_rotation_retained_and_purged_versions(files, provider):
    old = files.encrypt(b"written under version 1")
    provider.create_version()
    new = files.encrypt(b"written under version 2")
    assert read_file_header(old) == 1 and read_file_header(new) == 2
    assert files.decrypt(old) == b"written under version 1"
    assert files.decrypt(new) == b"written under version 2"
    provider.create_version()
    provider.purge(1)
    with pytest.raises(engine.UnknownKeyVersion) as info:
        files.decrypt(old)
    assert "1" in str(info.value)
    assert files.decrypt(new) == b"written under version 2"


def test_edited_headers_and_other_input(files):
    blob = files.encrypt(b"payload", "ctx")
    with pytest.raises(stream.CommitmentMismatch):
        files.decrypt(blob, "other ctx")
    with pytest.raises(engine.UnknownKeyVersion):
        files.decrypt(blob[:5] + (99).to_bytes(4, "big") + blob[9:], "ctx")
    for bad in (b"", b"EFC", b"PK\x03\x04" + blob[4:], blob[:4] + b"\x02" + blob[5:],
                blob[:5] + bytes(4) + blob[9:]):
        with pytest.raises(stream.NotAnEngineFile):
            files.decrypt(bad, "ctx")
    with pytest.raises(stream.ChunkInvalid):  # the final chunk, one byte short
        files.decrypt(blob[:-1], "ctx")
    with pytest.raises(stream.TruncatedMessage):
        files.decrypt(blob[:9 + 56], "ctx")


def test_streams_and_random_access(files, tmp_path):
    data = os.urandom(3 * 16384 + 77)
    path = tmp_path / "data.enc"
    with open(path, "wb") as f, files.writer(f, "ctx") as w:
        w.write(data[:1000])
        w.write(data[1000:])
    with open(path, "rb") as f:
        assert files.reader(f, "ctx").read() == data
    with files.open(path, "ctx") as r:
        r.seek(-77, io.SEEK_END)
        assert r.read() == data[-77:]
        r.seek(16380)
        assert r.read(10) == data[16380:16390]
    out = io.BytesIO()
    with open(path, "rb", buffering=0) as f:
        result = files.decrypt_stream(f, out, "ctx")
    assert out.getvalue() == data and result.plaintext_bytes == len(data)


def test_a_decrypt_only_current_key_cannot_encrypt():
    provider = StaticKeyProvider({1: os.urandom(32)})
    files = FileEncryption(EncryptionService(provider, metrics=False))
    blob = files.encrypt(b"x")
    provider.set_state(1, engine.KeyState.DECRYPT_ONLY)
    with pytest.raises(engine.KeyVersionNotUsable):
        files.encrypt(b"x")
    assert files.decrypt(blob) == b"x"


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with stream.atomic_output(str(target)) as f:
            f.write(b"half")
            raise RuntimeError("failed midway")
    assert list(tmp_path.iterdir()) == []
    with stream.atomic_output(str(target)) as f:
        f.write(b"whole")
    assert target.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [target]
    assert (target.stat().st_mode & 0o777) == 0o600


def test_before_commit_runs_once_the_file_is_whole_and_can_cancel_the_rename(tmp_path, files):
    """The command line's Ctrl-C gate: what before_commit raises (a KeyboardInterrupt handled
    on its entry) keeps the previous file and leaves no temporary."""
    target = tmp_path / "out.bin"
    target.write_bytes(b"previous")
    (tmp_path / "in.bin").write_bytes(b"x" * 100_000)
    seen = []

    def interrupted():
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        raise KeyboardInterrupt

    for run in (files.encrypt_file, files.decrypt_file):
        source = tmp_path / ("in.bin" if run == files.encrypt_file else "enc.bin")
        if run == files.decrypt_file:
            files.encrypt_file(str(tmp_path / "in.bin"), str(source))
        with pytest.raises(KeyboardInterrupt):
            run(str(source), str(target), before_commit=interrupted)
        assert target.read_bytes() == b"previous"
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert seen and all("out.bin" in names for names in seen)
    calls = []
    files.encrypt_file(str(tmp_path / "in.bin"), str(target), before_commit=lambda: calls.append(
        target.read_bytes()))
    assert calls == [b"previous"] and files.decrypt(target.read_bytes()) == b"x" * 100_000
