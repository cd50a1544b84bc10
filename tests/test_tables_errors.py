"""Table columns given what a hostile user or an unlucky operator gives them: values that are not
tokens, edited type metadata, duplicate or undecodable names, corrupt Arrow tables, and Parquet
and CSV files truncated, bit-flipped, random, empty, or not files at all. Every failure is a
typed error that names the column and row (and the file), one line and a meaningful exit code
from the command line, never a value, a traceback or a crash."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

import engine
from engine import EncryptionService, StaticKeyProvider, tables

TEMPLATE = "users:{id}:{column}"
KEY = bytes(range(32))


@pytest.fixture
def service():
    return EncryptionService(StaticKeyProvider({1: KEY}), metrics=False)


def people(n=40):
    return pa.table({
        "id": pa.array(range(n), pa.int64()),
        "email": pa.array([None if i % 5 == 2 else f"user{i}@example.com" for i in range(n)]),
        "note": pa.array([f"note {i}" for i in range(n)]),
    })


def test_a_value_that_is_not_a_token_is_named_by_column_and_row(service):
    e = tables.encrypt_columns(people(), "email", service=service)
    emails = e.column("email").to_pylist()
    emails[13] = b"plain text, never encrypted"  # rows 2, 7, 12 are NULL before it
    emails[21] = b"also plain"
    bad = e.set_column(1, e.schema.field(1), pa.array(emails, pa.large_binary()))
    with pytest.raises(tables.ColumnNotTokens) as info:
        tables.decrypt_columns(bad, "email", service=service)
    err = info.value
    assert isinstance(err, engine.EnvelopeError) and (err.column, err.row, err.count) == ("email", 13, 2)
    assert "row index 13" in str(err) and "'email'" in str(err) and "plain" not in str(err)


def test_values_failing_authentication_are_named_by_their_rows(service):
    e = tables.encrypt_columns(people(), "email", aad_template=TEMPLATE, service=service)
    ids = list(range(40))
    ids[16], ids[18] = 18, 16  # two rows' AAD swapped; row 17 is NULL between them
    moved = e.set_column(0, "id", pa.array(ids, pa.int64()))
    with pytest.raises(tables.ColumnInvalidTag) as info:
        tables.decrypt_columns(moved, "email", aad_template=TEMPLATE, service=service)
    assert isinstance(info.value, engine.BatchInvalidTag)
    assert info.value.failed.tolist() == [16, 18] and info.value.row == 16
    assert "row index 16 and 1 more" in str(info.value)


def legacy_tokens(service, t, name):
    """``t`` with column ``name`` as releases before the column format wrote it: text tokens
    (``ef1:``), the original type in the field metadata."""
    tokens = pa.array(service.encrypt_many(t.column(name).to_pylist()), pa.large_string())
    field = pa.field(name, pa.large_string(),
                     metadata={tables.ORIGINAL_TYPE_KEY: str(t.schema.field(name).type).encode()})
    return t.set_column(t.schema.get_field_index(name), field, tokens)


def test_edited_type_metadata_and_hostile_schemas(service):
    t = pa.table({"id": pa.array(range(6), pa.int64()),
                  "blob": pa.array([b"\xff\xfe" + bytes([i]) for i in range(6)], pa.binary())})
    e = tables.encrypt_columns(t, "blob", service=service)
    assert tables.decrypt_columns(e, "blob", service=service).equals(t)
    # the type the field metadata records edited: the values' own type rules (it is bound)
    told = e.schema.field("blob").with_metadata({tables.COLUMN_TYPE_KEY: b"bA=="})  # "l"
    assert tables.decrypt_columns(e.set_column(1, told, e.column(1)), "blob",
                                  service=service).equals(t)
    # text tokens of earlier releases, their recorded type edited to text: binary plaintext
    # is not UTF-8
    e = legacy_tokens(service, t, "blob")
    assert tables.decrypt_columns(e, "blob", service=service).equals(t)
    f = e.schema.field("blob")
    lying = e.set_column(1, f.with_metadata({tables.ORIGINAL_TYPE_KEY: b"string"}), e.column(1))
    with pytest.raises(tables.ColumnNotText) as info:
        tables.decrypt_columns(lying, "blob", service=service)
    assert info.value.row == 0 and isinstance(info.value, engine.InvalidArgument)
    for metadata in (b"\xff\xfe", b"int64", b""):
        odd = e.set_column(1, f.with_metadata({tables.ORIGINAL_TYPE_KEY: metadata}), e.column(1))
        with pytest.raises(engine.InvalidArgument, match="original type"):
            tables.decrypt_columns(odd, "blob", service=service)
    # an "encrypted" column that is not text at all
    numbers = e.set_column(1, pa.field("blob", pa.int64(), metadata=f.metadata),
                           pa.array(range(6), pa.int64()))
    with pytest.raises(tables.ColumnNotEncrypted):
        tables.decrypt_columns(numbers, "blob", service=service)
    # two columns of one name: pyarrow's lookup by name would give the last column of the table
    twice = pa.table([t.column(1), t.column(0), pa.array(["secret"] * 6)],
                     names=["blob", "id", "blob"])
    for table in (twice, twice.to_batches()[0]):  # a record batch had its last column encrypted
        with pytest.raises(engine.InvalidArgument, match="2 columns named 'blob'"):
            tables.encrypt_columns(table, "blob", service=service)
    with pytest.raises(engine.InvalidArgument, match="columns named 'id'"):
        tables.encrypt_columns(pa.table([t.column(0), t.column(1), t.column(0)],
                                        names=["id", "blob", "id"]), "blob",
                               aad_template=TEMPLATE, service=service)
    with pytest.raises(engine.InvalidArgument, match="named twice"):
        tables.encrypt_columns(t, ["blob", "blob"], service=service)
    # a template over a column that cannot be text, and names that are not UTF-8
    nested = t.append_column("tags", pa.array([[1, 2]] * 6))
    with pytest.raises(engine.InvalidArgument, match="cannot be written as text"):
        tables.encrypt_columns(nested, "blob", aad_template="{tags}", service=service)
    with pytest.raises(engine.InvalidArgument, match="column names are text"):
        tables.encrypt_columns(t, "bl\udcffob", service=service)
    with pytest.raises(engine.InvalidArgument, match="not valid text"):
        tables.encrypt_columns(t, "blob", aad_template="x\udcff{id}", service=service)


def test_a_corrupt_table_is_refused_before_any_computation(service):
    e = tables.encrypt_columns(people(), "email", service=service)
    column = e.column("email").chunk(0)
    validity, offsets, data = column.buffers()
    bad_offsets = np.frombuffer(offsets, np.int64).copy()
    bad_offsets[5] = 1 << 40  # points far outside the data
    broken = pa.Array.from_buffers(column.type, len(column),
                                   [validity, pa.py_buffer(bad_offsets), data],
                                   null_count=column.null_count)
    corrupt = e.set_column(1, e.schema.field(1), broken)
    for call in (tables.decrypt_columns, tables.encrypt_columns):
        with pytest.raises(engine.InvalidArgument, match="not valid Arrow data"):
            call(corrupt, "note" if call is tables.encrypt_columns else "email",
                 service=service)


IPC_CHILD = textwrap.dedent("""
    import json, sys
    import pyarrow as pa, pyarrow.ipc as ipc
    import engine
    from engine import EncryptionService, StaticKeyProvider, tables
    svc = EncryptionService(StaticKeyProvider({1: bytes(range(32))}), metrics=False)
    for line in sys.stdin:
        blob = bytes.fromhex(line.strip())
        try:
            table = ipc.open_file(pa.BufferReader(blob)).read_all()
        except (pa.ArrowException, OSError):
            print("unreadable", flush=True)
            continue
        for call, column in ((tables.decrypt_columns, "email"), (tables.encrypt_columns, "note")):
            try:
                call(table, column, aad_template="users:{id}:{column}", service=svc)
                print("ok", flush=True)
            except engine.EngineError as exc:
                print(type(exc).__name__, flush=True)
