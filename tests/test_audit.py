"""The audit trail: chained HMACs catch edits, deletions, insertions and reordering."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import time

import pytest

import engine
from engine import audit

from forking import fork_while_busy

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


def test_a_wrong_key_is_named_as_such_not_as_every_entry_edited(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path)
    result = audit.verify(path, os.urandom(32))
    assert not result.ok and result.wrong_key and result.head is None
    assert len(result.problems) == 1 and "key does not match" in result.problems[0][1]
    assert audit.verify(path, KEY).wrong_key is False
    # one edited entry (first or any) is an edit: the rest and the head still authenticate
    content = lines(path)
    for at in (0, 5):
        edited = list(content)
        entry = json.loads(edited[at])
        entry["details"]["records"] = 7
        edited[at] = (json.dumps(entry, sort_keys=True) + "\n").encode()
        path.write_bytes(b"".join(edited))
        result = audit.verify(path, KEY)
        assert not result.wrong_key and result.first_bad_line == at + 1
        assert "edited" in result.problems[0][1]
    # every line replaced while the head still authenticates: the key is right, entries are not
    path.write_bytes(b"".join(content))
    other = tmp_path / "other.jsonl"
    write_log_with(other, os.urandom(32))
    path.write_bytes(other.read_bytes())
    result = audit.verify(path, KEY)
    assert not result.wrong_key and all("edited" in r for n, r in result.problems[:-1])


def write_log_with(path, key, n=10, tag="a"):
    log = audit.AuditLog(path, key, fsync=False)
    for i in range(n):
        log.key_access(key_version=1, operation=f"{tag}{i}", records=i)
    return log


@pytest.mark.parametrize("at", [0, 1, 4, 9])
def test_a_line_spliced_from_another_log_under_the_same_key_breaks_the_chain(tmp_path, at):
    """Its MAC is genuine and its sequence number the expected one: only its link to the
    previous entry shows that it belongs to another chain."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_log_with(a, KEY, tag="a")
    write_log_with(b, KEY, tag="b")
    spliced = lines(a)
    theirs = lines(b)
    assert json.loads(theirs[at])["seq"] == json.loads(spliced[at])["seq"] == at + 1
    spliced[at] = theirs[at]
    a.write_bytes(b"".join(spliced))
    result = audit.verify(a, KEY)
    assert not result.ok and not result.wrong_key
    # the spliced line does not link to the one before it (entry 1 links to the genesis value,
    # as every first entry does), and the next line does not link to the spliced one
    expected = [at + 1, at + 2] if 0 < at < len(spliced) - 1 else [at + 1] if at else [2]
    broken = [n for n, reason in result.problems if "does not link" in reason]
    assert broken == expected, result.problems
    if at == len(spliced) - 1:  # the newest: the head record names another entry
        assert any("differs from the head record" in r for _, r in result.problems)
    # the same line from a log under another key is an edit
    c = tmp_path / "c.jsonl"
    write_log_with(c, os.urandom(32), tag="c")
    spliced[at] = lines(c)[at]
    a.write_bytes(b"".join(spliced))
    assert "edited" in audit.verify(a, KEY).problems[0][1]


def test_an_unreadable_log_is_its_own_error(tmp_path):
    with pytest.raises(audit.AuditLogUnreadable, match="no audit log"):
        audit.verify(tmp_path / "missing.jsonl", KEY)
    with pytest.raises(audit.AuditLogUnreadable, match="cannot read"):
        audit.verify(tmp_path, KEY)


