"""A Parquet re-encryption job among other processes and an unlucky dataset: other jobs and
their temporaries, a SIGKILLed job, the application rewriting, deleting, adding or replacing
files while the job runs, files that are not Parquet, partitioned and read-only directories,
symbolic links, modes and owners."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.reencrypt import (
    AadRule,
    Column,
    FileUnreadable,
    SealedLayout,
    UnsupportedFile,
    inventory,
    open_store,
    reencrypt,
)
from engine.reencrypt.stores.parquet import TMP_SUFFIX, file_state

from reencrypt_support import (
    assert_dataset_reads,
    listing,
    master_key_environment,
    services,
    write_dataset,
)

SSN = Column("ssn", AadRule.template("users:{id}:ssn"))
EMAIL = Column("email", sealed=SealedLayout())
COLUMNS = [SSN, EMAIL]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ssn_values(first: int, end: int) -> int:
    """Non-NULL ssn values of write_dataset's rows ``first`` to ``end`` (every 11th is NULL)."""
    return sum(1 for i in range(first, end) if i % 11)


def temporaries(path: str) -> list[str]:
    return sorted(os.path.join(root, n) for root, _d, names in os.walk(path) for n in names
                  if n.endswith(TMP_SUFFIX))


@pytest.fixture(params=["unnamed", "named"])
def temporary_kind(request, monkeypatch):
    """Temporaries as O_TMPFILE makes them (no name until the rename), or named from the start
    (file systems without O_TMPFILE): a job must leave another's alone either way."""
    if request.param == "named":
        monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    return request.param


class Paused:
    """An observer that stops a job once its first file is rewritten, before the rename."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.go = threading.Event()

    def __call__(self, event: str, detail: dict) -> None:
        if "file" in detail and not self.reached.is_set():
            self.reached.set()
            assert self.go.wait(60)


def test_a_job_leaves_the_temporaries_of_a_live_job_alone(tmp_path, temporary_kind):
    old, new = services()
    path = str(tmp_path / "users")
    plain = write_dataset(path, old, files=3, rows=200)
    store = open_store(f"parquet://{path}")
    paused = Paused()
    first: dict = {}

    def run_first() -> None:
        try:
            first["report"] = reencrypt(store, [SSN], service=new, observer=paused)
        except BaseException as exc:  # noqa: BLE001 (handed to the test thread)
            first["error"] = exc

    t = threading.Thread(target=run_first)
    t.start()
    try:
        assert paused.reached.wait(60)
        live = temporaries(path)
        assert len(live) == (1 if temporary_kind == "named" else 0)
        second = reencrypt(store, [EMAIL], service=new)  # cleans the dead, never the living
        assert second.complete and second.reencrypted == 600
        assert temporaries(path) == live
    finally:
        paused.go.set()
        t.join(60)
    assert "error" not in first, first.get("error")
    # the second job rewrote the file the first held: the first saw it and left its values
    assert first["report"].changed == ssn_values(0, 200)
    assert first["report"].reencrypted == ssn_values(200, 600)
    again = reencrypt(store, COLUMNS, service=new)
    assert again.reencrypted == ssn_values(0, 200) and again.changed == 0
    assert_dataset_reads(plain, new, 2)
    assert temporaries(path) == []


KILLED_JOB = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {tests!r})
    if {named!r}:
        del os.O_TMPFILE
    from reencrypt_support import services
    from engine.reencrypt import AadRule, Column, open_store, reencrypt
    _, new = services()

    def stop(event, detail):
        if "file" in detail:
            open({ready!r}, "w").close()
            time.sleep(3600)

    reencrypt(open_store("parquet://" + {path!r}), [Column("ssn", AadRule.template("users:{{id}}:ssn"))],
              service=new, observer=stop)
""")