""")


def test_corrupt_arrow_ipc_tables_never_crash(service, tmp_path):
    """Bit flips in an Arrow IPC file a user was sent: each table is refused or decrypts, in a
    child process, so that a crash fails this test instead of killing pytest."""
    e = tables.encrypt_columns(people(200), "email", aad_template=TEMPLATE, service=service)
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, e.schema) as w:
        w.write_table(e)
    blob = sink.getvalue().to_pybytes()
    rng = random.Random(19)
    cases = []
    for _ in range(300):
        b = bytearray(blob)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        cases.append(b.hex())
    (tmp_path / "child.py").write_text(IPC_CHILD)
    r = subprocess.run([sys.executable, str(tmp_path / "child.py")], input="\n".join(cases) + "\n",
                       capture_output=True, text=True, timeout=600)
    outcomes = r.stdout.split()
    assert r.returncode == 0, (r.returncode, len(outcomes), r.stderr[-2000:])
    allowed = {"unreadable", "ok", "InvalidArgument", "InvalidArgumentType", "ColumnNotTokens",
               "ColumnInvalidTag", "ColumnNotText", "UnknownKeyVersion", "MalformedEnvelope",
               "ColumnNotEncrypted", "ColumnTypeUnreadable"}
    assert set(outcomes) <= allowed, set(outcomes) - allowed
    assert outcomes.count("InvalidArgument") > 10  # the corrupt ones are refused, not computed on


# ---------------------------------------------------------------- files through the command line

CLI_CHILD = textwrap.dedent("""
    import contextlib, io, json, os, sys
    from engine import cli
    for line in sys.stdin:
        case = json.loads(line)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = cli.main(case["argv"])
            except SystemExit as exc:
                code = exc.code
            except BaseException as exc:
                import traceback
                code = "escaped " + type(exc).__name__
                print(traceback.format_exc(), file=sys.__stderr__)
        print(json.dumps({"name": case["name"], "code": code, "stderr": err.getvalue(),
                          "out": os.path.exists(case["argv"][2])}), flush=True)
