"""The package is typed for its users: py.typed is there, and the public calls' types are real."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import engine

USER_CODE = textwrap.dedent("""
    import engine
    from engine import hazmat

    svc = engine.get_encryption_service()
    reveal_type(svc.encrypt_many([b"x"]))
    reveal_type(svc.encrypt_many([b"x"], binary=True))
    reveal_type(svc.decrypt_many(["t"]))
    reveal_type(engine.AesGcm(bytes(32)).seal_batch([b"x"]))
    reveal_type(hazmat.open_batch_with_keys)
    svc.encrypt_many([b"x"]).append(3)   # a list of str: an int does not go in
""")


def test_py_typed_ships_with_the_package():
    assert (Path(engine.__file__).parent / "py.typed").is_file()


def test_a_user_of_the_public_api_gets_real_types(tmp_path):
    (tmp_path / "user.py").write_text(USER_CODE)
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir",
         str(tmp_path / "cache"), "--follow-imports=silent", str(tmp_path / "user.py")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = run.stdout
    assert "missing library stubs" not in out and "py.typed" not in out
    revealed = [line.split("Revealed type is ", 1)[1] for line in out.splitlines()
                if "Revealed type is" in line]
    short = [r.replace("builtins.", "").replace("engine.batch.", "") for r in revealed]
    assert short[:4] == ['"list[str]"', '"Batch"', '"Batch"', '"SealedBatch"'], out
    assert "Any" not in revealed[4].split("->")[1]
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 1 and "append" in errors[0] and '"int"' in errors[0], out