@pytest.mark.parametrize("named", [False, True])
def test_a_killed_jobs_leftovers_are_cleaned_and_its_work_redone(tmp_path, named):
    old, new = services()
    path = str(tmp_path / "users")
    plain = write_dataset(path, old, files=2, rows=300)
    ready = str(tmp_path / "ready")
    before = {n: open(n, "rb").read() for n in plain}
    child = subprocess.Popen([sys.executable, "-c", KILLED_JOB.format(
        tests=os.path.join(REPO, "tests"), named=named, ready=ready, path=path)])
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(ready):
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        left = temporaries(path)
        assert len(left) == (1 if named else 0)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    assert {n: open(n, "rb").read() for n in plain} == before  # nothing half-written
    assert temporaries(path) == left
    report = reencrypt(open_store(f"parquet://{path}"), COLUMNS, service=new)
    assert report.complete and report.reencrypted == ssn_values(0, 600) + 600
    assert temporaries(path) == []
    assert_dataset_reads(plain, new, 2)


CONCURRENT_JOB = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from reencrypt_support import services
    from engine.reencrypt import AadRule, Column, SealedLayout, open_store, reencrypt
    _, new = services()
    column = (Column("ssn", AadRule.template("users:{{id}}:ssn")) if {which!r} == "ssn"
              else Column("email", sealed=SealedLayout()))
    report = reencrypt(open_store("parquet://" + {path!r}), [column], service=new,
                       batch_size=50)
    print(report.reencrypted, report.changed, report.complete)
