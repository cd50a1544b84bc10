"""Parquet Modular Encryption under the engine's keys (docs/pme.md): round trips, key versions
and rotation, layout kept by rewrites, the size goal, and readers the engine did not write
(DuckDB given the data key; a minimal KmsClient talking to OpenBao Transit with hvac)."""

from __future__ import annotations

import base64
import datetime
import io
import json
import os
import pickle
import time

import duckdb
import hvac
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings, strategies as st

import engine
from bench.bench_pme import make_table
from engine.columns import pme
from engine.columns.parquet import ParquetLayout
from engine.columns.parquet_footer import ParquetFooterError, read_footer_crypto
from engine.columns.pme import (
    EngineKmsClient,
    PmeKeys,
    decrypt_parquet_file,
    encrypt_parquet_file,
    master_key_id,
    master_key_version,
    pme_key_info,
    read_pme,
    write_pme,
)
from engine.keys import KeyVersionNotUsable, UnknownKeyVersion
from engine.parquet_pages import PageFormatError, column_pages

KEY1, KEY2 = os.urandom(32), os.urandom(32)


def _service(provider=None):
    return engine.EncryptionService(provider or engine.StaticKeyProvider({1: KEY1}), metrics=False)


@pytest.fixture
def service():
    return _service()


@pytest.fixture
def table():
    n = 2000
    return pa.table({
        "id": pa.array(np.arange(n)),
        "email": pa.array([f"user{i}@example.com" for i in range(n)]),
        "amount": pa.array(np.linspace(0, 1, n)),
        "nested": pa.array([{"a": i, "b": [str(i)]} for i in range(n)]),
    })


def test_a_uniformly_encrypted_file_round_trips_and_names_the_current_version(tmp_path, service,
                                                                               table):
    path = tmp_path / "u.parquet"
    write_pme(table, path, service=service, compression="zstd")
    assert read_pme(path, service=service).equals(table)
    info = pme_key_info(path)
    assert info.encrypted and info.encrypted_footer and info.algorithm == "AES_GCM_V1"
    assert info.footer.master_key_id == "engine-v1" and info.versions == {1}
    assert info.footer.double_wrapping and info.footer.kms_instance_id == "engine"
    with pytest.raises(OSError):  # no keys, no footer
        pq.read_table(path)


def test_chosen_columns_with_a_plaintext_footer(tmp_path, service, table):
    path = tmp_path / "c.parquet"
    write_pme(table, path, columns=["email", "nested.a"], plaintext_footer=True, service=service)
    info = pme_key_info(path)
    assert not info.encrypted_footer
    assert set(info.columns) == {"email", "nested.a"} and info.versions == {1}
    # readers without keys see the schema and the other columns
    assert pq.read_table(path, columns=["id", "amount"]).equals(table.select(["id", "amount"]))
    with pytest.raises(OSError):
        pq.read_table(path, columns=["email"])
    assert read_pme(path, service=service).equals(table)


def test_after_rotation_new_files_name_the_new_version_and_old_ones_still_read(tmp_path, table):
    provider = engine.StaticKeyProvider({1: KEY1})
    service = _service(provider)
    keys = PmeKeys(service)
    write_pme(table, tmp_path / "old.parquet", keys=keys)
    provider.create_version()
    write_pme(table, tmp_path / "new.parquet", keys=keys)  # a KEK cached for v1 is not reused
    assert pme_key_info(tmp_path / "old.parquet").versions == {1}
    assert pme_key_info(tmp_path / "new.parquet").versions == {2}
    for name in ("old", "new"):
        assert read_pme(tmp_path / f"{name}.parquet", keys=keys).equals(table)
    provider.purge(1)
    with pytest.raises(UnknownKeyVersion):
        read_pme(tmp_path / "old.parquet", service=service)


def test_encrypting_a_pme_file_again_moves_it_to_the_current_version(tmp_path, table):
    provider = engine.StaticKeyProvider({1: KEY1})
    service = _service(provider)
    write_pme(table, tmp_path / "v1.parquet", service=service)
    provider.create_version()
    encrypt_parquet_file(tmp_path / "v1.parquet", tmp_path / "v2.parquet", service=service)
    assert pme_key_info(tmp_path / "v2.parquet").versions == {2}
    provider.purge(1)
    assert read_pme(tmp_path / "v2.parquet", service=service).equals(table)


