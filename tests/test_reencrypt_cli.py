"""`crypto-engine inventory` and `crypto-engine reencrypt`: output, exit codes, progress bar."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import time
import urllib.parse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.testing.postgres import free_port

from reencrypt_support import MASTER, file_digest, listing, new_database

COLUMNS = ["--column", "ssn", "--column", "card", "--aad", "ssn=template:users:{id}:ssn"]


def run(*args, env, stderr=subprocess.PIPE):
    return subprocess.run([sys.executable, "-m", "engine", *args], stdout=subprocess.PIPE,
                          stderr=stderr, text=True, timeout=300, env={**os.environ, **env})


@pytest.fixture
def env(tmp_path):
    return {"ENCRYPTION_MASTER_KEY": MASTER, "ENGINE_KEY_STATE_FILE": str(tmp_path / "keys.json"),
            "ENCRYPTION_KDF_ITERATIONS": "1000", "ENGINE_AUDIT_LOG": str(tmp_path / "audit.jsonl"),
            "VAULT_ENABLED": "false"}


@pytest.fixture
def users(tmp_path, env, monkeypatch):
    """A SQLite table sealed under v1 by the same environment, then a rotation to v2."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from engine.service import get_encryption_service, reset_encryption_service

    reset_encryption_service()
    service = get_encryption_service()
    db = new_database("sqlite", tmp_path)
    ids = list(range(1, 301))
    db.run("CREATE TABLE users (id INTEGER PRIMARY KEY, ssn TEXT, card BLOB, other TEXT)")
    db.run_many("INSERT INTO users VALUES (%s, %s, %s, %s)",
                list(zip(ids, service.encrypt_many([f"ssn {i}" for i in ids],
                                                   aad=[f"users:{i}:ssn" for i in ids]),
                         service.encrypt_many([b"card"] * 300, binary=True).to_list(),
                         [f"plain {i}" for i in ids])))
    assert run("rotate", env=env).returncode == 0
    reset_encryption_service()
    yield db
    reset_encryption_service()


def test_inventory_reencrypt_inventory(users, env, tmp_path):
    store = ["--store", users.url, "--table", "users", "--key", "id"]
    before = run("inventory", *store, *COLUMNS, "--json", env=env)
    assert before.returncode == 0, before.stderr
    counts = json.loads(before.stdout)
    assert counts["columns"]["ssn"]["versions"] == {"1": 300} and not counts["all_current"]

    moved = run("reencrypt", *store, *COLUMNS, "--batch-size", "64", "--json", env=env)
    assert moved.returncode == 0, moved.stderr
    report = json.loads(moved.stdout)
    assert (report["scanned"], report["reencrypted"], report["failed"]) == (600, 600, 0)
    assert report["target_version"] == 2 and report["rows_per_s"] > 0

    text = run("inventory", *store, *COLUMNS, env=env)
    assert text.returncode == 0
    assert "ssn: 300 values; readable, by key version: v2: 300" in text.stdout
    assert "current v2: every value is under it" in text.stdout
    events = [json.loads(line)["event"] for line in open(tmp_path / "audit.jsonl")]
    assert events.count("REENCRYPTION_STARTED") == events.count("REENCRYPTION_COMPLETED") == 1


def test_a_failed_value_exits_1(users, env):
    users.run("UPDATE users SET ssn = 'not a token' WHERE id = 7")
    r = run("reencrypt", "--store", users.url, "--table", "users", "--key", "id", *COLUMNS,
            env=env)
    assert r.returncode == 1
    assert "failed: ssn key=7: malformed" in r.stdout and "re-encrypted 299" in r.stdout