""")


def test_two_jobs_on_other_columns_of_one_dataset_run_side_by_side(tmp_path):
    old, new = services()
    path = str(tmp_path / "users")
    plain = write_dataset(path, old, files=8, rows=400)
    jobs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_JOB.format(
        tests=os.path.join(REPO, "tests"), which=which, path=path)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for which in ("ssn", "email")]
    outputs = [job.communicate(timeout=300) for job in jobs]
    for job, (out, err) in zip(jobs, outputs):
        assert job.returncode == 0 and "Traceback" not in err, err
        assert out.split()[2] == "True"
    # each value was moved once or left for the next pass because the other job moved its file
    moved = sum(int(out.split()[0]) for out, _ in outputs)
    left = sum(int(out.split()[1]) for out, _ in outputs)
    total = ssn_values(0, 3200) + 3200
    assert moved + left == total
    final = reencrypt(open_store(f"parquet://{path}"), COLUMNS, service=new)
    assert final.reencrypted == left
    assert inventory(open_store(f"parquet://{path}"), COLUMNS, service=new).all_current()
    assert_dataset_reads(plain, new, 2)
    assert temporaries(path) == [] and [n for n in listing(path) if n.startswith("_")] == []


def test_two_jobs_replacing_one_file_never_undo_each_other(tmp_path, monkeypatch):
    """Job A checks the file and is about to rename; job B, which read the same file, must not
    slip its rename in between (A's would then undo B's, whose report says it moved values)."""
    from engine.reencrypt.stores import parquet as store_module

    old, new = services()
    path = str(tmp_path / "users")
    plain = write_dataset(path, old, files=1, rows=300)
    store = open_store(f"parquet://{path}")
    checked, go = threading.Event(), threading.Event()
    real_replace = store_module.Temporary.replace

    def slow_replace(self, state):
        if threading.current_thread().name == "job-a":
            checked.set()
            assert go.wait(60)
        return real_replace(self, state)

    monkeypatch.setattr(store_module.Temporary, "replace", slow_replace)
    reports: dict = {}

    def run(name, columns):
        reports[name] = reencrypt(store, columns, service=new)

    a = threading.Thread(target=run, args=("a", [SSN]), name="job-a")
    a.start()
    assert checked.wait(60)
    b = threading.Thread(target=run, args=("b", [EMAIL]), name="job-b")
    b.start()
    b.join(3)  # with the lock it waits for A; without, it would be done by now
    go.set()
    a.join(60)
    b.join(60)
    after = inventory(store, COLUMNS, service=new)
    under_new = sum(c.versions.get(2, 0) for c in after.columns.values())
    assert under_new == reports["a"].reencrypted + reports["b"].reencrypted
    assert reports["b"].changed == 300 and reports["a"].reencrypted == ssn_values(0, 300)
    reencrypt(store, COLUMNS, service=new)
    assert_dataset_reads(plain, new, 2)


# ---------------------------------------------------------------- the application meanwhile

def rewrite_in_place_same_size(path: str, service) -> str:
    """What an application does: the file rewritten in place (same inode) with one value
    changed, the same size, and its modification time put back. Returns the new token."""
    st = os.stat(path)
    table = pq.read_table(path)
    ssn = table["ssn"].to_pylist()
    k = next(i for i, v in enumerate(ssn) if v is not None)
    fresh = service.encrypt_many(["999999999"], aad=[f"users:{table['id'][k].as_py()}:ssn"])[0]
    assert len(fresh) == len(ssn[k])
    ssn[k] = fresh
    table = table.set_column(table.schema.get_field_index("ssn"), "ssn", pa.array(ssn))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="none", use_dictionary=False,
                   write_statistics=False)
    data = sink.getvalue().to_pybytes()
    assert len(data) == st.st_size
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == \
        (st.st_ino, st.st_size, st.st_mtime_ns)
    return fresh


def test_a_same_size_in_place_rewrite_is_seen_and_the_applications_value_kept(tmp_path):
    old, new = services()
    path = str(tmp_path / "users")
    os.makedirs(path)
    ids = np.arange(60)
    name = os.path.join(path, "p.parquet")
    pq.write_table(pa.table({"id": ids, "ssn": old.encrypt_many(
        [f"{i:09d}" for i in ids], aad=[f"users:{i}:ssn" for i in ids], arrow=True)}), name,
        compression="none", use_dictionary=False, write_statistics=False)
    fresh = []

    def application(event: str, detail: dict) -> None:
        if "file" in detail and not fresh:
            fresh.append(rewrite_in_place_same_size(detail["file"], old))

    report = reencrypt(open_store(f"parquet://{path}"), [SSN], service=new, observer=application)
    assert report.reencrypted == 0 and report.changed == 60
    assert fresh[0] in pq.read_table(name)["ssn"].to_pylist()  # the application's write stands
    again = reencrypt(open_store(f"parquet://{path}"), [SSN], service=new)
    assert again.reencrypted == 60
    table = pq.read_table(name)
    assert new.decrypt_many_text(table["ssn"], [f"users:{i}:ssn" for i in ids])[0] == "999999999"


def test_file_state_sees_content_that_size_and_times_do_not(tmp_path):
    name = tmp_path / "f"
    name.write_bytes(b"a" * 100)
    before = file_state(str(name))
    st = os.stat(name)
    with open(name, "r+b") as f:
        f.write(b"b")
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = file_state(str(name))
    assert after.digest != before.digest and after.size == before.size
    assert after.mtime_ns == before.mtime_ns
    assert file_state(str(tmp_path / "missing")) is None
    os.symlink(name, tmp_path / "link")
    assert file_state(str(tmp_path / "link")) is None  # a link is not the file


def test_a_file_deleted_or_replaced_while_it_is_rewritten_is_not_brought_back(tmp_path):
    old, new = services()
    path = str(tmp_path / "users")
    plain = write_dataset(path, old, files=3, rows=100)
    names = sorted(plain)
    elsewhere = str(tmp_path / "elsewhere.parquet")
    shutil.copy(names[1], elsewhere)
    seen = []

    def application(event: str, detail: dict) -> None:
        seen.append(detail["file"])
        if detail["file"] == names[0]:
            os.unlink(names[0])  # deleted after the job read it
            os.unlink(names[2])  # deleted before the job reaches it
        elif detail["file"] == names[1]:
            os.unlink(names[1])
            os.symlink(elsewhere, names[1])  # a link put in its place

    report = reencrypt(open_store(f"parquet://{path}"), COLUMNS, service=new,
                       observer=application)
    assert report.complete and report.reencrypted == 0
    assert report.changed == ssn_values(0, 200) + 200
    assert seen == names[:2]
    assert not os.path.exists(names[0]) and not os.path.exists(names[2])
    assert os.path.islink(names[1]) and os.readlink(names[1]) == elsewhere
    assert pq.read_table(elsewhere).equals(pq.read_table(names[1]))  # not rewritten
    assert temporaries(path) == []


def test_a_file_added_while_the_job_runs_is_left_for_the_next_run(tmp_path):
    old, new = services()
    path = str(tmp_path / "users")
    plain = write_dataset(path, old, files=2, rows=100)
    late = str(tmp_path / "late")
    late_plain = write_dataset(late, old, files=1, rows=100)
    added = os.path.join(path, "part-9.parquet")

    def application(event: str, detail: dict) -> None:
        if not os.path.exists(added):
            shutil.copy(next(iter(late_plain)), added)

    report = reencrypt(open_store(f"parquet://{path}"), COLUMNS, service=new,
                       observer=application)
    assert report.complete and report.rows == 200
    assert set(pq.read_table(added)["key_version"].to_pylist()) == {1}
    again = reencrypt(open_store(f"parquet://{path}"), COLUMNS, service=new)
    assert again.rows == 300 and again.reencrypted == ssn_values(0, 100) + 100
    assert_dataset_reads(plain, new, 2)


# ---------------------------------------------------------------- odd datasets

def test_a_file_that_is_not_parquet_is_named_and_nothing_is_written(tmp_path, monkeypatch):
    app, rotate = cli_services(monkeypatch, tmp_path)
    path = str(tmp_path / "users")
    plain = write_dataset(path, app, files=2, rows=50)
    rotate()
    new = app
    (tmp_path / "users" / "notes.txt").write_text("not parquet")
    before = {n: os.stat(n).st_mtime_ns for n in plain}
    for run in (inventory, reencrypt):
        with pytest.raises(FileUnreadable, match="notes.txt"):
            run(open_store(f"parquet://{path}"), COLUMNS, service=new)
    assert {n: os.stat(n).st_mtime_ns for n in plain} == before
    result = run_cli(["reencrypt", "--store", f"parquet://{path}", "--column", "ssn",
                      "--aad", "template:users:{id}:ssn"])
    assert result.returncode == 5 and "notes.txt" in result.stderr
    assert "Traceback" not in result.stderr


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    """The CLI with this process's key environment (see ``cli_services``)."""
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                          text=True, env=dict(os.environ), timeout=300)