def test_the_kms_client_wraps_only_under_the_current_version(service):
    client = EngineKmsClient(service)
    wrapped = client.wrap_key(b"k" * 16, "engine-v1")
    assert wrapped.startswith("ef1:")  # one of the engine's own tokens
    assert client.unwrap_key(wrapped, "engine-v1") == b"k" * 16
    with pytest.raises(KeyVersionNotUsable):
        client.wrap_key(b"k" * 16, "engine-v2")
    for bad in ("v1", "engine-v0", "engine-v01", "engine-v4294967296", "", None):
        with pytest.raises(engine.InvalidArgument):
            master_key_version(bad)
    assert master_key_id(7) == "engine-v7" and master_key_version("engine-v7") == 7


def test_a_wrapped_key_is_bound_to_its_master_key_id():
    provider = engine.StaticKeyProvider({1: KEY1, 2: KEY2}, current=1)
    client = EngineKmsClient(_service(provider))
    wrapped = client.wrap_key(b"k" * 32, "engine-v1")
    provider.set_current(2)
    with pytest.raises(engine.InvalidTag):  # the token names v1: not v2's key
        client.unwrap_key(wrapped, "engine-v2")


def test_an_edited_master_key_id_in_the_file_fails_to_unwrap(tmp_path, table):
    provider = engine.StaticKeyProvider({1: KEY1, 2: KEY2}, current=1)
    service = _service(provider)
    path = tmp_path / "f.parquet"
    write_pme(table, path, service=service)
    raw = path.read_bytes()
    assert raw.count(b'"masterKeyID":"engine-v1"') == 1  # the footer key's material, in the clear
    path.write_bytes(raw.replace(b'"masterKeyID":"engine-v1"', b'"masterKeyID":"engine-v2"'))
    assert pme_key_info(path).versions == {2}
    with pytest.raises(engine.InvalidTag):
        read_pme(path, service=service)


def test_a_file_under_another_providers_keys_is_refused(tmp_path, service, table):
    write_pme(table, tmp_path / "f.parquet", service=service)
    stranger = _service(engine.StaticKeyProvider({1: KEY2}))
    with pytest.raises(engine.InvalidTag):
        read_pme(tmp_path / "f.parquet", service=stranger)


def _counting_unwraps(monkeypatch):
    count = [0]
    real = EngineKmsClient.unwrap_key

    def counting(self, wrapped, master):
        count[0] += 1
        return real(self, wrapped, master)

    monkeypatch.setattr(EngineKmsClient, "unwrap_key", counting)
    return count


def test_unwrapped_keys_live_no_longer_than_the_cache_lifetime(tmp_path, service, table,
                                                               monkeypatch):
    count = _counting_unwraps(monkeypatch)
    path = tmp_path / "f.parquet"
    write_pme(table, path, service=service)
    keys = PmeKeys(service, cache_lifetime=1.0)
    read_pme(path, keys=keys)
    read_pme(path, keys=keys)
    assert count[0] == 1  # double wrapping: the key-encryption key was cached
    time.sleep(1.1)
    read_pme(path, keys=keys)
    assert count[0] == 2
    keys.forget()
    read_pme(path, keys=keys)
    assert count[0] == 3
    nothing_kept = PmeKeys(service, cache_lifetime=datetime.timedelta(0))
    for _ in range(3):
        read_pme(path, keys=nothing_kept)
    assert count[0] == 6


def test_nothing_secret_in_reprs_and_nothing_pickles(service):
    client = EngineKmsClient(service)
    keys = PmeKeys(service)
    for obj in (client, keys):
        assert KEY1.hex() not in repr(obj) and "KEY" not in repr(obj)
        with pytest.raises(TypeError):
            pickle.dumps(obj)


# ---------------------------------------------------------------- rewrites keep the layout


def _layout_source(path):
    n = 30_000
    rng = np.random.default_rng(7)
    table = pa.table({
        "id": pa.array(np.arange(n)),
        "email": pa.array([f"u{i % 997}@example.com" for i in range(n)]),
        "score": pa.array(rng.normal(size=n)),
        "tags": pa.array([[str(i % 5)] for i in range(n)]),
    }).replace_schema_metadata({"owner": "data-team"})
    pq.write_table(table, path, row_group_size=7_000,
                   compression={"id": "zstd", "email": "gzip", "score": "snappy",
                                "tags.list.element": "brotli"},
                   use_dictionary=["email", "tags.list.element"],
                   write_statistics=["id", "score"],
                   column_encoding={"score": "BYTE_STREAM_SPLIT"},
                   sorting_columns=[pq.SortingColumn(0)], write_page_index=True)
    return table


