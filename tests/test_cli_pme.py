"""The command line's Parquet Modular Encryption: `encrypt-columns --pme`, `decrypt-columns
--pme`, their JSON reports and exit codes (README's table)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.columns.pme import pme_key_info


def run(*args, env):
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


@pytest.fixture
def key_env(tmp_path):
    return {"ENCRYPTION_MASTER_KEY": "cli-test-master-key-0123456789-abcdef",
            "ENGINE_KEY_STATE_FILE": str(tmp_path / "keys.json"),
            "ENCRYPTION_KDF_ITERATIONS": "1000", "VAULT_ENABLED": "false"}


@pytest.fixture
def plain(tmp_path):
    n = 5000
    table = pa.table({"id": np.arange(n), "email": [f"u{i}@example.com" for i in range(n)],
                      "address": [{"city": f"c{i % 7}", "zip": i} for i in range(n)]})
    path = tmp_path / "plain.parquet"
    pq.write_table(table, path, compression="zstd", row_group_size=2000)
    return path, table


def test_every_column_round_trips_through_the_command_line(tmp_path, key_env, plain):
    path, table = plain
    enc, dec = tmp_path / "enc.parquet", tmp_path / "dec.parquet"
    r = run("encrypt-columns", path, enc, "--pme", "--json", env=key_env)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["rows"] == 5000 and report["row_groups"] == 3 and report["key_version"] == 1
    assert report["columns"] is None and report["bytes_out"] == os.path.getsize(enc)
    info = pme_key_info(enc)
    assert info.encrypted_footer and info.versions == {1}
    with pytest.raises(OSError):
        pq.read_table(enc)
    r = run("decrypt-columns", enc, dec, "--pme", "--json", env=key_env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["operation"] == "decrypt-pme"
    assert pq.read_table(dec).equals(table)
    meta = pq.ParquetFile(dec).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD" and meta.num_row_groups == 3


def test_chosen_columns_with_a_plaintext_footer(tmp_path, key_env, plain):
    path, table = plain
    enc = tmp_path / "enc.parquet"
    r = run("encrypt-columns", path, enc, "--pme", "--column", "email", "--column", "address",
            "--plaintext-footer", env=key_env)
    assert r.returncode == 0, r.stderr
    assert "rows 5000" in r.stdout
    info = pme_key_info(enc)
    assert not info.encrypted_footer
    assert set(info.columns) == {"email", "address.city", "address.zip"}
    assert pq.read_table(enc, columns=["id"]).equals(table.select(["id"]))  # no key needed
    with pytest.raises(OSError):
        pq.read_table(enc, columns=["email"])
    r = run("decrypt-columns", enc, tmp_path / "dec.parquet", "--pme", env=key_env)
    assert r.returncode == 0, r.stderr
    assert pq.read_table(tmp_path / "dec.parquet").equals(table)


def test_refusals_and_their_exit_codes(tmp_path, key_env, plain):
    path, _ = plain
    enc, out = tmp_path / "enc.parquet", tmp_path / "out.parquet"
    assert run("encrypt-columns", path, enc, "--pme", env=key_env).returncode == 0
    usage = [("encrypt-columns", path, out, "--pme", "--column", "nope"),
             ("encrypt-columns", path, out, "--pme", "--plaintext-footer"),
             ("encrypt-columns", path, out, "--plaintext-footer", "--column", "email"),
             ("encrypt-columns", path, out),
             ("encrypt-columns", path, out, "--pme", "--aad-template", "x:{id}"),
             ("decrypt-columns", enc, out, "--pme", "--column", "email"),
             ("encrypt-columns", tmp_path, out, "--pme")]
    for args in usage:
        r = run(*args, env=key_env)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.strip()
    (tmp_path / "text.parquet").write_text("not parquet at all")
    tampered = tmp_path / "tampered.parquet"
    raw = bytearray(enc.read_bytes())
    raw[100] ^= 1
    tampered.write_bytes(bytes(raw))
    other_key = {**key_env, "ENCRYPTION_MASTER_KEY": "another-master-key-0123456789-abcdef",
                 "ENGINE_KEY_STATE_FILE": str(tmp_path / "other-keys.json")}
    assert run("encrypt-columns", path, tmp_path / "other.parquet", "--pme",
               env=other_key).returncode == 0  # the other provider's version 1
    failures = [(("decrypt-columns", tmp_path / "text.parquet", out, "--pme"), key_env),
                (("encrypt-columns", tmp_path / "text.parquet", out, "--pme"), key_env),
                (("decrypt-columns", tampered, out, "--pme"), key_env),
                (("decrypt-columns", enc, out, "--pme"), other_key)]
    for args, env in failures:
        r = run(*args, env=env)
        assert r.returncode == 1, (args, r.stderr)
        assert str(args[1]) in r.stderr and "Traceback" not in r.stderr
    r = run("decrypt-columns", tmp_path / "missing.parquet", out, "--pme", env=key_env)
    assert r.returncode == 5 and "missing.parquet" in r.stderr
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary left
