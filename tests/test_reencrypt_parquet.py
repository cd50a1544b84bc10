"""The re-encryption job on Parquet datasets: token columns and the three-column layout, a file
as the unit of work, atomic replacement, checkpoints."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.reencrypt import (
    AadRule,
    Column,
    ColumnNotFound,
    NotEncrypted,
    SealedLayout,
    StoreUnavailable,
    TableNotFound,
    inventory,
    open_store,
    reencrypt,
)

from reencrypt_support import (
    assert_dataset_reads,
    listing,
    master_key_environment,
    services,
    write_dataset,
)

COLUMNS = [Column("ssn", AadRule.template("users:{id}:ssn")),
           Column("email", sealed=SealedLayout())]


@pytest.mark.parametrize("workers", [0, 2])
def test_both_layouts_move_and_files_are_replaced_whole(tmp_path, workers, monkeypatch):
    master_key_environment(monkeypatch, tmp_path)
    from engine import KeyRotationService, RotationPolicy, get_encryption_service

    svc = get_encryption_service()
    path = str(tmp_path / "users")
    plain = write_dataset(path, svc)
    KeyRotationService(svc.provider, RotationPolicy(), state_dir=tmp_path / "rot").rotate_keys()
    store = open_store(f"parquet://{path}")
    before = inventory(store, COLUMNS, service=svc)
    nulls = sum(1 for i in range(1500) if i % 11 == 0)
    assert before.columns["ssn"].versions == {1: 1500 - nulls}
    assert before.columns["ssn"].null == nulls and before.columns["email"].versions == {1: 1500}
    inodes = {n: os.stat(n).st_ino for n in plain}

    report = reencrypt(store, COLUMNS, service=svc, workers=workers, batch_size=128)
    assert report.complete and report.rows == 1500
    assert report.reencrypted == 3000 - nulls and report.failed == 0
    assert_dataset_reads(plain, svc, 2)
    assert all(os.stat(n).st_ino != inodes[n] for n in plain)  # renamed into place
    assert listing(path) == ["part-0.parquet", "part-1.parquet", "part-2.parquet"]
    assert inventory(store, COLUMNS, service=svc).all_current()

    unchanged = {n: os.stat(n).st_mtime_ns for n in plain}
    again = reencrypt(store, COLUMNS, service=svc, workers=workers)
    assert again.reencrypted == 0 and again.already_current == 3000 - nulls
    assert {n: os.stat(n).st_mtime_ns for n in plain} == unchanged  # nothing to do: not rewritten


def test_a_failing_file_stops_the_job_and_the_rerun_skips_the_files_done(tmp_path):
    old, new = services()
    path = str(tmp_path / "users")
    plain = write_dataset(path, old, files=3, nulls=False)
    broken = os.path.join(path, "part-2.parquet")
    good = pq.read_table(broken)
    pq.write_table(good.set_column(5, "key_version", pa.array(["v1"] * good.num_rows)), broken)
    store = open_store(f"parquet:///{path.lstrip('/')}")
    with pytest.raises(ColumnNotFound):
        reencrypt(store, COLUMNS, service=new, batch_size=100)
    progress = [n for n in listing(path) if n.startswith("_")]
    assert len(progress) == 1 and progress[0].startswith("_engine_reencrypt_progress.")
    assert not [n for n in listing(path) if n.startswith(".")]  # no temporary left behind
    done = {n: os.stat(n).st_mtime_ns for n in list(plain)[:2]}
    pq.write_table(good, broken)  # repaired
    report = reencrypt(store, COLUMNS, service=new, batch_size=100)
    assert {n: os.stat(n).st_mtime_ns for n in done} == done  # only the file left to do
    # the report covers the whole dataset: the files the first run finished too
    assert (report.rows, report.resumed_rows, report.reencrypted) == (1500, 1000, 3000)
    assert_dataset_reads(plain, new, 2)
    assert listing(path) == ["part-0.parquet", "part-1.parquet", "part-2.parquet"]


@pytest.mark.parametrize("codec", ["none", "lz4", "gzip"])
def test_unreadable_values_are_reported_by_file_and_row(tmp_path, codec):
    old, new = services()
    path = str(tmp_path / "one.parquet")
    ids = np.arange(5)
    tokens = old.encrypt_many([f"{i}" for i in ids], aad=[f"users:{i}:ssn" for i in ids])
    tokens[3] = "not a token"
    pq.write_table(pa.table({"id": ids, "ssn": tokens}), path, compression=codec)
    report = reencrypt(open_store(f"parquet://{path}"), [COLUMNS[0]], service=new)
    assert [(f.key, f.reason) for f in report.failures] == [("one.parquet#3", "malformed")]
    assert pq.read_table(path)["ssn"][3].as_py() == "not a token"
    assert report.reencrypted == 4
    written = pq.ParquetFile(path).metadata.row_group(0).column(1).compression
    assert written == pq.ParquetFile(path).metadata.row_group(0).column(0).compression
    assert written.lower() in (codec, "uncompressed", "lz4_raw")  # the file's codec is kept


def test_bad_input(tmp_path):
    old, new = services()
    path = str(tmp_path / "users")
    write_dataset(path, old, files=1, rows=50)
    store = open_store(f"parquet://{path}")
    with pytest.raises(TableNotFound):
        inventory(open_store(f"parquet://{tmp_path}/nothing"), ["ssn"], service=new)
    with pytest.raises(ColumnNotFound):
        reencrypt(store, ["phone"], service=new)
    with pytest.raises(ColumnNotFound):  # an integer column holds no ciphertexts
        reencrypt(store, ["id"], service=new)
    plain = str(tmp_path / "plain")
    os.makedirs(plain)
    pq.write_table(pa.table({"id": [1, 2], "ssn": ["123-45-6789", "987-65-4321"]}),
                   os.path.join(plain, "p.parquet"))
    before = os.stat(os.path.join(plain, "p.parquet")).st_mtime_ns
    with pytest.raises(NotEncrypted):
        reencrypt(open_store(f"parquet://{plain}"), ["ssn"], service=new)
    assert os.stat(os.path.join(plain, "p.parquet")).st_mtime_ns == before
    assert listing(plain) == ["p.parquet"]


# ---------------------------------------------------------------- every other column is kept

OWNED = {"ssn", "nonce", "tag", "ciphertext", "key_version"}
WRITER_CASES = {
    "zstd-level-7-sorted": dict(compression="zstd", compression_level=7, row_group_size=300,
                                sorting_columns=[pq.SortingColumn(0)]),
    "per-column-codecs-int96": dict(
        compression={"id": "zstd", "ssn": "snappy", "nonce": "none", "tag": "none",
                     "ciphertext": "gzip", "key_version": "zstd", "ts": "gzip", "city": "brotli",
                     "amount": "lz4", "where.x": "snappy"},
        compression_level={"id": 9, "ciphertext": 4, "ts": 2, "city": 6},
        use_deprecated_int96_timestamps=True, row_group_size=450),
    "dictionary-statistics-v2-pages": dict(
        compression="gzip", use_dictionary=["city", "key_version"],
        write_statistics=["id", "city", "key_version"], data_page_version="2.0",
        write_page_checksum=True, row_group_size=512),
    "encodings-bloom-index-v1": dict(
        version="1.0", compression="snappy", use_dictionary=["city"],
        column_encoding={"id": "DELTA_BINARY_PACKED", "amount": "BYTE_STREAM_SPLIT"},
        bloom_filter_options={"id": True}, write_page_index=True, row_group_size=400),
}


def write_users(path: str, service, files: int = 2, rows: int = 1000, **options) -> dict:
    """Files of ``write_dataset``'s columns plus plain ones (a timestamp, a city, an amount, a
    struct), written with ``options`` and key-value metadata."""
    import datetime

    os.makedirs(path, exist_ok=True)
    key = service.provider.get_current_key()
    plain = {}
    for f in range(files):
        ids = np.arange(f * rows, (f + 1) * rows)
        ssn = [f"{i:09d}" for i in ids]
        emails = [f"user{i}@example.com".encode() for i in ids]
        sealed = key.cipher.seal_batch(emails).to_arrow()
        start = datetime.datetime(2020, 1, 1)
        table = pa.table({
            "id": ids,
            "ssn": service.encrypt_many(ssn, aad=[f"users:{i}:ssn" for i in ids], arrow=True),
            "nonce": sealed["nonce"], "tag": sealed["tag"], "ciphertext": sealed["ciphertext"],
            "key_version": pa.array(np.full(rows, key.version, dtype=np.int32)),
            "ts": pa.array([start + datetime.timedelta(minutes=int(i)) for i in ids],
                           pa.timestamp("us")),
            "city": [f"city{i % 17}" for i in ids],
            "amount": (ids * 0.37).tolist(),
            "where": [{"x": int(i) % 5, "y": f"y{i}"} for i in ids],
        }, metadata={"owner": "crm", "written-by": "nightly"})
        name = os.path.join(path, f"part-{f}.parquet")
        pq.write_table(table, name, **options)
        plain[name] = (ids, ssn, emails)
    return plain


@pytest.mark.parametrize("case", sorted(WRITER_CASES))
def test_reencrypt_keeps_every_property_of_the_columns_it_does_not_own(tmp_path, case):
    from parquet_support import assert_kept

    old, new = services()
    path = str(tmp_path / "users")
    plain = write_users(path, old, **WRITER_CASES[case])
    originals = {}
    for name in plain:
        originals[name] = str(tmp_path / ("orig-" + os.path.basename(name)))
        with open(name, "rb") as src, open(originals[name], "wb") as dst:
            dst.write(src.read())
    report = reencrypt(open_store(f"parquet://{path}"), COLUMNS, service=new, batch_size=128)
    assert report.reencrypted == 4000 and report.failed == 0
    for name in plain:
        assert_kept(originals[name], name, OWNED)
    assert_dataset_reads(plain, new, 2)


def test_a_resumed_job_reports_the_failures_of_files_an_earlier_run_finished(tmp_path):
    """Unreadable values in a file the first run finished are in the resumed run's report and
    decide its verdict: an operator who gates the purge on it never purges them away."""
    old, new = services()
    path = str(tmp_path / "users")
    write_dataset(path, old, files=3, nulls=False)
    first = os.path.join(path, "part-0.parquet")
    table = pq.read_table(first)
    ssn = table["ssn"].to_pylist()
    ssn[7] = "not a token"
    pq.write_table(table.set_column(1, "ssn", pa.array(ssn)), first)
    broken = os.path.join(path, "part-2.parquet")
    good = pq.read_table(broken)
    pq.write_table(good.set_column(5, "key_version", pa.array(["v1"] * good.num_rows)), broken)
    store = open_store(f"parquet://{path}")
    with pytest.raises(ColumnNotFound):
        reencrypt(store, COLUMNS, service=new, batch_size=100)
    pq.write_table(good, broken)
    report = reencrypt(store, COLUMNS, service=new, batch_size=100)
    assert report.complete and report.rows == 1500 and report.resumed_rows == 1000
    assert [(f.key, f.reason) for f in report.failures] == [("part-0.parquet#7", "malformed")]
    assert report.failed == 1 and report.reencrypted == 2999
    # the job is done: its checkpoint is gone, and a new pass finds the one value again
    assert not [n for n in listing(path) if n.startswith("_engine_reencrypt_progress")]
    again = reencrypt(store, COLUMNS, service=new)
    assert again.failed == 1 and again.resumed_rows == 0


def test_a_corrupt_parquet_checkpoint_is_refused_by_name(tmp_path):
    old, new = services()
    path = str(tmp_path / "users")
    write_dataset(path, old, files=2, nulls=False)
    broken = os.path.join(path, "part-1.parquet")
    good = pq.read_table(broken)
    pq.write_table(good.set_column(5, "key_version", pa.array(["v1"] * good.num_rows)), broken)
    store = open_store(f"parquet://{path}")
    with pytest.raises(ColumnNotFound):  # the job stops at the second file
        reencrypt(store, COLUMNS, service=new, batch_size=100)
    pq.write_table(good, broken)
    checkpoint = _checkpoint(path)
    header, *records = _journal(checkpoint)
    assert [r["file"] for r in records] == [os.path.join(path, "part-0.parquet")]
    with open(checkpoint, "w") as f:  # a record in the middle that does not parse
        f.write(json.dumps(header) + "\n{not json\n" + json.dumps(records[0]) + "\n")
    with pytest.raises(StoreUnavailable, match="corrupt"):
        reencrypt(store, COLUMNS, service=new, batch_size=100)
    with open(checkpoint, "w") as f:  # another job's journal
        f.write(json.dumps({"job": "another"}) + "\n" + json.dumps(records[0]) + "\n")
    with pytest.raises(StoreUnavailable, match="corrupt"):
        reencrypt(store, COLUMNS, service=new, batch_size=100)


def _checkpoint(path: str) -> str:
    [name] = [n for n in listing(path) if n.startswith("_engine_reencrypt_progress")]
    return os.path.join(path, name)


def _journal(checkpoint: str) -> list[dict]:
    with open(checkpoint, "rb") as f:
        raw = f.read()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.splitlines()]


def _stopped_job(tmp_path, files: int) -> tuple:
    """A job on a dataset of ``files`` files stopped by its last one (a key version column of
    text): (the store, the service, the checkpoint, its records, and how to mend that file)."""
    old, new = services()
    path = str(tmp_path / "users")
    write_dataset(path, old, files=files, nulls=False)
    broken = os.path.join(path, f"part-{files - 1}.parquet")
    good = pq.read_table(broken)
    pq.write_table(good.set_column(5, "key_version", pa.array(["v1"] * good.num_rows)), broken)
    store = open_store(f"parquet://{path}")
    with pytest.raises(ColumnNotFound):
        reencrypt(store, COLUMNS, service=new, batch_size=100)
    checkpoint = _checkpoint(path)
    header, *records = _journal(checkpoint)
    assert "job" in header and [os.path.basename(r["file"]) for r in records] == [
        f"part-{i}.parquet" for i in range(files - 1)]
    return store, new, checkpoint, header, records, lambda: pq.write_table(good, broken)


def test_the_checkpoint_grows_by_one_line_per_file_and_a_torn_last_line_is_dropped(tmp_path):
    """Recording a file appends one line (flushed), so the n-th file costs what the first did;
    a run killed while appending leaves a line without its newline, which the next run cuts
    off: that file is looked at again and its values, already moved, count as current."""
    store, new, checkpoint, _, _, mend = _stopped_job(tmp_path, 4)
    with open(checkpoint, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    with open(checkpoint, "wb") as f:  # the last record half written
        f.write(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    mend()
    report = reencrypt(store, COLUMNS, service=new, batch_size=100)
    assert report.complete and report.rows == 2000 and report.resumed_rows == 1000
    assert report.reencrypted == 3000 and report.already_current == 1000  # part-2: again
    assert report.failed == 0
    assert not [n for n in listing(store.path) if n.startswith("_engine_reencrypt_progress")]


@pytest.mark.parametrize("left", [b"", b'{"jo'])
def test_a_journal_whose_first_write_was_cut_short_holds_nothing_yet(tmp_path, left):
    """Killed during the journal's first write (an empty file, or half a header): the next run
    starts the dataset over instead of refusing the checkpoint as corrupt."""
    store, new, checkpoint, _, _, mend = _stopped_job(tmp_path, 3)
    with open(checkpoint, "wb") as f:
        f.write(left)
    mend()
    report = reencrypt(store, COLUMNS, service=new, batch_size=100)
    assert report.complete and report.rows == 1500 and report.resumed_rows == 0
    assert report.reencrypted == 1000 and report.already_current == 2000  # 0-1 moved before
    assert report.failed == 0


def test_a_checkpoint_written_whole_by_an_earlier_release_is_resumed(tmp_path):
    """The single JSON object earlier releases wrote: its files are skipped and it becomes a
    journal."""
    store, new, checkpoint, header, records, mend = _stopped_job(tmp_path, 3)
    with open(checkpoint, "w") as f:
        f.write(json.dumps({header["job"]: {r["file"]: r["result"] for r in records}},
                           indent=0))
    stamps = {r["file"]: os.stat(r["file"]).st_mtime_ns for r in records}
    with pytest.raises(ColumnNotFound):  # stopped again, at the same file
        reencrypt(store, COLUMNS, service=new, batch_size=100)
    assert [r["file"] for r in _journal(checkpoint)[1:]] == [r["file"] for r in records]
    assert {f: os.stat(f).st_mtime_ns for f in stamps} == stamps  # skipped, not rewritten
    mend()
    report = reencrypt(store, COLUMNS, service=new, batch_size=100)
    assert report.complete and report.resumed_rows == 1000 and report.reencrypted == 3000


def test_with_worker_processes_progress_moves_with_each_batch_and_counts_each_row_once(
        tmp_path, monkeypatch):
    """Worker processes rewrite whole files; the progress they report comes batch by batch
    (a bar moves before a file is through), and the total is the dataset's rows, once."""
    master_key_environment(monkeypatch, tmp_path)
    from engine import KeyRotationService, RotationPolicy, get_encryption_service

    svc = get_encryption_service()
    path = str(tmp_path / "users")
    write_dataset(path, svc, files=2, nulls=False)
    KeyRotationService(svc.provider, RotationPolicy(), state_dir=tmp_path / "rot").rotate_keys()
    calls = []
    report = reencrypt(open_store(f"parquet://{path}"), COLUMNS, service=svc, workers=2,
                       batch_size=50, progress=lambda done, total: calls.append((done, total)))
    assert report.complete and report.rows == 1000 and report.failed == 0
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == 1000 and {t for _, t in calls} == {1000}
    steps = [b - a for a, b in zip(done, done[1:]) if b > a]
    assert len(steps) > 4 and min(steps) < 500, calls  # batches of 50, not files of 500