def test_rewrites_keep_codecs_row_groups_dictionaries_statistics_and_metadata(tmp_path, service):
    src, enc, dec = tmp_path / "src.parquet", tmp_path / "enc.parquet", tmp_path / "dec.parquet"
    table = _layout_source(src)
    keys = PmeKeys(service)
    report = encrypt_parquet_file(src, enc, columns=["email"], keys=keys)
    assert report["rows"] == 30_000 and report["row_groups"] == 5
    before = ParquetLayout.of(pq.ParquetFile(src).metadata)
    after = pq.ParquetFile(enc, decryption_properties=keys.decryption_properties())
    assert ParquetLayout.of(after.metadata) == before
    assert before.row_groups == (7000, 7000, 7000, 7000, 2000)
    assert after.schema_arrow.metadata[b"owner"] == b"data-team"
    decrypt_parquet_file(enc, dec, keys=keys)
    assert ParquetLayout.of(pq.ParquetFile(dec).metadata) == before
    back = pq.read_table(dec)
    assert back.equals(table) and back.schema.metadata[b"owner"] == b"data-team"
    assert abs(os.path.getsize(dec) - os.path.getsize(src)) <= 0.001 * os.path.getsize(src)


def test_a_pme_file_is_within_2_percent_of_the_plain_file(tmp_path, service):
    """The size goal of issue 21, on a realistic file: 300,000 rows, 5 columns, ZSTD (the
    benchmark's table)."""
    table = make_table(300_000)
    plain = tmp_path / "plain.parquet"
    pq.write_table(table, plain, compression="zstd")
    for name, columns in (("uniform", None), ("email", ["email"])):
        target = tmp_path / f"{name}.parquet"
        encrypt_parquet_file(plain, target, columns=columns, service=service)
        ratio = os.path.getsize(target) / os.path.getsize(plain)
        assert ratio <= 1.02, (name, ratio)


# ---------------------------------------------------------------- readers the engine did not write


def _unwrap_reference(token: str, key: bytes, aad: bytes) -> bytes:
    """The engine's text token, opened with cryptography: ef1: base64url(header 6 | IV 16 |
    ciphertext | tag 16), AAD = header || aad."""
    assert token.startswith("ef1:")
    raw = base64.urlsafe_b64decode(token[4:] + "=" * (-len(token[4:]) % 4))
    header, iv, body = raw[:6], raw[6:22], raw[22:]
    assert header[:2] == b"\xef\x01"
    return AESGCM(key).decrypt(iv, body, header + aad)


def _footer_key_material(path) -> dict:
    return json.loads(read_footer_crypto(path).footer_key_metadata)


def test_duckdb_reads_a_uniformly_encrypted_file_given_its_data_key(tmp_path, service, table):
    path = str(tmp_path / "shared.parquet")
    plain = table.drop_columns(["nested"])
    write_pme(plain, path, service=service, compression="zstd")
    material = _footer_key_material(path)
    assert material["masterKeyID"] == "engine-v1" and material["doubleWrapping"]
    # the test (never the product) unwraps: the key-encryption key under key version 1 ...
    kek = _unwrap_reference(material["wrappedKEK"], KEY1, pme.WRAP_CONTEXT + b"engine-v1")
    # ... and the data key under it, as Parquet's key tools wrap locally (AAD: the KEK's id)
    wrapped = base64.b64decode(material["wrappedDEK"])
    dek = AESGCM(kek).decrypt(wrapped[:12], wrapped[12:],
                              base64.b64decode(material["keyEncryptionKeyID"]))
    assert len(dek) == 32
    con = duckdb.connect()
    con.execute(f"PRAGMA add_parquet_key('engine', '{base64.b64encode(dek).decode()}')")
    got = con.execute(
        f"SELECT id, email, amount FROM read_parquet('{path}', "
        "encryption_config={footer_key: 'engine'}) ORDER BY id").fetchall()
    assert got == list(zip(*(plain.column(c).to_pylist() for c in ("id", "email", "amount"))))
    con.execute(f"PRAGMA add_parquet_key('wrong', '{base64.b64encode(os.urandom(32)).decode()}')")
    with pytest.raises(duckdb.Error):
        con.execute(f"SELECT * FROM read_parquet('{path}', "
                    "encryption_config={footer_key: 'wrong'})").fetchall()


