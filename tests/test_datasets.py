"""Whole datasets (engine.datasets, `encrypt-columns`/`decrypt-columns` on a directory): the
layout mirrored, hive partitions, files that are not data, worker processes, per-file JSON, a
corrupt file among good ones, resume after SIGKILL and after Ctrl-C, and Dask."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import engine
from engine import datasets, tables
from engine.blind_index import IndexDefinition
from engine.service import reset_encryption_service
from engine.tables import TableFileInvalid

TEMPLATE = "users:{id}:{column}"
MASTER = "datasets-master-key-0123456789-abcdefgh"


@pytest.fixture
def env(tmp_path, monkeypatch):
    """The key environment, in this process (and so in the worker processes it starts) and
    for the command lines the tests run."""
    values = {"ENCRYPTION_MASTER_KEY": MASTER, "VAULT_ENABLED": "false",
              "ENGINE_KEY_STATE_FILE": str(tmp_path / "keys.json"),
              "ENCRYPTION_KDF_ITERATIONS": "1000"}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    reset_encryption_service()
    engine.get_encryption_service().encrypt(b"x")  # the key state made: commands print theirs
    yield {**os.environ, **values}
    reset_encryption_service()


def users(n, start=0):
    return pa.table({
        "id": pa.array(range(start, start + n), pa.int64()),
        "email": pa.array([None if i % 11 == 5 else f"user{i}@example.com"
                           for i in range(start, start + n)]),
        "city": pa.array([f"city{i % 7}" for i in range(start, start + n)]),
    })


def cli(*args, env, **kwargs):
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)],
                          capture_output=True, text=True, timeout=600, env=env, **kwargs)


def tree(root):
    return sorted(str(p.relative_to(root)) for p in pathlib.Path(root).rglob("*") if p.is_file())


def read(path):
    path = str(path)
    return pacsv.read_csv(path) if path.endswith(".csv") else pq.read_table(path)


def make_dataset(root, files=4, rows=500):
    """Parquet files in nested directories, a CSV file, and files that are not data."""
    root.mkdir()
    (root / "a" / "b").mkdir(parents=True)
    (root / "_temporary").mkdir()
    for i in range(files):
        where = root / ("a" if i % 2 else "a/b") / f"part-{i}.parquet"
        pq.write_table(users(rows, i * rows), where, row_group_size=rows // 2)
    pacsv.write_csv(users(rows, 10_000), root / "extra.csv")
    pq.write_table(users(10), root / "_temporary" / "part-9.parquet")
    (root / "_SUCCESS").write_bytes(b"")
    (root / ".part-0.parquet.crc").write_bytes(b"crc")
    (root / "README.txt").write_text("user0@example.com is the first user\n")
    pq.write_metadata(users(1).schema, root / "_common_metadata")
    return root


def test_layout_mirrored_and_files_that_are_not_data_not_copied(env, tmp_path):
    src = make_dataset(tmp_path / "in")
    data = [f for f in tree(src) if f.endswith((".parquet", ".csv")) and not f.startswith("_")]
    report = datasets.encrypt_dataset(str(src), str(tmp_path / "enc"), ["email"],
                                      aad_template=TEMPLATE)
    assert report.ok and tree(tmp_path / "enc") == data  # the job record is gone
    statuses = {f.path: f.status for f in report.files}
    assert statuses == {**{f: "written" for f in data},
                        **{f: "ignored" for f in tree(src) if f not in data}}
    assert report.rows == 5 * 500
    for f in data:  # the column is encrypted, the others are as they were
        plain, sealed = read(src / f), read(tmp_path / "enc" / f)
        assert sealed.column("id").equals(plain.column("id"))
        assert b"@example.com" not in (tmp_path / "enc" / f).read_bytes()
    back = datasets.decrypt_dataset(tmp_path / "enc", str(tmp_path / "dec"), "email",
                                    aad_template=TEMPLATE)
    assert back.ok and tree(tmp_path / "dec") == data
    for f in data:
        assert read(tmp_path / "dec" / f).equals(read(src / f))


def test_hive_partitions_through_the_cli_with_workers(env, tmp_path):
    src, enc, dec = tmp_path / "in", tmp_path / "enc", tmp_path / "dec"
    table = users(3000).append_column("year", pa.array([2021 + i % 3 for i in range(3000)]))
    ds.write_dataset(table, src, format="parquet", partitioning=["year"],
                     partitioning_flavor="hive", max_rows_per_file=400, max_rows_per_group=200)
    assert all(p.split(os.sep)[0].startswith("year=") for p in tree(src))
    r = cli("encrypt-columns", src, enc, "--column", "email", "--aad-template", TEMPLATE,
            "--workers", "2", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert tree(enc) == tree(src)
    out = json.loads(r.stdout)
    assert out["totals"] == {"files": len(tree(src)), "written": len(tree(src)), "skipped": 0,
                             "failed": 0, "ignored": 0, "rows": 3000}
    # the partitions read back as a hive dataset, and a pyarrow Dataset is taken as input
    sealed = ds.dataset(enc, partitioning="hive")
    assert sorted(sealed.to_table().column("year").unique().to_pylist()) == [2021, 2022, 2023]
    seen = []  # the progress over the rows of the whole dataset, total known from the footers
    back = datasets.decrypt_dataset(sealed, str(dec), ["email"], aad_template=TEMPLATE,
                                    progress=lambda done, total: seen.append((done, total)))
    assert back.ok and tree(dec) == tree(src)
    assert len(seen) == len(tree(src)) and {total for _, total in seen} == {3000}
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert seen[-1][0] == 3000
    got = ds.dataset(dec, partitioning="hive").to_table().sort_by("id")
    want = ds.dataset(src, partitioning="hive").to_table().sort_by("id")
    assert got.equals(want)
    # a partition key's values are directory names: it cannot be encrypted, or read by the AAD
    for args in (["--column", "year"], ["--column", "email", "--aad-template", "{year}:{id}"]):
        r = cli("encrypt-columns", src, tmp_path / "refused", *args, env=env)
        assert r.returncode == 2 and "partition key" in r.stderr
        assert not (tmp_path / "refused").exists()


def test_one_file_through_the_dataset_api(env, tmp_path):
    pq.write_table(users(300), tmp_path / "one.parquet")
    report = datasets.encrypt_dataset(tmp_path / "one.parquet", tmp_path / "one.enc.parquet",
                                      "email")
    assert [(f.path, f.status, f.rows) for f in report.files] == [("one.parquet", "written", 300)]
    back = datasets.decrypt_dataset(str(tmp_path / "one.enc.parquet"),
                                    str(tmp_path / "back.parquet"), "email")
    assert back.ok and pq.read_table(tmp_path / "back.parquet").equals(users(300))
    with pytest.raises(TableFileInvalid):  # a single file's error is raised, as tables raises it
        datasets.decrypt_dataset(str(tmp_path / "one.parquet"), str(tmp_path / "x.parquet"),
                                 "email", file_format="csv")


def test_refusals_exit_2(env, tmp_path):
    src = make_dataset(tmp_path / "in")
    r = cli("encrypt-columns", src, src / "out", "--column", "email", env=env)
    assert r.returncode == 2 and "outside" in r.stderr
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    r = cli("encrypt-columns", tmp_path / "empty", tmp_path / "o", "--column", "email", env=env)
    assert r.returncode == 2 and "no data file" in r.stderr
    r = cli("encrypt-columns", src, tmp_path / "o", "--column", "email", "--workers", "0",
            env=env)
    assert r.returncode == 2 and "workers" in r.stderr
    r = cli("encrypt-columns", src, "-", "--column", "email", env=env)
    assert r.returncode == 2 and "stdout" in r.stderr and not os.path.exists("-")
    with pytest.raises(engine.InvalidArgumentType):
        datasets.encrypt_dataset(ds.dataset(pa.table({"a": [1]})), str(tmp_path / "o"), "a")


def test_per_file_json_and_a_corrupt_file_among_good_ones(env, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in "abcde":
        pq.write_table(users(300), src / f"{name}.parquet")
    (src / "c.parquet").write_bytes((src / "c.parquet").read_bytes()[:-200])  # truncated
    r = cli("encrypt-columns", src, tmp_path / "enc", "--column", "email", "--json", env=env)
    assert r.returncode == 1  # a file that cannot be parsed: a check failed (README's table)
    out = json.loads(r.stdout)
    files = {f["path"]: f for f in out["files"]}
    assert [f["status"] for f in out["files"]] == ["written"] * 2 + ["failed"] + ["written"] * 2
    assert files["c.parquet"]["rows"] is None and "c.parquet" in files["c.parquet"]["error"]
    assert files["a.parquet"] == {"path": "a.parquet", "status": "written", "rows": 300,
                                  "error": None}
    assert out["totals"]["failed"] == 1 and out["totals"]["rows"] == 1200
    said = [line for line in r.stderr.splitlines() if line.startswith("crypto-engine:")]
    assert len(said) == 1 and "c.parquet" in said[0]
    assert tree(tmp_path / "enc") == ["_engine_columns_job.json", "a.parquet", "b.parquet",
                                      "d.parquet", "e.parquet"]
    # the input repaired, a rerun writes only that file
    pq.write_table(users(300), src / "c.parquet")
    r = cli("encrypt-columns", src, tmp_path / "enc", "--column", "email", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert [f["status"] for f in json.loads(r.stdout)["files"]] == (
        ["skipped"] * 2 + ["written"] + ["skipped"] * 2)
    assert tree(tmp_path / "enc") == [f"{n}.parquet" for n in "abcde"]


def test_a_value_that_does_not_authenticate_is_named_by_file(env, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in "abc":
        pacsv.write_csv(users(50), src / f"{name}.csv")
    enc = tmp_path / "enc"
    report = datasets.encrypt_dataset(str(src), str(enc), ["email"])
    assert report.ok
    lines = (enc / "b.csv").read_text().splitlines()
    fields = lines[4].split(",")
    token = fields[1]
    mid = len(token) // 2
    fields[1] = token[:mid] + ("A" if token[mid] != "A" else "B") + token[mid + 1:]
    lines[4] = ",".join(fields)
    (enc / "b.csv").write_text("\n".join(lines) + "\n")
    r = cli("decrypt-columns", enc, tmp_path / "dec", "--column", "email", "--json", env=env)
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert [f["status"] for f in out["files"]] == ["written", "failed", "written"]
    assert "b.csv" in r.stderr and "row index 3" in r.stderr
    assert not (tmp_path / "dec" / "b.csv").exists()
    # a rerun checks the plaintext outputs (read whole, the rows recorded) and skips them
    r = cli("decrypt-columns", enc, tmp_path / "dec", "--column", "email", "--json", env=env)
    assert r.returncode == 1
    assert [f["status"] for f in json.loads(r.stdout)["files"]] == ["skipped", "failed",
                                                                     "skipped"]
    # one of them cut short (a copy tool's doing, say): written again
    (tmp_path / "dec" / "c.csv").write_text("id,email,city\n")
    r = cli("decrypt-columns", enc, tmp_path / "dec", "--column", "email", "--json", env=env)
    assert [f["status"] for f in json.loads(r.stdout)["files"]] == ["skipped", "failed",
                                                                     "written"]
    assert read(tmp_path / "dec" / "c.csv").equals(read(src / "c.csv"))


def test_workers_chosen_by_the_job(env, tmp_path, monkeypatch):
    src = make_dataset(tmp_path / "in", files=6, rows=200)
    small = datasets.encrypt_dataset(str(src), str(tmp_path / "e1"), "email", workers=4)
    assert small.ok and small.workers == 1  # too small to pay for starting processes
    monkeypatch.setattr(datasets, "SMALL_DATASET_BYTES", 0)
    monkeypatch.setattr(datasets, "_cores_taken_by_others", lambda: 0.0)  # a quiet machine
    report = datasets.encrypt_dataset(str(src), str(tmp_path / "e2"), "email", workers=64)
    assert report.ok and report.workers == min(7, len(os.sched_getaffinity(0)))
    assert [f.status for f in report.files] == [f.status for f in small.files]
    # every core taken by other processes: a second worker would only slow the job down
    monkeypatch.setattr(datasets, "_cores_taken_by_others", lambda: 64.0)
    busy = datasets.encrypt_dataset(str(src), str(tmp_path / "e3"), "email", workers=2)
    assert busy.ok and busy.workers == 1


def _big_dataset(root, files=24, rows=40_000):
    root.mkdir()
    for i in range(files):
        pq.write_table(users(rows, i * rows), root / f"part-{i:02d}.parquet",
                       row_group_size=rows // 4)
    return root


def _wait_for_outputs(out, count, proc):
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and sum(p.suffix == ".parquet" for p in out.iterdir()) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"the job ended or stalled before {count} outputs: {proc.poll()}")


def _check_visible_outputs(out):
    """Every file the interrupted job left is whole: nothing half-written is ever visible."""
    names = tree(out)
    assert not [n for n in names if n.endswith(".part") or n.startswith(".")]
    for n in names:
        if n.endswith(".parquet"):
            pq.read_table(out / n).validate(full=True)
    return [n for n in names if n.endswith(".parquet")]


def test_resume_after_sigkill(env, tmp_path):
    src, enc = _big_dataset(tmp_path / "in"), tmp_path / "enc"
    args = ["encrypt-columns", src, enc, "--column", "email", "--aad-template", TEMPLATE,
            "--workers", "2", "--json"]
    proc = subprocess.Popen([sys.executable, "-m", "engine", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    _wait_for_outputs(enc, 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the command line and its workers
    proc.communicate()
    done = _check_visible_outputs(enc)
    assert 3 <= len(done) < 24
    # an output whose bytes changed under the same size and time is checked, not trusted
    victim = enc / done[0]
    st = victim.stat()
    raw = bytearray(victim.read_bytes())
    chunk = pq.ParquetFile(victim).metadata.row_group(1).column(1)  # the encrypted email
    assert chunk.path_in_schema == "email"
    at = chunk.data_page_offset + chunk.total_compressed_size // 2
    raw[at:at + 64] = bytes(64)
    victim.write_bytes(raw)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = cli(*args, env=env)
    assert r.returncode == 0, r.stderr
    status = {f["path"]: f["status"] for f in json.loads(r.stdout)["files"]}
    recorded = set(done) - {done[0]}  # the last one may have been committed, not recorded
    assert status[done[0]] == "written"
    assert {p for p, s in status.items() if s == "skipped"} >= recorded - {done[-1]}
    assert sum(s == "skipped" for s in status.values()) >= len(recorded) - 1
    assert set(status.values()) == {"written", "skipped"} and len(status) == 24
    assert tree(enc) == tree(src)
    back = datasets.decrypt_dataset(str(enc), str(tmp_path / "dec"), "email",
                                    aad_template=TEMPLATE, workers=2)
    assert back.ok and back.rows == 24 * 40_000
    for n in tree(src):
        assert pq.read_table(tmp_path / "dec" / n).equals(pq.read_table(src / n))


def test_ctrl_c_one_line_exit_130_then_resume(env, tmp_path):
    src, enc = _big_dataset(tmp_path / "in", files=16), tmp_path / "enc"
    args = ["encrypt-columns", src, enc, "--column", "email", "--workers", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "engine", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _wait_for_outputs(enc, 2, proc)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends it: to the whole group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [
        "crypto-engine: interrupted; the files written stay; run it again to resume"]
    done = _check_visible_outputs(enc)
    assert len(done) < 16
    r = cli(*args, "--json", env=env)
    assert r.returncode == 0, r.stderr
    status = [f["status"] for f in json.loads(r.stdout)["files"]]
    assert status.count("skipped") >= len(done) - 1 and tree(enc) == tree(src)


# ---------------------------------------------------------------- Dask

def test_dask_local_cluster_over_a_multi_file_dataset(env, tmp_path):
    """The files as tasks on a real LocalCluster of worker processes (docs/datasets.md's
    recipe, whose block tests/test_docs.py runs as written), with the job's record, layout and
    report as with local workers."""
    from distributed import Client, LocalCluster

    src = make_dataset(tmp_path / "in", files=6, rows=400)
    enc, dec = tmp_path / "encrypted", tmp_path / "decrypted"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        report = datasets.encrypt_dataset(str(src), str(enc), ["email"], aad_template=TEMPLATE,
                                          executor=client.get_executor())
        ran_on = {w["id"] for w in client.scheduler_info()["workers"].values()}
        back = datasets.decrypt_dataset(str(enc), str(dec), ["email"], aad_template=TEMPLATE,
                                        executor=client.get_executor())
    assert len(ran_on) == 2
    assert report.ok and back.ok and {f.status for f in report.files} == {"written", "ignored"}
    data = [f.path for f in report.files if f.status == "written"]
    assert len(data) == 7 and tree(enc) == tree(dec) == data
    for f in data:
        assert read(dec / f).equals(read(src / f))
        assert b"@example.com" not in (enc / f).read_bytes()


def test_a_worker_with_another_key_encrypts_nothing(env, tmp_path, monkeypatch):
    """The job's service holds one key, the workers' environment another: the files sent to the
    worker fail, named, with no output (sealed under a key the application does not hold, they
    would be lost); the files this process took are sealed under the job's key."""
    src = make_dataset(tmp_path / "in", files=5, rows=100)
    monkeypatch.setattr(datasets, "SMALL_DATASET_BYTES", 0)
    monkeypatch.setattr(datasets, "_cores_taken_by_others", lambda: 0.0)
    other = engine.EncryptionService(engine.StaticKeyProvider({1: os.urandom(32)}),
                                     metrics=False)
    enc = tmp_path / "enc"
    report = datasets.encrypt_dataset(str(src), str(enc), "email", workers=2, service=other)
    assert report.workers == 2
    failed = [f.path for f in report.failed]
    assert len(failed) >= 2  # the worker's first two files at least
    assert all("coordinator" in str(f.error) for f in report.failed)
    written = [f.path for f in report.files if f.status == "written"]
    assert sorted(written) == [f for f in tree(enc) if not f.startswith("_")]  # failed: none
    for f in written:
        tables.decrypt_columns_file(str(enc / f), str(tmp_path / "check"), ["email"],
                                    file_format="parquet" if f.endswith(".parquet") else "csv",
                                    service=other)


