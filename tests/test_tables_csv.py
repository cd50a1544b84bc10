"""CSV files through encrypt_columns_file/decrypt_columns_file and the command line: every value
comes back byte for byte as the text it was (``0.0`` stays ``0.0``, ``007`` keeps its zeros, a
number is never quoted), NULL (an empty field) and the empty string (``""``) stay apart, and
delimiter, quote and header options work as pyarrow's CSV reader has them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine import EncryptionService, StaticKeyProvider, tables
from engine.tables import CsvDialect

TEXT = (
    'id,amount,zip,name,note\n'
    '1,0.0,007,"Doe, Jane",\n'
    '2,1e5,12345,plain,""\n'
    '3,-0,00000,"say ""hi""",multi\n'
    '4,3.14159265358979323846,1,x,"line\nbreak"\n'
)


@pytest.fixture(scope="module")
def service():
    return EncryptionService(StaticKeyProvider({1: os.urandom(32)}), metrics=False)


def test_values_come_back_byte_for_byte(service, tmp_path):
    src, enc, back = tmp_path / "in.csv", tmp_path / "enc.csv", tmp_path / "back.csv"
    src.write_text(TEXT)
    cols = ["amount", "zip", "name", "note"]
    report = tables.encrypt_columns_file(str(src), str(enc), cols, aad_template="r:{id}:{column}",
                                         service=service)
    assert report["rows"] == 4
    sealed = enc.read_text()
    assert "Jane" not in sealed and "3.14159" not in sealed and sealed.count("ec1:") == 15
    assert sealed.splitlines()[1].endswith(",")  # NULL stays an empty field, never encrypted
    tables.decrypt_columns_file(str(enc), str(back), cols, aad_template="r:{id}:{column}",
                                service=service)
    assert back.read_text() == TEXT


def test_delimiter_quote_and_header_options(service, tmp_path):
    text = "7;'a;b';0.50\n8;'it''s';-1\n"  # no header: columns f0, f1, f2
    src, enc, back = tmp_path / "in.csv", tmp_path / "enc.csv", tmp_path / "back.csv"
    src.write_text(text)
    dialect = CsvDialect(delimiter=";", quote="'", header=False)
    tables.encrypt_columns_file(str(src), str(enc), ["f1", "f2"], service=service, csv=dialect)
    assert enc.read_text().count(";") == 4 and "a;b" not in enc.read_text()
    tables.decrypt_columns_file(str(enc), str(back), ["f1", "f2"], service=service, csv=dialect)
    assert back.read_text() == text
    for bad in ({"delimiter": ",,"}, {"quote": "\n"}, {"delimiter": "'", "quote": "'"}):
        with pytest.raises(tables.InvalidArgument):
            CsvDialect(**bad)


def cli(*args, tmp_path):
    env = {**os.environ, "ENCRYPTION_MASTER_KEY": "csv-tables-master-key-0123456789-abc",
           "VAULT_ENABLED": "false", "ENGINE_KEY_STATE_FILE": str(tmp_path / "keys.json"),
           "ENCRYPTION_KDF_ITERATIONS": "1000"}
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)


def test_csv_options_and_exit_codes_on_the_command_line(tmp_path):
    (tmp_path / "in.csv").write_text("id|amount\n1|0.0\n2|\n3|2.50\n")
    opts = ["--column", "amount", "--delimiter", "|"]
    r = cli("encrypt-columns", "in.csv", "enc.csv", *opts, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    r = cli("decrypt-columns", "enc.csv", "back.csv", *opts, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back.csv").read_text() == (tmp_path / "in.csv").read_text()
    (tmp_path / "nohead.csv").write_text("1,x\n2,y\n")
    r = cli("encrypt-columns", "nohead.csv", "nohead.enc.csv", "--column", "f1", "--no-header",
            "--quote", "'", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / "nohead.enc.csv").read_text().splitlines()) == 2
    # bad usage, exit 2: a column never encrypted, a bad delimiter
    for args in (["decrypt-columns", "in.csv", "o.csv", "--column", "amount"],
                 ["encrypt-columns", "in.csv", "o.csv", "--column", "amount", "--delimiter",
                  "ab"]):
        r = cli(*args, tmp_path=tmp_path)
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, (args, r.stderr)
        assert not (tmp_path / "o.csv").exists()


def test_csv_files_of_earlier_releases_still_decrypt(service, tmp_path):
    """A CSV file of ``ef1:`` text tokens, as encrypt-columns wrote before the column format."""
    emails = ["a@example.com", "b@example.com"]
    tokens = service.encrypt_many(emails, aad=["u:1:email", "u:2:email"])
    (tmp_path / "old.csv").write_text(f"id,email\n1,{tokens[0]}\n2,{tokens[1]}\n3,\n")
    tables.decrypt_columns_file(str(tmp_path / "old.csv"), str(tmp_path / "back.csv"), ["email"],
                                aad_template="u:{id}:{column}", service=service)
    assert (tmp_path / "back.csv").read_text() == \
        "id,email\n1,a@example.com\n2,b@example.com\n3,\n"