@pytest.mark.parametrize("args, code, message", [
    (["--store", "mysql://h/db", "--table", "users", "--key", "id", "--column", "ssn"], 2,
     "unknown store URL"),
    (["--table", "clients", "--key", "id", "--column", "ssn"], 2, "no table 'clients'"),
    (["--table", "users", "--key", "id", "--column", "phone"], 2, "no column 'phone'"),
    (["--table", "users", "--key", "id", "--column", "other"], 2, "plain text"),
    (["--table", "users", "--key", "id", "--column", "ssn", "--aad", "rot13"], 2,
     "unknown AAD rule"),
    (["--table", "users", "--key", "id"], 2, "at least one --column"),
    (["--table", "users", "--key", "id", "--column", "ssn"], 2, "fail authentication"),
    (["--table", "users", "--key", "id", "--column", "card", "--dask",
      "tcp://127.0.0.1:{port}", "--dask-timeout", "1"], 3, "does not answer"),
    (["--table", "users", "--key", "id", *COLUMNS, "--index", "ssn_idx=ssn:soundex"], 2,
     "unknown normaliser 'soundex'"),
    (["--table", "users", "--key", "id", *COLUMNS, "--index", "ssn_idx=ssn:digits:99"], 2,
     "bits must be an integer from 1 to 32"),
    (["--table", "users", "--key", "id", *COLUMNS, "--index", "ssn=ssn"], 2,
     "like a column the job reads"),
    (["--table", "users", "--key", "id", *COLUMNS, "--index", "phone_idx=ssn"], 2,
     "blind index column 'phone_idx' must be a text column of 'users' (it has none)"),
    (["--store", "postgresql://u:hunter2@db:99999/crm", "--table", "users", "--key", "id",
      "--column", "ssn"], 2, "Port out of range"),
    (["--store", "postgresql://u:hunter2@[::1/crm", "--table", "users", "--key", "id",
      "--column", "ssn"], 2, "Invalid IPv6 URL"),
    (["--store", "postgresql://u:hunter2@db:port/crm", "--table", "users", "--key", "id",
      "--column", "ssn"], 2, "cannot read the PostgreSQL URL"),
    (["--table", "users", "--key", "id", *COLUMNS, "--max-failures", "-1"], 2,
     "--max-failures must be zero or more, not -1"),
    (["--table", "users", "--key", "id", *COLUMNS, "--batch-size", "0"], 2,
     "--batch-size must be positive"),
    (["--table", "users", "--key", "id", *COLUMNS, "--workers", "-2"], 2,
     "--workers must be zero or more"),
    (["--table", "users", "--key", "id", *COLUMNS, "--dask-timeout", "nan"], 2,
     "--dask-timeout must be a positive number"),
    (["--table", "users", "--key", "id", *COLUMNS, "--dask", "foo://scheduler:8786"], 2,
     "unknown address scheme 'foo'"),
    (["--table", "users", "--key", "id", *COLUMNS, "--dask", "127.0.0.1"], 2,
     "missing port number"),
    (["--table", "users", "--key", "id", *COLUMNS, "--dask", "tcp://[::1"], 2,
     "cannot read the Dask scheduler address"),
    (["--table", "users", "--key", "id", *COLUMNS, "--dask", "tcp://127.0.0.1:70000"], 2,
     "port 70000 is out of range"),
])
def test_bad_input_gets_a_clear_error_and_writes_nothing(users, env, args, code, message):
    if "--store" not in args:
        args = ["--store", users.url, *args]
    args = [a.replace("{port}", str(free_port())) for a in args]
    digest = file_digest(users.path)
    r = run("reencrypt", *args, env=env)
    assert r.returncode == code and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "hunter2" not in r.stderr
    assert file_digest(users.path) == digest