""")


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "ENCRYPTION_MASTER_KEY": "columns-fuzz-master-key-0123456789",
            "VAULT_ENABLED": "false", "ENGINE_KEY_STATE_FILE": str(tmp_path / "keys.json"),
            "ENCRYPTION_KDF_ITERATIONS": "1000"}


def cli(*args, env):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def _mutations(rng: random.Random, name: str, blob: bytes, count: int):
    yield f"{name} empty", b""
    yield f"{name} random", rng.randbytes(len(blob))
    for i in range(count):
        kind = i % 3
        if kind == 0:
            yield f"{name} truncated at {(at := rng.randrange(len(blob)))}", blob[:at]
        elif kind == 1:
            b = bytearray(blob)
            for _ in range(rng.randint(1, 3)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            yield f"{name} flipped {i}", bytes(b)
        else:
            at = rng.randrange(len(blob))
            yield f"{name} overwritten at {at}", blob[:at] + rng.randbytes(16) + blob[at + 16:]


def test_column_files_fuzzed_through_the_command_line(env, tmp_path):
    t = people(120)
    pq.write_table(t, tmp_path / "plain.parquet", row_group_size=50)
    pacsv.write_csv(t, tmp_path / "plain.csv")
    for fmt in ("parquet", "csv"):
        r = cli("encrypt-columns", str(tmp_path / f"plain.{fmt}"), str(tmp_path / f"enc.{fmt}"),
                "--column", "email", "--aad-template", TEMPLATE, env=env)
        assert r.returncode == 0, r.stderr
    rng = random.Random(13)
    cases = []
    for fmt in ("parquet", "csv"):
        blob = (tmp_path / f"enc.{fmt}").read_bytes()
        extra = [(f"{fmt} plain text", (tmp_path / f"plain.{fmt}").read_bytes())]
        if fmt == "csv":
            extra += [("csv header not UTF-8", blob.replace(b"email", b"em\xffail", 1)),
                      ("csv cell not UTF-8", blob.replace(b"ec1:", b"e\xff1:", 1)),
                      ("csv more fields", blob.replace(b"\n", b",x,y\n", 3)),
                      ("csv open quote", blob.replace(b"\n", b'\n"', 2))]
        for name, content in [*_mutations(rng, fmt, blob, 60), *extra]:
            path = tmp_path / f"case{len(cases)}.{fmt}"
            path.write_bytes(content)
            cases.append({"name": name, "argv": ["decrypt-columns", str(path),
                                                 str(tmp_path / f"out{len(cases)}.{fmt}"),
                                                 "--column", "email", "--aad-template", TEMPLATE]})
    cases.append({"name": "a directory", "argv": ["decrypt-columns", str(tmp_path), str(
        tmp_path / "o.parquet"), "--column", "email", "--format", "parquet"]})
    cases.append({"name": "missing", "argv": ["decrypt-columns", str(tmp_path / "nope.parquet"),
                                              str(tmp_path / "o2.parquet"), "--column", "email"]})
    (tmp_path / "child.py").write_text(CLI_CHILD)
    r = subprocess.run([sys.executable, str(tmp_path / "child.py")],
                       input="\n".join(json.dumps(c) for c in cases) + "\n",
                       capture_output=True, text=True, timeout=900, env=env)
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 0 and len(results) == len(cases), (r.returncode, r.stderr[-2000:])
    escaped = [res for res in results if str(res["code"]).startswith("escaped")]
    assert not escaped, (escaped, r.stderr[-6000:])
    secrets = [f"user{i}@example.com" for i in range(120)]
    seen = set()
    for res in results:
        name, code, err = res["name"], res["code"], res["stderr"]
        seen.add(code)
        assert code in (0, 1, 5) or (code == 2 and "case" in err and "column" in err), (
            name, code, err)  # 2: a bit flip renamed a column the arguments name
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, (name, err)
        assert not any(s in err for s in secrets) and "ec1:" not in err, (name, err)
        assert res["out"] == (code == 0), (name, code)
        if ", row index " in err:  # a column error: the file, the column and the row
            assert "case" in err and "column 'email', row index" in err, (name, err)
    by_name = {res["name"]: res for res in results}
    assert by_name["a directory"]["code"] == 5 and by_name["missing"]["code"] == 5
    for fmt in ("parquet", "csv"):
        assert by_name[f"{fmt} empty"]["code"] == 1
        plain = by_name[f"{fmt} plain text"]  # a column never encrypted: bad usage
        assert plain["code"] == 2 and "column 'email' holds no encrypted" in plain["stderr"]
    assert "not UTF-8" in by_name["csv header not UTF-8"]["stderr"]
    assert seen >= {0, 1, 5}


def test_column_file_errors_exit_codes_in_a_real_process(env, tmp_path):
    t = people(30)
    pq.write_table(t, tmp_path / "plain.parquet")
    (tmp_path / "bad.csv").write_bytes(b"id,em\xffail\n1,a\n")
    (tmp_path / "short.parquet").write_bytes((tmp_path / "plain.parquet").read_bytes()[:100])
    for args, code, words in (
            (["plain.parquet", "o.parquet"], 2, "plain.parquet: column 'email' holds no enc"),
            (["short.parquet", "o.parquet"], 1, "short.parquet: not a Parquet file"),
            (["bad.csv", "o.csv"], 1, "bad.csv: a column name is not UTF-8"),
            ([".", "o.parquet", "--format", "parquet"], 5, "directory")):
        r = subprocess.run([sys.executable, "-m", "engine", "decrypt-columns", *args, "--column",
                            "email"], capture_output=True, text=True, env=env, cwd=tmp_path,
                           timeout=300)
        assert r.returncode == code and words in r.stderr, (args, r.returncode, r.stderr)
        assert len(r.stderr.splitlines()) == 1 and not (tmp_path / args[1]).exists()
