"""What ``import engine`` costs: no numpy, pyarrow or pandas until a call needs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import engine

HEAVY = ("numpy", "pyarrow", "pandas", "polars", "dask", "hvac", "psycopg", "cryptography")


def loaded_after(code: str, **env: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after running ``code``."""
    script = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
    """)
    # Only what runs the interpreter as the suite's own runs it (a preloaded sanitizer runtime,
    # the backend): nothing that imports anything.
    kept = {k: v for k, v in os.environ.items()
            if k in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "ENGINE_BACKEND",
                     "PYCRYPTODOME_DISABLE_DEEPBIND")}
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                         text=True, timeout=120, env={"PATH": "/usr/bin:/bin", **kept, **env}).stdout
    return json.loads(out.splitlines()[-1])


def test_import_engine_loads_nothing_heavy():
    assert loaded_after("import engine") == []


def test_the_service_on_bytes_loads_numpy_only(tmp_path):
    assert loaded_after("""
        import engine
        svc = engine.get_encryption_service()
        tokens = svc.encrypt_many([b"x" * 100] * 1000)
        assert svc.decrypt_many(tokens)[999] == b"x" * 100
        assert svc.decrypt_text(svc.encrypt("y").to_json()) == "y"
        aead = engine.AesGcm(engine.AesGcm.generate_key())
        aead.open_batch(aead.seal_batch([b"z" * (1 << 20)] * 8))   # large: pooled when loaded
    """, ENCRYPTION_MASTER_KEY="test-master-key-of-at-least-32-bytes-long!",
        ENGINE_KEY_STATE_FILE=str(tmp_path / "keys.json")) == ["numpy"]


def test_arrow_data_loads_only_what_pyarrow_itself_loads():
    arrow_alone = loaded_after("import pyarrow as pa; pa.array([b'a', b'b'])")  # pandas, if there
    assert loaded_after("""
        import engine, pyarrow as pa
        aead = engine.AesGcm(engine.AesGcm.generate_key())
        aead.seal_batch(pa.array([b"a", b"b"]))
    """) == sorted({"numpy", *arrow_alone})


def test_every_exported_name_and_submodule_resolves():
    for name in engine.__all__:
        assert getattr(engine, name).__name__ == name
    assert sorted(engine.__all__) == engine.__all__ and set(engine.__all__) <= set(dir(engine))
    assert engine.stream.encrypt is not None and engine.hazmat.ChunkCipher is not None
    try:
        engine.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("a missing name resolved")