@pytest.fixture
def vault_provider(bao, names):
    provider = engine.VaultKeyProvider(bao.address, token=bao.root_token, timeout=5.0, retries=1,
                                       **names)
    yield provider
    provider.close()


class TransitOnlyKmsClient(pe.KmsClient):
    """A reader's own KmsClient, knowing nothing of the engine but docs/pme.md: Transit decrypt
    with the associated data ``engine.pme.kek.v1\\0`` + master key id."""

    def __init__(self, client: hvac.Client, key_name: str, bind: bool = True):
        super().__init__()
        self.client, self.key_name, self.bind = client, key_name, bind

    def wrap_key(self, key_bytes, master_key_identifier):
        raise AssertionError("this reader only reads")

    def unwrap_key(self, wrapped_key, master_key_identifier):
        extra = {}
        if self.bind:
            aad = b"engine.pme.kek.v1\x00" + master_key_identifier.encode()
            extra["associated_data"] = base64.b64encode(aad).decode()
        answer = self.client.secrets.transit.decrypt_data(self.key_name, wrapped_key, **extra)
        return base64.b64decode(answer["data"]["plaintext"])


def test_a_minimal_transit_kms_client_reads_files_the_engine_wrote_under_vault(
        tmp_path, bao, names, vault_provider, table):
    service = _service(vault_provider)
    path = tmp_path / "vault.parquet"
    write_pme(table, path, columns=["email"], service=service)
    material = _footer_key_material(path)
    assert material["masterKeyID"] == "engine-v1" and material["wrappedKEK"].startswith("vault:v1:")
    admin = hvac.Client(bao.address, token=bao.root_token, timeout=5)
    factory = pe.CryptoFactory(lambda config: TransitOnlyKmsClient(admin, names["key_name"]))
    props = factory.file_decryption_properties(pe.KmsConnectionConfig(),
                                               pe.DecryptionConfiguration())
    assert pq.read_table(path, decryption_properties=props).equals(table)
    assert read_pme(path, service=service).equals(table)
    # without the associated data that binds the master key id, Transit refuses
    unbound = pe.CryptoFactory(lambda config: TransitOnlyKmsClient(admin, names["key_name"],
                                                                   bind=False))
    with pytest.raises(hvac.exceptions.InvalidRequest):
        pq.read_table(path, decryption_properties=unbound.file_decryption_properties(
            pe.KmsConnectionConfig(), pe.DecryptionConfiguration()))


# ---------------------------------------------------------------- key material without keys


def test_key_material_of_files_that_are_not_pme(tmp_path):
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1]}), plain)
    info = pme_key_info(plain)
    assert not info.encrypted and info.versions == set()
    (tmp_path / "short").write_bytes(b"PAR1")
    (tmp_path / "text").write_bytes(b"hello world, not parquet at all")
    (tmp_path / "huge-length").write_bytes(b"PAR1" + b"\x00" * 10 + b"\xff\xff\xff\x7fPARE")
    for name in ("short", "text", "huge-length"):
        with pytest.raises(ParquetFooterError):
            pme_key_info(tmp_path / name)


def _with_footer(path, footer: bytes, magic: bytes = b"PAR1"):
    path.write_bytes(b"PAR1" + footer + len(footer).to_bytes(4, "little") + magic)
    return path


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([b"PAR1", b"PARE"]))
def test_a_corrupted_footer_is_a_footer_error_never_a_crash(tmp_path_factory, footer, magic):
    path = _with_footer(tmp_path_factory.mktemp("f") / "x.parquet", footer, magic)
    try:
        pme_key_info(path)
    except ParquetFooterError:
        pass