def test_audit_verify_exit_codes(tmp_path):
    """0 intact, 1 a problem (a wrong key said as such), 5 a log that cannot be read."""
    import subprocess
    import sys

    env = {**os.environ, "ENCRYPTION_MASTER_KEY": "audit-cli-master-key-0123456789-abcdef",
           "ENGINE_KEY_STATE_FILE": str(tmp_path / "keys.json"), "VAULT_ENABLED": "false",
           "ENCRYPTION_KDF_ITERATIONS": "1000", "ENGINE_AUDIT_LOG": str(tmp_path / "audit.jsonl")}

    def run(*args, **changes):
        return subprocess.run([sys.executable, "-m", "engine", "audit-verify", *args],
                              capture_output=True, text=True, env={**env, **changes}, timeout=120)

    engine.EncryptionService(engine.EnvironmentKeyProvider(env=env), metrics=False,
                             audit=None).encrypt_token("x")
    from engine.service import _audit_from_environment

    provider = engine.EnvironmentKeyProvider(env=env)
    _audit_from_environment(provider, env).key_access(1, "encrypt")
    assert run(str(tmp_path / "audit.jsonl")).returncode == 0
    for missing in (tmp_path / "nope.jsonl", tmp_path):
        r = run(str(missing))
        assert r.returncode == 5 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    # a log written under another key (a second deployment's): said, exit 1
    other = tmp_path / "other.jsonl"
    write_log_with(other, os.urandom(32))
    r = run(str(other), "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["wrong_key"]
    # another master key beside this state file: refused before anything is derived, exit 3
    r = run(str(tmp_path / "audit.jsonl"), ENCRYPTION_MASTER_KEY="another-master-key-0123456789-xyz")
    assert r.returncode == 3 and "MasterKey" not in r.stderr and "match" in r.stderr


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


# ---- the head record: truncation, garbled lines, crashes, external anchors ----

def head_file(path):
    return path.with_name(path.name + ".head")


def reasons(result):
    return [reason for _, reason in result.problems]


def test_head_record_names_the_newest_entry(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path)
    newest = list(audit.read_entries(path))[-1]
    result = audit.verify(path, KEY)
    assert result.ok and result.head == audit.AuditHead(11, newest["mac"])
    assert str(result.head) == f"11:{newest['mac']}"
    assert audit.AuditHead.parse(str(result.head)) == audit.AuditHead.parse(
        {"seq": 11, "mac": newest["mac"]}) == result.head
    head = head_file(path)
    assert head.stat().st_size == 2 * audit.HEAD_SLOT_BYTES
    assert stat.S_IMODE(head.stat().st_mode) == 0o600
    assert KEY.hex() not in head.read_text()


@pytest.mark.parametrize("keep", [10, 8, 1, 0])
def test_removing_the_newest_entries_is_found(tmp_path, keep):
    path = tmp_path / "audit.jsonl"
    write_log(path)
    path.write_bytes(b"".join(lines(path)[:keep]))
    result = audit.verify(path, KEY)
    assert result.problems == [(keep + 1, "the log ends before entry 11, named by the head record: "
                                          "its newest entries were removed (truncated)")]


def test_a_deleted_log_beside_its_head_is_found(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path)
    path.unlink()
    result = audit.verify(path, KEY)
    assert not result.ok and "truncated" in result.problems[0][1] and result.entries == 0
    head_file(path).unlink()
    with pytest.raises(audit.AuditLogUnreadable, match="no audit log"):
        audit.verify(path, KEY)


@pytest.mark.parametrize("keep", [7, 0])
def test_a_writer_continues_a_truncated_chain_from_its_head_and_says_so(tmp_path, keep):
    path = tmp_path / "audit.jsonl"
    log = write_log(path)
    path.write_bytes(b"".join(lines(path)[:keep]))
    log.key_access(4, "encrypt")
    audit.AuditLog(path, KEY, fsync=False).key_access(5, "encrypt")
    entries = list(audit.read_entries(path))
    marker = entries[keep]
    assert marker["event"] == audit.AUDIT_LOG_TRUNCATED and marker["seq"] == 12
    assert marker["details"]["head_seq"] == 11 and marker["details"]["log_bytes"] < marker[
        "details"]["head_bytes"]
    assert [e["seq"] for e in entries[keep:]] == [12, 13, 14]
    result = audit.verify(path, KEY)
    assert [n for n, _ in result.problems] == [keep + 1, keep + 1]
    assert "chain broken: expected entry " + str(keep + 1) in result.problems[0][1]
    assert "shorter than its head record" in result.problems[1][1]
    assert result.head.seq == 14  # the head record agrees with the log again


def test_a_missing_head_beside_a_log_is_reported_and_then_recorded_for_ever(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path)
    head_file(path).unlink()
    result = audit.verify(path, KEY)
    assert result.problems == [(12, "no head record beside the log (written before head records "
                                    "existed, or deleted): truncation cannot be ruled out")]
    audit.AuditLog(path, KEY, fsync=False).key_access(1, "encrypt")
    entries = list(audit.read_entries(path))
    assert entries[11]["event"] == audit.AUDIT_HEAD_RECREATED
    assert entries[11]["details"] == {"head": "missing", "log_bytes": entries[11]["details"][
        "log_bytes"], "continued_from_seq": 11}
    assert [e["seq"] for e in entries] == list(range(1, 14))
    result = audit.verify(path, KEY)
    assert [n for n, _ in result.problems] == [12] and "no valid head record" in result.problems[0][1]


@pytest.mark.parametrize("damage", ["garbage", "other key"])
def test_an_invalid_head_is_reported_and_recreated(tmp_path, damage):
    path = tmp_path / "audit.jsonl"
    write_log(path)
    if damage == "garbage":
        head_file(path).write_bytes(os.urandom(2 * audit.HEAD_SLOT_BYTES))
    else:
        other = tmp_path / "other.jsonl"
        audit.AuditLog(other, os.urandom(32), fsync=False).key_access(1, "encrypt")
        head_file(path).write_bytes(head_file(other).read_bytes())
    assert reasons(audit.verify(path, KEY)) == [
        "the head record is damaged or was written under another key: truncation cannot be "
        "ruled out"]
    audit.AuditLog(path, KEY, fsync=False).key_access(1, "encrypt")
    entries = list(audit.read_entries(path))
    assert entries[11]["details"]["head"] == "invalid" and entries[12]["seq"] == 13
    assert [n for n, _ in audit.verify(path, KEY).problems] == [12]


def nested(depth):
    return b'{"seq": 1, "mac": "x", "details": ' + b"[" * depth + b"]" * depth + b"}"


GARBLED = {
    "torn line": b'{"details": {"key_version": 1}, "event": "KEY_ACC',
    "blank line": b"\n",
    "not json": b"hello\n",
    "deep list": b"[" * 100_000,
    "deep object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"\n",
    "deep details": nested(50_000) + b"\n",
    "json array": b"[1, 2, 3]\n",
    "huge line": b"x" * (audit.MAX_LINE_BYTES + 10),
}


@pytest.mark.parametrize("garbage", GARBLED.values(), ids=GARBLED.keys())
def test_a_garbled_last_line_never_wedges_writers_and_is_reported(tmp_path, garbage):
    path = tmp_path / "audit.jsonl"
    write_log(path)
    with open(path, "ab") as f:
        f.write(garbage)
    log = audit.AuditLog(path, KEY, fsync=False)
    log.key_access(2, "decrypt")
    log.key_access(3, "decrypt")
    result = audit.verify(path, KEY)
    assert result.problems == [(12, "not a valid audit entry")]
    assert result.entries == 14 and result.head.seq == 13
    with pytest.raises(audit.AuditError, match="line 12 "):
        list(audit.read_entries(path))


def test_verification_goes_on_past_a_bad_line(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path)
    content = lines(path)
    entry = json.loads(content[7])
    entry["event"] = "KEY_DEPRECATED"
    content[7] = (json.dumps(entry, sort_keys=True) + "\n").encode()
    content.insert(3, b"[" * 100_000 + b"\n")
    path.write_bytes(b"".join(content))
    assert audit.verify(path, KEY).problems == [(4, "not a valid audit entry"),
                                                (9, "MAC mismatch: the entry was edited")]


def test_a_flood_of_bad_lines_is_cut_short(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path, n=0)
    with open(path, "ab") as f:
        f.write(b"junk\n" * 1000)
    result = audit.verify(path, KEY)
    assert len(result.problems) == audit.MAX_PROBLEMS + 1
    assert result.problems[-1][1] == "too many problems: verification stopped here"


@pytest.mark.parametrize("torn", [False, True], ids=["between the two writes", "mid-line"])
def test_a_crash_during_an_append_is_written_past(tmp_path, torn):
    """The states a crash leaves: the newest line written but not its head (a SIGKILL between
    the two writes), or only part of that line too (power loss, a full disk)."""
    path = tmp_path / "audit.jsonl"
    log = write_log(path)
    before = head_file(path).read_bytes()
    log.key_access(7, "encrypt")
    head_file(path).write_bytes(before)
    if torn:
        path.write_bytes(path.read_bytes()[:-40])
    else:
        assert audit.verify(path, KEY).ok  # a log ahead of its head is fine
    log.key_access(8, "encrypt")
    result = audit.verify(path, KEY)
    if torn:
        assert result.problems == [(12, "not a valid audit entry")] and result.head.seq == 12
    else:
        assert result.ok and [e["seq"] for e in audit.read_entries(path)] == list(range(1, 14))


def test_a_torn_head_slot_falls_back_to_the_other(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = write_log(path)  # the newest entry is 11: slot 1
    head = bytearray(head_file(path).read_bytes())
    head[audit.HEAD_SLOT_BYTES + 20:] = os.urandom(audit.HEAD_SLOT_BYTES - 20)
    head_file(path).write_bytes(bytes(head))
    assert audit.verify(path, KEY).ok  # slot 0 holds entry 10; the log is one entry ahead
    log.key_access(9, "encrypt")
    log.key_access(9, "encrypt")
    result = audit.verify(path, KEY)
    assert result.ok and result.head.seq == 13


def test_an_external_anchor_catches_a_rolled_back_head(tmp_path):
    """Whoever can write the directory can put back an old head with a log cut to match it:
    only an anchor kept elsewhere sees that."""
    path = tmp_path / "audit.jsonl"
    log = write_log(path)
    old_log, old_head = path.read_bytes(), head_file(path).read_bytes()
    log.key_access(1, "encrypt")
    anchor = audit.verify(path, KEY).head
    path.write_bytes(old_log)
    head_file(path).write_bytes(old_head)
    assert audit.verify(path, KEY).ok
    for form in (anchor, str(anchor), {"seq": anchor.seq, "mac": anchor.mac}):
        result = audit.verify(path, KEY, expect_head=form)
        assert reasons(result) == ["the log ends before entry 12, named by the expected head: "
                                   "its newest entries were removed (truncated)"]


def test_an_external_anchor_catches_a_rewritten_log(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path)
    anchor = audit.verify(path, KEY).head
    path.unlink()
    head_file(path).unlink()
    write_log(path)  # same key, same number of entries, other timestamps
    result = audit.verify(path, KEY, expect_head=anchor)
    assert result.problems == [(11, "entry 11 differs from the expected head: the log was rewritten")]
    older = audit.AuditHead(5, anchor.mac)
    assert audit.verify(path, KEY, expect_head=older).first_bad_line == 5


@pytest.mark.parametrize("bad", [None, 5, "5", "x:" + "0" * 64, "5:" + "0" * 63, "5:" + "A" * 64,
                                 "-1:" + "0" * 64, "\u00b2:" + "0" * 64, {"seq": True, "mac": "0" * 64},
                                 {"seq": 1, "mac": "0" * 64, "extra": 1}])
def test_a_malformed_expected_head_is_refused(tmp_path, bad):
    path = tmp_path / "audit.jsonl"
    write_log(path, n=1)
    with pytest.raises(engine.InvalidArgument, match="an audit head is"):
        audit.verify(path, KEY, expect_head=bad if bad is not None else [])


# ---- every field is under the MAC ----

def edited(value):
    """Another value of the same JSON type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value[:-1] + ("0" if value[-1:] != "0" else "1")
    if isinstance(value, dict):
        return {**value, "records": value.get("records", 0) + 1}
    raise AssertionError(value)


ENTRY_FIELDS = ["seq", "ts", "event", "pid", "host", "details", "prev", "mac"]


def test_the_fields_tested_are_all_the_fields_an_entry_has(tmp_path):
    entry = audit.AuditLog(tmp_path / "a.jsonl", KEY, fsync=False).key_access(1, "encrypt")
    assert sorted(entry) == sorted(ENTRY_FIELDS)
    assert list(audit.read_entries(tmp_path / "a.jsonl")) == [entry]


@pytest.mark.parametrize("field", ENTRY_FIELDS + ["+added", "-details", "-host"])
def test_an_edit_of_any_one_field_fails_the_mac(tmp_path, field):
    path = tmp_path / "audit.jsonl"
    write_log(path)
    content = lines(path)
    entry = json.loads(content[5])
    if field == "+added":
        entry["note"] = "harmless?"
    elif field.startswith("-"):
        del entry[field[1:]]
    else:
        entry[field] = edited(entry[field])
    content[5] = (json.dumps(entry, sort_keys=True) + "\n").encode()
    path.write_bytes(b"".join(content))
    result = audit.verify(path, KEY)
    assert result.problems[0] == (6, "MAC mismatch: the entry was edited")


def rewrite_head_slots(path, change):
    data = head_file(path).read_bytes()
    slots = []
    for i in (0, 1):
        record = json.loads(data[i * audit.HEAD_SLOT_BYTES:(i + 1) * audit.HEAD_SLOT_BYTES])
        change(record)
        text = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
        slots.append(text.ljust(audit.HEAD_SLOT_BYTES - 1) + b"\n")
    head_file(path).write_bytes(b"".join(slots))


@pytest.mark.parametrize("field", ["seq", "mac", "size", "hmac"])
def test_an_edit_of_any_one_head_field_fails_the_head_mac(tmp_path, field):
    path = tmp_path / "audit.jsonl"
    write_log(path)
    rewrite_head_slots(path, lambda record: record.update({field: edited(record[field])}))
    assert reasons(audit.verify(path, KEY)) == [
        "the head record is damaged or was written under another key: truncation cannot be "
        "ruled out"]


# ---- several writers at once, and writers killed mid-append ----

def test_appends_from_processes_and_threads_keep_one_chain_and_one_head(tmp_path):
    import threading

    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, 150)) for _ in range(3)]
    for p in procs:
        p.start()
    shared = audit.AuditLog(path, KEY, fsync=False)
    threads = [threading.Thread(target=lambda: [shared.key_access(1, "encrypt") for _ in range(150)])
               for _ in range(2)]
    for t in threads:
        t.start()
    seen = []
    while any(p.is_alive() for p in procs) or any(t.is_alive() for t in threads):
        seen.append(audit.verify(path, KEY))  # a live log verifies as it was when verify began
    for t in threads:
        t.join()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert seen and all(r.ok for r in seen), next(r.problems for r in seen if not r.ok)
    result = audit.verify(path, KEY)
    assert result.ok and result.entries == result.head.seq == 750


def _append_forever(path):
    log = audit.AuditLog(path, KEY)  # fsync on: the kill lands inside an append more often
    while True:
        log.key_access(1, "encrypt")


def test_writers_killed_in_the_middle_of_appends_leave_a_log_that_verifies(tmp_path):
    """SIGKILL at random moments while two processes append. Each kill loses at most the entry
    being written (a write(2) to a regular file is not torn by a signal), so the log still
    verifies and later writers carry on; the head may lag the log by that one entry."""
    import random
    import signal

    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(os.getpid())
    for _ in range(12):
        procs = [ctx.Process(target=_append_forever, args=(path,)) for _ in range(2)]
        for p in procs:
            p.start()
        time.sleep(rng.uniform(0.02, 0.1))
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
        for p in procs:
            p.join()
            assert p.exitcode == -signal.SIGKILL
    audit.AuditLog(path, KEY, fsync=False).key_access(2, "decrypt")
    result = audit.verify(path, KEY)
    assert result.ok, result.problems[:3]
    assert result.entries == result.head.seq > 12


def test_nesting_around_the_recursion_limit_never_raises(tmp_path):
    """Depths that json can read but not write back (for the MAC) are bad lines too."""
    import sys

    path = tmp_path / "audit.jsonl"
    log = write_log(path, n=0)
    limit = sys.getrecursionlimit()
    with open(path, "ab") as f:
        for depth in range(limit - 60, limit + 5, 3):
            f.write(b'{"seq": 2, "prev": "%s", "mac": "%s", "details": %s}\n'
                    % (b"0" * 64, b"0" * 64, b"[" * depth + b"]" * depth))
    log.key_access(1, "encrypt")
    result = audit.verify(path, KEY)
    deep = [reason for line, reason in result.problems if line < result.entries]
    assert len(deep) == result.entries - 2
    assert set(deep) <= {"not a valid audit entry", "MAC mismatch: the entry was edited"}
    assert result.head.seq == 2  # the writer continued from its head past all of them


@pytest.mark.forks_with_threads
def test_a_child_forked_while_another_thread_appends_can_append(tmp_path):
    log = audit.AuditLog(tmp_path / "fork.jsonl", KEY, fsync=False)
    fork_while_busy(lambda: log.key_access(1, "encrypt"), lambda: log.key_access(2, "decrypt"),
                    forks=30, what="the audit lock")
    assert audit.verify(tmp_path / "fork.jsonl", KEY).ok
