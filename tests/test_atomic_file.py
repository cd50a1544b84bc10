"""engine.atomic_file (every file the engine replaces) and engine.settings (environment values)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from engine.atomic_file import Temporary, remove_unlocked, replace_symlink, write_atomically
from engine.errors import InvalidArgument
from engine.settings import env_number


def test_write_atomically_replaces_with_mode_and_leaves_nothing(tmp_path):
    target = tmp_path / "f.json"
    target.write_bytes(b"old")
    write_atomically(target, b"new" * 1000)
    assert target.read_bytes() == b"new" * 1000
    assert target.stat().st_mode & 0o777 == 0o600
    write_atomically(target, b"cert", mode=0o644)
    assert target.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_write_atomically_fsyncs_file_then_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.path.isdir(
        os.readlink(f"/proc/self/fd/{fd}"))), real(fd)))
    write_atomically(tmp_path / "f", b"x")
    assert synced == [False, True]


def test_failed_rename_keeps_old_file_and_removes_temporary(tmp_path, monkeypatch):
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def crash(*_args):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        write_atomically(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_directory_target_is_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="is a directory"):
        write_atomically(tmp_path, b"x")


def test_a_locked_temporary_survives_the_cleaner_and_a_dead_ones_does_not(tmp_path):
    with Temporary(tmp_path / "f", suffix=".tmp", lock=True) as tmp:
        tmp.write(b"half")
        named = tmp.named or tmp.target
        if tmp.named is None:  # unnamed (O_TMPFILE): give it a name the cleaner can see
            from engine.atomic_file import name_temporary
            tmp.named = name_temporary(tmp.fd, tmp.directory, "f", ".tmp")
            named = tmp.named
        remove_unlocked(named)
        assert os.path.exists(named)  # this process holds its lock
        # a process that dies holding the lock of another temporary leaves it to the cleaner
        dead = tmp_path / ".g.dead.tmp"
        subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            import fcntl, os
            fd = os.open({str(dead)!r}, os.O_CREAT | os.O_WRONLY, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
        """)], check=True, timeout=60)
        remove_unlocked(str(dead))
        assert not dead.exists()
    assert not os.path.exists(named)


def test_replace_symlink_switches_in_one_step(tmp_path):
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    replace_symlink("a", tmp_path / "link")
    assert (tmp_path / "link").read_text() == "a"
    replace_symlink("b", tmp_path / "link")
    assert (tmp_path / "link").read_text() == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "link"]


@pytest.mark.parametrize("raw, kind, expected", [
    (None, int, 7), ("", int, 7), ("  ", float, 7), (" 12 ", int, 12), ("2.5", float, 2.5),
    ("1e3", float, 1000.0),
])
def test_env_number_reads_or_defaults(raw, kind, expected):
    env = {} if raw is None else {"N": raw}
    assert env_number(env, "N", kind, 7) == expected


@pytest.mark.parametrize("raw, kind, what", [("x", int, "an integer"), ("2.5", int, "an integer"),
                                             ("abc", float, "a number")])
def test_env_number_refuses_naming_the_variable_not_the_value(raw, kind, what):
    class Custom(InvalidArgument):
        pass

    with pytest.raises(Custom) as info:
        env_number({"SOME_VAR": raw}, "SOME_VAR", kind, error=Custom)
    assert str(info.value) == f"SOME_VAR must be {what}"


def test_every_environment_number_goes_through_settings():
    from engine.keys import DerivationPolicy
    from engine.rotation import RotationPolicy
    from engine.vault.errors import VaultConfigurationError
    from engine.vault.options import environment_settings

    with pytest.raises(InvalidArgument, match="ENCRYPTION_KDF_ITERATIONS must be an integer"):
        DerivationPolicy.from_environment({"ENCRYPTION_KDF_ITERATIONS": "many"})
    with pytest.raises(InvalidArgument, match="KEY_RETENTION_VERSIONS must be an integer"):
        RotationPolicy.from_environment({"KEY_RETENTION_VERSIONS": "5.5"})
    with pytest.raises(VaultConfigurationError, match="VAULT_TIMEOUT must be a number"):
        environment_settings({"VAULT_TIMEOUT": "soon"})
    assert environment_settings({"VAULT_RETRIES": "4"})["retries"] == 4
