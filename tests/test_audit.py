"""The audit trail: chained HMACs catch edits, deletions, insertions and reordering."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat

import pytest

import engine
from engine import audit

KEY = os.urandom(32)


def write_log(path, n=10):
    log = audit.AuditLog(path, KEY, fsync=False)
    for i in range(n):
        log.key_access(key_version=1 + i % 3, operation="encrypt", records=1000 * i)
    log.record(audit.KEY_ROTATION, previous_version=1, new_version=2)
    return log


def lines(path):
    return path.read_bytes().splitlines(keepends=True)


def test_entries_are_chained_and_verify(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path)
    result = audit.verify(path, KEY)
    assert result.ok and result.entries == 11
    entries = list(audit.read_entries(path))
    assert [e["seq"] for e in entries] == list(range(1, 12))
    assert entries[0]["prev"] == audit.GENESIS and entries[1]["prev"] == entries[0]["mac"]
    assert entries[3]["details"] == {"key_version": 1, "operation": "encrypt", "records": 3000}
    assert entries[-1]["event"] == "KEY_ROTATION" and entries[0]["pid"] == os.getpid()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_edit_is_found_at_its_line(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path)
    content = lines(path)
    entry = json.loads(content[4])
    entry["details"]["records"] = 1
    content[4] = (json.dumps(entry, sort_keys=True) + "\n").encode()
    path.write_bytes(b"".join(content))
    result = audit.verify(path, KEY)
    assert not result.ok and result.first_bad_line == 5 and "edited" in result.problems[0][1]


@pytest.mark.parametrize("mutation", ["delete", "swap", "duplicate", "truncate-first"])
def test_deleted_or_reordered_lines_are_found(tmp_path, mutation):
    path = tmp_path / "audit.jsonl"
    write_log(path)
    content = lines(path)
    if mutation == "delete":
        del content[6]
        bad = 7
    elif mutation == "swap":
        content[2], content[3] = content[3], content[2]
        bad = 3
    elif mutation == "duplicate":
        content.insert(5, content[4])
        bad = 6
    else:
        del content[0]
        bad = 1
    path.write_bytes(b"".join(content))
    result = audit.verify(path, KEY)
    assert not result.ok and result.first_bad_line == bad and "chain broken" in result.problems[0][1]


def test_wrong_key_or_garbage_fails(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path)
    assert not audit.verify(path, os.urandom(32)).ok
    with open(path, "ab") as f:
        f.write(b"not json\n")
    result = audit.verify(path, KEY)
    assert result.first_bad_line == 12 and "not a valid" in result.problems[0][1]


def test_no_binary_details_and_key_length(tmp_path):
    log = audit.AuditLog(tmp_path / "a.jsonl", KEY)
    with pytest.raises(engine.InvalidArgument, match="never carry key material"):
        log.record(audit.KEY_ACCESS, key=b"\x00" * 32)
    with pytest.raises(engine.InvalidArgument):
        audit.AuditLog(tmp_path / "b.jsonl", b"short")
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(log)
    assert KEY.hex() not in repr(log)


def _append_many(path, n):
    log = audit.AuditLog(path, KEY, fsync=False)
    for i in range(n):
        log.key_access(key_version=1, operation="decrypt", records=i)


def test_appends_from_several_processes_keep_one_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, 200)) for _ in range(4)]
    for p in procs:
        p.start()
    _append_many(path, 200)
    for p in procs:
        p.join()
        assert p.exitcode == 0
    result = audit.verify(path, KEY)
    assert result.ok and result.entries == 1000


def test_a_log_written_by_another_writer_is_continued(tmp_path):
    path = tmp_path / "audit.jsonl"
    first = audit.AuditLog(path, KEY, fsync=False)
    second = audit.AuditLog(path, KEY, fsync=False)
    first.key_access(1, "encrypt")
    second.key_access(1, "encrypt")
    first.key_access(2, "decrypt")
    assert audit.verify(path, KEY).ok and audit.verify(path, KEY).entries == 3


def test_unwritable_log_is_a_typed_error(tmp_path):
    with pytest.raises(audit.AuditError, match="cannot open"):
        audit.AuditLog(tmp_path / "missing-dir" / "a.jsonl", KEY).record(audit.KEY_ACCESS)
