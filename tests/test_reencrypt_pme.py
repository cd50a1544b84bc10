"""Rotation on Parquet Modular Encryption files: inventory from key material, re-encryption
file by file (encrypted as before, layout kept, resumable, nothing lost under SIGKILL), and a
purge refused while a file names the version."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import engine
from engine import KeyRotationService, RotationPolicy
from engine.columns.parquet import ParquetLayout
from engine.columns.pme import PmeKeys, pme_key_info, read_pme, source_encryption, write_pme
from engine.reencrypt import (
    PmeStore,
    ReencryptionInterrupted,
    inventory_pme,
    reencrypt_pme,
)
from engine.rotation import VersionStillInUse

from reencrypt_support import master_key_environment

KEY1 = bytes(range(32))

CONFIGS = {"uniform.parquet": (None, False), "columns.parquet": (["email", "address"], False),
           "visible.parquet": (["email"], True)}


def _table(n, seed=0):
    rng = np.random.default_rng(seed)
    return pa.table({"id": np.arange(n), "email": [f"u{i}@example.com" for i in range(n)],
                     "score": rng.normal(size=n),
                     "address": [{"city": f"c{i % 7}", "zip": int(i)} for i in range(n)]})


def _encryption(path, keys):
    return source_encryption(path, keys=keys)


@pytest.fixture
def rotated(tmp_path):
    """A dataset of PME files under v1 (three encryption configurations, one of them in a
    partition directory), a plain file, then a rotation: v2 current, v1 deprecated."""
    provider = engine.StaticKeyProvider({1: KEY1})
    service = engine.EncryptionService(provider, metrics=False)
    data = tmp_path / "data"
    (data / "day=1").mkdir(parents=True)
    tables = {}
    for i, (name, (columns, footer)) in enumerate(CONFIGS.items()):
        path = data / ("day=1/" if i == 1 else "") / name
        tables[path] = _table(3000 + i, seed=i)
        write_pme(tables[path], path, columns=columns, plaintext_footer=footer, service=service,
                  compression="zstd", row_group_size=1000)
    pq.write_table(_table(10), data / "plain.parquet")
    rotation = KeyRotationService(provider, RotationPolicy(retention_versions=1),
                                  state_dir=tmp_path / "rot")
    rotation.rotate_keys()
    return service, rotation, PmeStore(str(data)), tables


def test_inventory_counts_files_per_version_without_any_key(rotated, monkeypatch):
    service, _rotation, store, _tables = rotated
    monkeypatch.setattr(PmeKeys, "decryption_properties",
                        lambda self: pytest.fail("the inventory unwrapped a key"))
    inv = inventory_pme(store, service=service)
    assert inv.files == 4 and inv.plain == 1 and inv.foreign == 0 and not inv.failures
    assert inv.versions == {1: 3} and inv.current_version == 2 and not inv.all_current()
    assert inv.still_named(1) == {"PME files": {"readable": 3}} and inv.still_named(2) == {}
    assert json.loads(json.dumps(inv.to_dict()))["versions"] == {"1": 3}


def test_files_under_a_version_the_provider_lacks_still_stop_its_purge(rotated):
    _service, _rotation, store, _tables = rotated
    elsewhere = engine.EncryptionService(engine.StaticKeyProvider({2: bytes(32 * [7])}),
                                         metrics=False)
    inv = inventory_pme(store, service=elsewhere)
    assert inv.missing_versions == {1: 3}
    assert inv.still_named(1) == {"PME files": {"unknown_key_version": 3}}


def test_reencrypt_moves_every_file_as_it_was_encrypted_and_the_purge_waits_for_it(rotated):
    service, rotation, store, tables = rotated
    keys = PmeKeys(service)
    before = {p: (_encryption(p, keys), ParquetLayout.of(pq.ParquetFile(
        p, decryption_properties=keys.decryption_properties()).metadata)) for p in tables}
    with pytest.raises(VersionStillInUse) as refused:
        rotation.purge(1, inventory=inventory_pme(store, service=service))
    assert refused.value.still_named == {(store.display, "PME files"): {"readable": 3}}
    assert service.provider.get_key(1) is not None

    report = reencrypt_pme(store, service=service)
    assert (report.reencrypted, report.already_current, report.plain) == (3, 0, 1)
    assert report.complete and not report.failures and report.target_version == 2
    for path in tables:
        assert pme_key_info(path).versions == {2}
        assert _encryption(path, keys) == before[path][0]  # the same columns, footer mode
        reader = pq.ParquetFile(path, decryption_properties=keys.decryption_properties())
        assert ParquetLayout.of(reader.metadata) == before[path][1]
    assert not [n for _r, _d, names in os.walk(store.path) for n in names if n.startswith(".")]

    again = reencrypt_pme(store, service=service)  # a rerun has nothing to do
    assert (again.reencrypted, again.already_current) == (0, 3)
    inv = inventory_pme(store, service=service)
    assert inv.all_current() and inv.still_named(1) == {}
    rotation.purge(1, inventory=inv)
    for path, table in tables.items():
        assert read_pme(path, service=service).equals(table)


def test_a_file_that_does_not_authenticate_is_reported_and_left_as_it_is(rotated, tmp_path):
    service, _rotation, store, tables = rotated
    victim = next(iter(tables))
    raw = bytearray(victim.read_bytes())
    raw[200] ^= 1
    victim.write_bytes(bytes(raw))
    (tmp_path / "data" / "notes.parquet").write_text("not parquet")
    report = reencrypt_pme(store, service=service)
    reasons = dict(report.failures)
    assert set(reasons) == {str(victim), str(tmp_path / "data" / "notes.parquet")}
    assert all(r.startswith("malformed") for r in reasons.values())
    assert victim.read_bytes() == bytes(raw) and report.reencrypted == 2
    inv = inventory_pme(store, service=service)
    assert inv.versions == {1: 1, 2: 2} and len(inv.failures) == 1


def test_an_interrupted_run_leaves_every_file_moved_or_as_it_was(rotated):
    service, _rotation, store, tables = rotated
    seen = []

    def stop_at_the_second(_event, details):
        seen.append(details["file"])
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(ReencryptionInterrupted) as stopped:
        reencrypt_pme(store, service=service, observer=stop_at_the_second)
    assert not stopped.value.report.complete and stopped.value.report.reencrypted == 1
    assert sorted(len(pme_key_info(p).versions & {2}) for p in tables) == [0, 0, 1]
    report = reencrypt_pme(store, service=service)
    assert (report.reencrypted, report.already_current) == (2, 1)
    for path, table in tables.items():
        assert read_pme(path, service=service).equals(table)


def test_files_under_vault_move_to_the_new_version(tmp_path, bao, names):
    provider = engine.VaultKeyProvider(bao.address, token=bao.root_token, timeout=5.0,
                                       retries=1, **names)
    try:
        service = engine.EncryptionService(provider, metrics=False)
        data = tmp_path / "vault"
        data.mkdir()
        table = _table(500)
        write_pme(table, data / "a.parquet", columns=["email"], service=service)
        provider.create_version()
        store = PmeStore(str(data))
        assert inventory_pme(store, service=service).versions == {1: 1}
        assert reencrypt_pme(store, service=service).reencrypted == 1
        assert pme_key_info(data / "a.parquet").versions == {2}
        assert read_pme(data / "a.parquet", service=service).equals(table)
    finally:
        provider.close()


# ---------------------------------------------------------------- the command line


def _run(*args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "engine", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env}, **kw)


def _finish(*args, env):
    p = _run(*args, env=env)
    out, err = p.communicate(timeout=300)
    return p.returncode, out, err


@pytest.fixture
def key_env(tmp_path, monkeypatch):
    master_key_environment(monkeypatch, tmp_path)
    return {k: os.environ[k] for k in ("ENCRYPTION_MASTER_KEY", "ENGINE_KEY_STATE_FILE",
                                       "ENCRYPTION_KDF_ITERATIONS")}


def test_the_commands_and_their_exit_codes(tmp_path, key_env):
    data = tmp_path / "d"
    data.mkdir()
    service = engine.get_encryption_service()
    write_pme(_table(100), data / "a.parquet", service=service)
    url = f"parquet://{data}"
    code, out, err = _finish("rotate", env=key_env)
    assert code == 0, err
    code, out, err = _finish("inventory", "--store", url, "--pme", "--json", env=key_env)
    assert code == 0, err
    assert json.loads(out)["versions"] == {"1": 1} and not json.loads(out)["all_current"]
    code, out, err = _finish("reencrypt", "--store", url, "--pme", env=key_env)
    assert code == 0 and "re-encrypted 1" in out, err
    code, out, err = _finish("inventory", "--store", url, "--pme", env=key_env)
    assert code == 0 and "every file is under it" in out, err
    for args in (("--column", "email"), ("--workers", "2")):
        code, _out, err = _finish("reencrypt", "--store", url, "--pme", *args, env=key_env)
        assert code == 2 and args[0] in err
    code, _out, err = _finish("inventory", "--store", "sqlite:///x.db", "--pme", env=key_env)
    assert code == 2
    (data / "b.parquet").write_text("not parquet")
    code, out, err = _finish("inventory", "--store", url, "--pme", "--json", env=key_env)
    assert code == 1 and json.loads(out)["failed"] == 1


def test_sigkill_at_any_moment_loses_nothing_and_a_rerun_finishes(tmp_path, key_env):
    """Kills `crypto-engine reencrypt --pme` once a file more has moved, a random few
    milliseconds later (so, often in the middle of the next file), until a run ends by
    itself; every file still decrypts to its table at every step."""
    data = tmp_path / "d"
    data.mkdir()
    service = engine.get_encryption_service()
    tables = {}
    for i in range(6):
        tables[data / f"part-{i}.parquet"] = _table(25_000, seed=i)
        write_pme(tables[data / f"part-{i}.parquet"], data / f"part-{i}.parquet",
                  columns=None if i % 2 else ["email"], service=service, compression="zstd")
    assert _finish("rotate", env=key_env)[0] == 0

    def moved():
        return sum(pme_key_info(p).versions == {2} for p in tables)

    rng = random.Random(os.getpid())
    kills = 0
    for _ in range(20):
        start = moved()
        if start == len(tables):
            break
        proc = _run("reencrypt", "--store", f"parquet://{data}", "--pme", env=key_env)
        while proc.poll() is None and moved() == start:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.08))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=300)
        engine.service.reset_encryption_service()
        service = engine.get_encryption_service()
        for path, table in tables.items():
            assert read_pme(path, service=service).equals(table), path
    assert kills >= 2
    code, out, err = _finish("reencrypt", "--store", f"parquet://{data}", "--pme", "--json",
                             env=key_env)
    assert code == 0, err
    assert json.loads(out)["complete"] and moved() == len(tables)
    assert sorted(os.listdir(data)) == sorted(p.name for p in tables)  # no temporary left