@pytest.fixture(scope="module")
def real_footers(tmp_path_factory):
    """The footers of real PME files: a plaintext one (FileMetaData) and an encrypted one
    (FileCryptoMetaData), for the mutation test to start from something that parses."""
    where = tmp_path_factory.mktemp("real")
    table = pa.table({"id": [1, 2, 3], "email": ["a", "b", None], "s": [{"x": 1}] * 3})
    found = []
    for name, plaintext in (("plain", True), ("enc", False)):
        write_pme(table, where / name, columns=["email", "s.x"], plaintext_footer=plaintext,
                  service=_service())
        raw = (where / name).read_bytes()
        length = int.from_bytes(raw[-8:-4], "little")
        found.append((raw[-8 - length:-8], raw[-4:]))
    return found


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_mutated_real_footer_is_a_footer_error_never_a_crash(tmp_path_factory, real_footers,
                                                               data):
    footer, magic = data.draw(st.sampled_from(real_footers))
    edited = bytearray(footer)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(edited) - 1))
        edited[at] = data.draw(st.integers(0, 255))
    edited = edited[:data.draw(st.integers(0, len(edited)))]
    path = _with_footer(tmp_path_factory.mktemp("m") / "x.parquet", bytes(edited), magic)
    try:
        pme_key_info(path)
    except ParquetFooterError:
        pass


def test_footers_that_broke_or_could_hang_the_reader(tmp_path):
    # a map whose key is a list (an unhashable key once decoded), in a field skipped anyway
    map_with_list_key = bytes([0x1B, 0x01, 0x95, 0x15, 0x02, 0x02, 0x00])
    assert not pme_key_info(_with_footer(tmp_path / "map", map_with_list_key)).encrypted
    # row groups claiming 2**60 elements: refused at once, not iterated
    huge_list = bytes([0x49, 0xFC]) + bytes([0xFF] * 8 + [0x0F])
    deep = bytes([0x1C] * 5000)  # a struct in a struct in ...
    long_varint = bytes([0x15] + [0xFF] * 20)
    binary_past_end = bytes([0x98, 0xFF, 0xFF, 0x03])  # footer signing key metadata, 64 KiB
    for name, footer in (("huge", huge_list), ("deep", deep), ("varint", long_varint),
                         ("binary", binary_past_end)):
        for magic in (b"PAR1", b"PARE"):
            with pytest.raises(ParquetFooterError):
                pme_key_info(_with_footer(tmp_path / name, footer, magic))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 3))
def test_a_corrupted_page_header_is_a_page_error_never_a_crash(header, pages):
    """The page-header reader (engine.parquet_pages) is the same Thrift reader."""
    try:
        column_pages(io.BytesIO(header), 0, len(header), max_pages=pages + 1)
    except PageFormatError:
        pass


def _refused_tampered(service, tmp_path, table):
    write_pme(table, tmp_path / "f.parquet", service=service)
    raw = bytearray((tmp_path / "f.parquet").read_bytes())
    raw[100] ^= 1
    (tmp_path / "t.parquet").write_bytes(bytes(raw))
    decrypt_parquet_file(tmp_path / "t.parquet", tmp_path / "out.parquet", service=service)


def _refused_not_parquet(service, tmp_path, table):
    (tmp_path / "x.parquet").write_text("not parquet")
    encrypt_parquet_file(tmp_path / "x.parquet", tmp_path / "out.parquet", service=service)


def _refused_column(service, tmp_path, table):
    write_pme(table, tmp_path / "f.parquet", columns=["nope"], service=service)


def _refused_other_key(service, tmp_path, table):
    write_pme(table, tmp_path / "f.parquet", service=_service(engine.StaticKeyProvider({1: KEY2})))
    decrypt_parquet_file(tmp_path / "f.parquet", tmp_path / "out.parquet", service=service)


@pytest.mark.parametrize("call, kind", [(_refused_tampered, "malformed"),
                                        (_refused_not_parquet, "malformed"),
                                        (_refused_column, "invalid_argument"),
                                        (_refused_other_key, "invalid_tag")])
def test_every_refusal_is_counted_once(tmp_path, table, call, kind):
    from prometheus_client import CollectorRegistry

    from engine.errors import ERROR_TYPES
    from engine.metrics import EngineMetrics

    metrics = EngineMetrics(CollectorRegistry(), key_refresh_seconds=0)
    service = engine.EncryptionService(engine.StaticKeyProvider({1: KEY1}), metrics=metrics)
    with pytest.raises(engine.EngineError):
        call(service, tmp_path, table)
    assert {t: metrics.error_count(t) for t in ERROR_TYPES} == \
        {t: int(t == kind) for t in ERROR_TYPES}
    assert not (tmp_path / "out.parquet").exists()