def cli_services(monkeypatch, tmp_path):
    """(the application's service under v1, its service after a rotation to v2), both from
    the environment the CLI reads."""
    from engine import KeyRotationService, RotationPolicy, get_encryption_service

    master_key_environment(monkeypatch, tmp_path)
    app = get_encryption_service()
    app.provider.get_current_key()
    return app, lambda: KeyRotationService(app.provider, RotationPolicy(),
                                           state_dir=tmp_path / "rot").rotate_keys()


def test_hive_partitions_are_rewritten_in_place_and_spark_temporaries_left_alone(tmp_path):
    old, new = services()
    root = tmp_path / "users"
    plain = {}
    for year in (2023, 2024):
        plain.update(write_dataset(str(root / f"year={year}" / "country=fr"), old, files=2,
                                   rows=60))
    hidden = write_dataset(str(root / "_temporary" / "0"), old, files=1, rows=10)
    before = {n: open(n, "rb").read() for n in hidden}
    report = reencrypt(open_store(f"parquet://{root}"), COLUMNS, service=new)
    assert report.rows == 240 and report.failed == 0
    assert_dataset_reads(plain, new, 2)
    assert {n: open(n, "rb").read() for n in hidden} == before  # in-progress output: not ours
    assert sorted(os.listdir(root)) == ["_temporary", "year=2023", "year=2024"]
    assert temporaries(str(root)) == []