def test_one_progress_bar_over_the_rows_of_the_whole_dataset(env, tmp_path):
    """On a terminal, one tqdm bar counts the rows of every file, its total from the footers."""
    import fcntl
    import pty
    import struct
    import termios

    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        pq.write_table(users(250, i * 250), src / f"part-{i}.parquet")
    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 120 columns
    proc = subprocess.Popen([sys.executable, "-m", "engine", "encrypt-columns", str(src),
                             str(tmp_path / "enc"), "--column", "email"], env=env,
                            stdout=subprocess.PIPE, stderr=terminal)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal's other end closed: the command ended
            break
        if not chunk:
            break
        shown += chunk
    proc.wait(timeout=300)
    os.close(master)
    assert proc.returncode == 0, shown
    text = shown.decode(errors="replace")
    assert "encrypt-columns" in text and "1000/1000" in text and "rows" in text
    assert len(set(re.findall(r"\d+/(\d+)", text))) == 1  # one bar, one total throughout


def test_blind_indexes_beside_every_file_on_workers(env, tmp_path, monkeypatch):
    """`--index` over a dataset: each worker derives the index key from the job's provider, so
    an address has one index value in every file, whichever process wrote it."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):  # the same 100 addresses in every file
        pq.write_table(users(100), src / f"part-{i}.parquet")
    monkeypatch.setattr(datasets, "SMALL_DATASET_BYTES", 0)
    monkeypatch.setattr(datasets, "_cores_taken_by_others", lambda: 0.0)
    index = IndexDefinition.parse("email_idx=email:email", "users")
    report = datasets.encrypt_dataset(str(src), str(tmp_path / "enc"), ["email"], workers=2,
                                      blind_indexes=[index])
    assert report.ok and report.workers == 2
    columns = [pq.read_table(tmp_path / "enc" / f"part-{i}.parquet").column("email_idx")
               for i in range(4)]
    assert all(c.equals(columns[0]) for c in columns) and columns[0].null_count == 9
    assert len(set(columns[0].drop_null().to_pylist())) == 91