def test_blind_indexes_move_with_the_values(users, env):
    from engine import BlindIndex
    from engine.service import get_encryption_service

    provider = get_encryption_service().provider  # the fixture's environment, rotated to v2
    index = BlindIndex(provider, "users", "ssn", normalizer="digits", bits=12)
    plain = [f"ssn {i}" for i in range(1, 301)]
    users.run("ALTER TABLE users ADD COLUMN ssn_idx TEXT")
    users.run_many("UPDATE users SET ssn_idx = %s WHERE id = %s",
                   list(zip(index.compute(plain, version=1), range(1, 301))))
    # the bits left out (the default is not the 12 the application used): refused, as a
    # job once rewrote every index value with 18 bits, where no lookup would find them
    before = users.rows("SELECT * FROM users ORDER BY id")
    r = run("reencrypt", "--store", users.url, "--table", "users", "--key", "id", *COLUMNS,
            "--index", "ssn_idx=ssn:digits", "--json", env=env)
    assert r.returncode == 2 and "'ssn_idx'" in r.stderr and "bits" in r.stderr, r.stderr
    assert r.stdout == "" and users.rows("SELECT * FROM users ORDER BY id") == before
    r = run("reencrypt", "--store", users.url, "--table", "users", "--key", "id", *COLUMNS,
            "--index", "ssn_idx=ssn:digits:12", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["columns"]["ssn"]["unindexable"] == 0
    assert [row[0] for row in users.rows("SELECT ssn_idx FROM users ORDER BY id")] == \
        index.compute(plain, version=2)
    dataset = f"parquet://{users.path}.d/"
    r = run("reencrypt", "--store", dataset, "--column", "ssn", "--index", "ssn", env=env)
    assert r.returncode == 2 and "--index-table" in r.stderr


def test_an_unreachable_database_exits_3(env):
    url = f"postgresql://engine:hunter2@127.0.0.1:{free_port()}/crm"
    r = run("inventory", "--store", url, "--table", "users", "--key", "id", "--column", "ssn",
            env=env)
    assert r.returncode == 3 and "postgresql://engine@127.0.0.1" in r.stderr
    assert "hunter2" not in r.stderr + r.stdout


def test_parquet_three_column_layout_and_a_progress_bar_on_a_terminal(tmp_path, env, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from engine import Batch
    from engine.service import get_encryption_service, reset_encryption_service

    reset_encryption_service()
    key = get_encryption_service().provider.get_current_key()
    dataset = tmp_path / "events"
    dataset.mkdir()
    for f in range(2):
        sealed = key.cipher.seal_batch(Batch.from_list([b"payload"] * 1000)).to_arrow()
        pq.write_table(sealed.append_column("v", pa.array(np.full(1000, key.version))),
                       dataset / f"{f}.parquet")
    assert run("rotate", env=env).returncode == 0
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    r = run("reencrypt", "--store", f"parquet://{dataset}", "--sealed",
            "payload=nonce,tag,ciphertext,v", "--workers", "2", "--batch-size", "300", env=env,
            stderr=terminal)
    os.close(terminal)
    drawn = b""
    try:
        while chunk := os.read(main, 65536):
            drawn += chunk
    except OSError:  # the terminal's other end is closed: everything was read
        pass
    os.close(main)
    assert r.returncode == 0
    assert "re-encrypted 2,000" in r.stdout
    assert b"reencrypt: 100%" in drawn and b"2000/2000" in drawn
    assert listing(dataset) == ["0.parquet", "1.parquet"]
    reset_encryption_service()


def test_ctrl_c_stops_the_rotation_scheduler_with_one_line(env):
    job = subprocess.Popen([sys.executable, "-m", "engine", "rotation-scheduler",
                            "--check-every", "3600"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
                           start_new_session=True)
    time.sleep(3)  # it has checked once, and waits for the next check
    assert job.poll() is None
    os.killpg(job.pid, signal.SIGINT)
    out, err = job.communicate(timeout=60)
    assert job.returncode == 130, err
    assert "Traceback" not in err
    assert re.fullmatch(r"crypto-engine rotation-scheduler: interrupted after \d+ rotation\(s\)",
                        err.strip().splitlines()[-1]), err


def _password(url):
    return urllib.parse.urlsplit(url).password


def test_the_store_password_stays_out_of_ps(postgres, env, tmp_path, monkeypatch):
    """A password written in the --store URL works but is blanked from the command line while
    the job runs; one from $PGPASSWORD or a password file (as psql takes it) works as well."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from engine.service import get_encryption_service, reset_encryption_service

    reset_encryption_service()
    service = get_encryption_service()
    db = new_database("postgres", tmp_path, postgres)
    n = 60_000
    db.run("CREATE TABLE users (id BIGINT PRIMARY KEY, ssn TEXT)")
    with db.connect() as conn:
        with conn.cursor().copy("COPY users (id, ssn) FROM STDIN") as copy:
            for i, token in enumerate(service.encrypt_many([f"ssn {i}" for i in range(n)])):
                copy.write_row((i, token))
    assert run("rotate", env=env).returncode == 0
    reset_encryption_service()
    password = _password(db.url)
    args = ["--table", "users", "--key", "id", "--column", "ssn", "--batch-size", "100",
            "--json"]
    job = subprocess.Popen([sys.executable, "-m", "engine", "reencrypt", "--store", db.url,
                            *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, **env})
    seen = []
    while job.poll() is None:
        seen.append(_cmdline(job.pid))
        time.sleep(0.02)
    out, err = job.communicate()
    assert job.returncode == 0, err
    assert json.loads(out)["reencrypted"] == n
    late = [c for c in seen[len(seen) // 2:] if c]
    assert late and all(password.encode() not in c for c in late)
    assert all(b"reencrypt" in c for c in late)  # the command line is still there

    bare = db.url.replace(f":{password}@", "@")
    refused = run("inventory", "--store", bare, *args, env={**env, "PGPASSWORD": "wrong",
                                                            "PGPASSFILE": os.devnull})
    assert refused.returncode == 3 and "password authentication failed" in refused.stderr
    from_env = run("inventory", "--store", bare, *args, env={**env, "PGPASSWORD": password})
    assert from_env.returncode == 0, from_env.stderr
    parts = urllib.parse.urlsplit(bare)
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"{parts.hostname}:{parts.port}:*:{parts.username}:{password}\n")
    passfile.chmod(0o600)
    from_file = run("inventory", "--store", bare, *args, env={**env, "PGPASSFILE": str(passfile)})
    assert from_file.returncode == 0, from_file.stderr
    assert json.loads(from_file.stdout)["all_current"]
    reset_encryption_service()


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