def test_a_symbolic_link_in_the_dataset_is_refused_before_anything_is_written(tmp_path,
                                                                              monkeypatch):
    app, rotate = cli_services(monkeypatch, tmp_path)
    path = str(tmp_path / "users")
    plain = write_dataset(path, app, files=2, rows=50)
    rotate()
    new = app
    real = str(tmp_path / "real.parquet")
    shutil.move(sorted(plain)[1], real)
    os.symlink(real, sorted(plain)[1])
    before = {n: open(n, "rb").read() for n in plain}
    with pytest.raises(UnsupportedFile, match="symbolic link"):
        reencrypt(open_store(f"parquet://{path}"), COLUMNS, service=new)
    assert {n: open(n, "rb").read() for n in plain} == before
    assert os.path.islink(sorted(plain)[1])
    result = run_cli(["reencrypt", "--store", f"parquet://{path}", "--column", "ssn",
                      "--aad", "template:users:{id}:ssn"])
    assert result.returncode == 2 and "symbolic link" in result.stderr


READ_ONLY_JOB = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from reencrypt_support import services
    from engine.reencrypt import AadRule, Column, FileUnreadable, open_store, reencrypt
    _, new = services()
    try:
        reencrypt(open_store("parquet://" + {path!r}),
                  [Column("ssn", AadRule.template("users:{{id}}:ssn"))], service=new)
    except FileUnreadable as exc:
        print("refused:", exc)
""")


def test_a_read_only_directory_is_refused_before_anything_is_written(tmp_path):
    old, _ = services()
    path = str(tmp_path / "users")
    plain = write_dataset(path, old, files=2, rows=50)
    os.chmod(path, 0o555)
    before = {n: open(n, "rb").read() for n in plain}
    # root writes anywhere: run the job as root without the capabilities that override modes
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"] \
        if os.geteuid() == 0 else []
    try:
        result = subprocess.run(
            [*drop, sys.executable, "-c", READ_ONLY_JOB.format(
                tests=os.path.join(REPO, "tests"), path=path)],
            capture_output=True, text=True, timeout=120)
    finally:
        os.chmod(path, 0o755)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused:") and "cannot create files" in result.stdout
    assert {n: open(n, "rb").read() for n in plain} == before
    assert sorted(os.listdir(path)) == sorted(os.path.basename(n) for n in plain)


def test_a_rewritten_file_keeps_its_mode_and_owner(tmp_path):
    old, new = services()
    path = str(tmp_path / "users")
    plain = write_dataset(path, old, files=2, rows=50)
    first, second = sorted(plain)
    os.chmod(first, 0o640)
    os.chmod(second, 0o604)
    if os.geteuid() == 0:
        os.chown(first, 1234, 5678)
    owners = {n: (os.stat(n).st_uid, os.stat(n).st_gid) for n in plain}
    reencrypt(open_store(f"parquet://{path}"), COLUMNS, service=new)
    assert {n: oct(os.stat(n).st_mode & 0o7777) for n in plain} == \
        {first: oct(0o640), second: oct(0o604)}
    assert {n: (os.stat(n).st_uid, os.stat(n).st_gid) for n in plain} == owners
    assert_dataset_reads(plain, new, 2)


def test_a_one_file_store_cleans_its_own_directory_only(tmp_path):
    old, new = services()
    path = str(tmp_path / "users")
    plain = write_dataset(path, old, files=1, rows=30)
    dead_here = tmp_path / "users" / f".part-0.parquet.0123abcd{TMP_SUFFIX}"
    dead_beside = tmp_path / "users" / "other" / f".x.parquet.0123abcd{TMP_SUFFIX}"
    dead_beside.parent.mkdir()
    dead_here.write_bytes(b"left by a killed job")
    dead_beside.write_bytes(b"another dataset's, not this job's to look at")
    reencrypt(open_store(f"parquet://{next(iter(plain))}"), COLUMNS, service=new)
    assert not dead_here.exists() and dead_beside.exists()
    assert_dataset_reads(plain, new, 2)
