"""Tests for engine.tls - every handshake is a real TLS connection on 127.0.0.1."""
from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from engine import tls

PASSPHRASE = "correct horse battery staple 4711"
UTC = dt.timezone.utc
TIMEOUT = 5.0


# --------------------------------------------------------------------------- helpers
@dataclass
class HandshakeResult:
    server: dict = field(default_factory=dict)
    client: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return ("error" not in self.server and "error" not in self.client
                and self.client.get("reply") == b"pong")


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
              server_hostname: str | None = "localhost") -> HandshakeResult:
    """One real TLS connection: server thread on 127.0.0.1:0, client in this thread."""
    result = HandshakeResult()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(TIMEOUT)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(TIMEOUT)
            with server_ctx.wrap_socket(conn, server_side=True) as s:
                result.server.update(version=s.version(), cipher=s.cipher()[0], peer=s.getpeercert())
                if s.recv(4) == b"ping":
                    s.sendall(b"pong")
        except Exception as exc:  # recorded and asserted on by the tests
            result.server["error"] = exc
        finally:
            listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as s:
                result.client.update(version=s.version(), cipher=s.cipher()[0])
                s.sendall(b"ping")
                result.client["reply"] = s.recv(4)  # TLS 1.3: client-cert alerts arrive here
    except Exception as exc:
        result.client["error"] = exc
    thread.join(TIMEOUT + 1)
    assert not thread.is_alive(), "server thread did not stop"
    return result


def assert_refused(result: HandshakeResult, server_reason: str | None = None) -> None:
    assert not result.ok
    assert result.client.get("reply") != b"pong"
    assert "error" in result.server
    if server_reason:
        assert server_reason.lower() in str(result.server["error"]).lower(), result.server["error"]


def now() -> dt.datetime:
    return dt.datetime.now(UTC)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tls_ca(tmp_path_factory) -> tls.CertificateAuthority:
    return tls.CertificateAuthority.create(tmp_path_factory.mktemp("ca") / "ca", PASSPHRASE)


@pytest.fixture(scope="module")
def tls_server_pair(tls_ca):
    return tls_ca.issue("api", dns_names=["localhost", "api.engine.svc"], ip_addresses=["127.0.0.1"])


@pytest.fixture(scope="module")
def tls_client_pair(tls_ca):
    return tls_ca.issue("worker", dns_names=["worker.engine.svc"])


@pytest.fixture()
def tls_strict_server(tls_ca, tls_server_pair):
    cert, key = tls_server_pair
    return tls.server_context(cert, key, tls_ca.cert_path, tls_ca.crl_path, require_client_cert=True)


@pytest.fixture(scope="module")
def tls_good_client(tls_ca, tls_client_pair):
    return tls.client_context(*tls_client_pair, ca_path=tls_ca.cert_path)


# --------------------------------------------------------------------------- CA and certificates
def test_ca_files_and_properties(tls_ca):
    ca_cert = tls.load_certificate(tls_ca.cert_path)
    assert isinstance(ca_cert.public_key(), ec.EllipticCurvePublicKey)
    assert ca_cert.public_key().curve.name == "secp384r1"
    assert (ca_cert.not_valid_after_utc - ca_cert.not_valid_before_utc) == dt.timedelta(days=3650)
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert stat.S_IMODE(os.stat(tls_ca.key_path).st_mode) == 0o600
    key_pem = tls_ca.key_path.read_bytes()
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in key_pem
    assert PASSPHRASE.encode() not in key_pem
    x509.load_pem_x509_crl(tls_ca.crl_path.read_bytes()).is_signature_valid(ca_cert.public_key())
    assert tls_ca.index_path.exists()
    assert PASSPHRASE not in repr(tls_ca)
    with pytest.raises(tls.TLSError):
        tls.CertificateAuthority.create(tls_ca.directory, PASSPHRASE)


def test_service_certificate_profile(tls_ca, tls_server_pair):
    cert_path, key_path = tls_server_pair
    cert = tls.load_certificate(cert_path)
    assert cert.public_key().curve.name == "secp256r1"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=365)
    cert.verify_directly_issued_by(tls_ca.certificate)
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    ku = ext.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    assert set(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "api.engine.svc"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = tls_ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest and ski.digest != ca_ski.digest
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600  # follows the symlink
    assert tls.certificate_serial(cert_path) == cert.serial_number
    assert tls.certificate_subject(cert_path) == "CN=api"
    assert 364 * 86400 < tls.certificate_expiry_seconds(cert_path) <= 365 * 86400


def test_load_with_bytes_passphrase(tls_ca):
    ca = tls.CertificateAuthority.load(tls_ca.directory, PASSPHRASE.encode())
    assert ca.certificate == tls_ca.certificate


def test_csr_signing_and_handshake(tls_ca, tls_strict_server, tmp_path):
    csr_pem, key_pem = tls.make_csr("batch", dns_names=["batch.engine.svc"])
    cert_pem = tls_ca.sign_csr(csr_pem, days=30)
    cert = x509.load_pem_x509_certificate(cert_pem)
    cert.verify_directly_issued_by(tls_ca.certificate)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=30)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "batch"
    (tmp_path / "c.pem").write_bytes(cert_pem)
    fd = os.open(tmp_path / "k.pem", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, key_pem)
    os.close(fd)
    client = tls.client_context(tmp_path / "c.pem", tmp_path / "k.pem", ca_path=tls_ca.cert_path)
    result = handshake(tls_strict_server, client)
    assert result.ok, result
    assert result.server["peer"]["subject"] == ((("commonName", "batch"),),)
    with pytest.raises(tls.CertificateError):
        tls_ca.sign_csr(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")


# --------------------------------------------------------------------------- handshakes
def test_strict_mtls_accepts_valid_client_tls13_aes256(tls_strict_server, tls_good_client):
    result = handshake(tls_strict_server, tls_good_client)
    assert result.ok, result
    assert result.client["version"] == result.server["version"] == "TLSv1.3"
    assert result.client["cipher"] == "TLS_AES_256_GCM_SHA384"
    assert result.server["peer"]["subject"] == ((("commonName", "worker"),),)


def test_tls13_suites_restricted_on_contexts(tls_strict_server, tls_good_client):
    # Relies on the ctypes SSL_CTX_set_ciphersuites path (see NOTES.md).
    assert tls.tls13_ciphersuites(tls_strict_server) == list(tls.TLS13_CIPHERSUITES)
    assert tls.tls13_ciphersuites(tls_good_client) == list(tls.TLS13_CIPHERSUITES)
    tls12 = [c["name"] for c in tls_strict_server.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 == list(tls.TLS12_CIPHERS)


def test_default_python_client_gets_aes256(tls_ca, tls_server_pair):
    server = tls.server_context(*tls_server_pair, ca_path=tls_ca.cert_path, require_client_cert=False)
    client = ssl.create_default_context(cafile=str(tls_ca.cert_path))
    result = handshake(server, client)
    assert result.ok, result
    assert (result.client["version"], result.client["cipher"]) == ("TLSv1.3", "TLS_AES_256_GCM_SHA384")


def test_chacha20_only_client_accepted_aes128_only_refused(tls_strict_server, tls_ca, tls_client_pair):
    chacha = tls.client_context(*tls_client_pair, ca_path=tls_ca.cert_path)
    assert tls.set_tls13_ciphersuites(chacha, "TLS_CHACHA20_POLY1305_SHA256")
    result = handshake(tls_strict_server, chacha)
    assert result.ok and result.client["cipher"] == "TLS_CHACHA20_POLY1305_SHA256", result

    aes128 = tls.client_context(*tls_client_pair, ca_path=tls_ca.cert_path)
    aes128.maximum_version = ssl.TLSVersion.TLSv1_3
    aes128.minimum_version = ssl.TLSVersion.TLSv1_3
    assert tls.set_tls13_ciphersuites(aes128, "TLS_AES_128_GCM_SHA256")
    assert_refused(handshake(tls_strict_server, aes128), "no shared cipher")


def test_without_ctypes_server_preference_still_picks_aes256(tls_ca, tls_server_pair, monkeypatch,
                                                            caplog):
    monkeypatch.setenv("ENGINE_TLS_NO_CTYPES", "1")
    server = tls.server_context(*tls_server_pair, ca_path=tls_ca.cert_path, require_client_cert=False)
    assert "TLS_AES_128_GCM_SHA256" in tls.tls13_ciphersuites(server)
    assert "could not restrict TLS 1.3" in caplog.text
    client = ssl.create_default_context(cafile=str(tls_ca.cert_path))
    result = handshake(server, client)
    assert result.ok and result.server["cipher"] == "TLS_AES_256_GCM_SHA384", result


def test_tls12_client_negotiates_ecdhe_ecdsa_aes256(tls_strict_server, tls_ca, tls_client_pair):
    client = tls.client_context(*tls_client_pair, ca_path=tls_ca.cert_path)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    result = handshake(tls_strict_server, client)
    assert result.ok, result
    assert result.server["version"] == "TLSv1.2"
    assert result.server["cipher"] == "ECDHE-ECDSA-AES256-GCM-SHA384"


def test_strict_mtls_refuses_client_without_certificate(tls_strict_server, tls_ca):
    client = tls.client_context(ca_path=tls_ca.cert_path)
    assert_refused(handshake(tls_strict_server, client), "certificate")


def test_optional_client_cert_mode_accepts_anonymous_client(tls_ca, tls_server_pair):
    server = tls.server_context(*tls_server_pair, ca_path=tls_ca.cert_path, require_client_cert=False)
    result = handshake(server, tls.client_context(ca_path=tls_ca.cert_path))
    assert result.ok and result.server["peer"] is None, result


def test_strict_mtls_refuses_certificate_from_other_ca(tls_strict_server, tls_ca, tmp_path):
    other = tls.CertificateAuthority.create(tmp_path / "other", "another passphrase")
    pair = other.issue("worker", dns_names=["worker.engine.svc"])
    client = tls.client_context(*pair, ca_path=tls_ca.cert_path)
    assert_refused(handshake(tls_strict_server, client), "certificate verify failed")


def test_strict_mtls_refuses_expired_certificate(tls_strict_server, tls_ca, tmp_path):
    pair = tls_ca.issue("old-worker", days=1, now=now() - dt.timedelta(days=3), directory=tmp_path / "x")
    assert tls.certificate_expiry_seconds(pair[0]) < 0
    client = tls.client_context(*pair, ca_path=tls_ca.cert_path)
    assert_refused(handshake(tls_strict_server, client), "expired")


def test_strict_mtls_refuses_revoked_certificate(tls_ca, tls_server_pair, tmp_path):
    pair = tls_ca.issue("revoked-worker", directory=tmp_path / "r")
    client = tls.client_context(*pair, ca_path=tls_ca.cert_path)
    before = tls.server_context(*tls_server_pair, ca_path=tls_ca.cert_path, crl_path=tls_ca.crl_path)
    assert handshake(before, client).ok
    serial = tls.certificate_serial(pair[0])
    tls_ca.revoke(serial, reason=x509.ReasonFlags.key_compromise)
    tls_ca.revoke(serial)  # idempotent
    assert tls_ca.is_revoked(serial)
    crl = x509.load_pem_x509_crl(tls_ca.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    after = tls.server_context(*tls_server_pair, ca_path=tls_ca.cert_path, crl_path=tls_ca.crl_path)
    assert after.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    assert_refused(handshake(after, client), "revoked")


def test_revoke_unknown_serial_is_an_error(tls_ca):
    with pytest.raises(tls.RevocationError):
        tls_ca.revoke(12345)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_refuses_tls11_client(tls_strict_server, tls_ca, tls_client_pair):
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cafile=str(tls_ca.cert_path))
    client.load_cert_chain(*map(str, tls_client_pair))
    client.set_ciphers("DEFAULT:@SECLEVEL=0")  # let OpenSSL 3 really offer TLS 1.1
    client.minimum_version = ssl.TLSVersion.TLSv1
    client.maximum_version = ssl.TLSVersion.TLSv1_1
    result = handshake(tls_strict_server, client)
    assert_refused(result, "unsupported protocol")  # the server saw a TLS 1.1 ClientHello
    assert "error" in result.client


def test_refuses_weak_cipher_client(tls_strict_server, tls_ca, tls_client_pair):
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cafile=str(tls_ca.cert_path))
    client.load_cert_chain(*map(str, tls_client_pair))
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers("AES128-SHA")
    assert_refused(handshake(tls_strict_server, client), "no shared cipher")


X509_V_ERR_HOSTNAME_MISMATCH = 62  # OpenSSL's verify code for a name the certificate lacks
X509_V_ERR_IP_ADDRESS_MISMATCH = 64


@pytest.mark.parametrize("name, code", [("evil.example", X509_V_ERR_HOSTNAME_MISMATCH),
                                        ("engine.svc", X509_V_ERR_HOSTNAME_MISMATCH),
                                        ("127.0.0.2", X509_V_ERR_IP_ADDRESS_MISMATCH)])
def test_client_verifies_hostname(tls_strict_server, tls_good_client, name, code):
    """The same client, server and certificate: refused for a name the certificate does not
    carry, for that reason and on the client's side, and accepted for each name it does carry."""
    for good in ("localhost", "api.engine.svc", "127.0.0.1"):
        result = handshake(tls_strict_server, tls_good_client, server_hostname=good)
        assert result.ok, (good, result)
    result = handshake(tls_strict_server, tls_good_client, server_hostname=name)
    error = result.client.get("error")
    assert isinstance(error, ssl.SSLCertVerificationError), result
    assert error.verify_code == code and "mismatch" in error.verify_message.lower(), error
    assert_refused(result)


def test_context_settings(tls_strict_server, tls_good_client, tls_ca):
    for ctx in (tls_strict_server, tls_good_client):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert tls_good_client.check_hostname is True
    with pytest.raises(tls.TLSError):
        tls.client_context()


# --------------------------------------------------------------------------- renewal
def test_needs_renewal_flips_at_66_percent(tls_ca, tmp_path):
    t0 = dt.datetime(2030, 1, 1, tzinfo=UTC)
    cert, _ = tls_ca.issue("short", days=100, now=t0, directory=tmp_path / "s")
    assert not tls.needs_renewal(cert, now=t0 + dt.timedelta(days=65, hours=23))
    assert tls.needs_renewal(cert, now=t0 + dt.timedelta(days=66, minutes=1))
    assert tls.renewal_time(cert) == t0 + dt.timedelta(days=66)
    assert tls.certificate_expiry_seconds(cert, now=t0) == 100 * 86400
    assert tls.certificate_expiry_seconds(cert, now=t0 + dt.timedelta(days=101)) == -86400


def test_renew_if_needed(tls_ca, tmp_path):
    t0 = now() - dt.timedelta(days=7)
    cert, key = tls_ca.issue("cron", days=10, now=t0, directory=tmp_path / "c")
    serial = tls.certificate_serial(cert)
    assert not tls_ca.renew_if_needed(cert, now=t0 + dt.timedelta(days=6))
    assert tls.certificate_serial(cert) == serial
    assert tls_ca.renew_if_needed(cert, key)  # 70 % elapsed
    assert tls.certificate_serial(cert) != serial and not tls.needs_renewal(cert)


def test_renew_keeps_names_and_works(tls_ca, tls_strict_server, tmp_path):
    cert, key = tls_ca.issue("svc", dns_names=["svc", "svc.ns"], ip_addresses=["127.0.0.1"],
                             directory=tmp_path / "svc")
    old = tls.load_certificate(cert)
    old_key = key.read_bytes()
    assert tls_ca.renew(cert) == (cert, key)
    new = tls.load_certificate(cert)
    assert new.serial_number != old.serial_number and key.read_bytes() != old_key
    assert new.subject == old.subject
    san = x509.SubjectAlternativeName
    assert new.extensions.get_extension_for_class(san) == old.extensions.get_extension_for_class(san)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert handshake(tls_strict_server, tls.client_context(cert, key, ca_path=tls_ca.cert_path)).ok
    # Only the live version directory remains.
    assert len([p for p in (tmp_path / "svc").iterdir() if ".v-" in p.name]) == 1


def test_renew_rejects_foreign_certificate(tls_ca, tmp_path):
    other = tls.CertificateAuthority.create(tmp_path / "other", "x-passphrase")
    cert, key = other.issue("foreign")
    with pytest.raises(tls.CertificateError):
        tls_ca.renew(cert, key)


def _plain_pair(ca, directory: Path) -> tuple[Path, Path]:
    """A pair stored as ordinary files (e.g. written by another tool)."""
    cert, key = ca.issue("plain", dns_names=["localhost"], directory=directory / "src")
    directory.mkdir(exist_ok=True)
    (directory / "plain.crt").write_bytes(cert.read_bytes())
    fd = os.open(directory / "plain.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, key.read_bytes())
    os.close(fd)
    return directory / "plain.crt", directory / "plain.key"


@pytest.mark.parametrize("layout", ["managed", "plain"])
@pytest.mark.parametrize("fail_at", range(1, 11))
def test_renew_interrupted_leaves_working_pair(tls_ca, tls_strict_server, tmp_path, monkeypatch,
                                               layout, fail_at):
    if layout == "managed":
        cert, key = tls_ca.issue("svc", dns_names=["localhost"], directory=tmp_path / "svc")
    else:
        cert, key = _plain_pair(tls_ca, tmp_path / "plain")
    old_serial = tls.certificate_serial(cert)

    real_replace = os.replace
    calls = {"n": 0}

    def crashing_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise RuntimeError("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    try:
        tls_ca.renew(cert, key)
        interrupted = False
    except RuntimeError:
        interrupted = True
    monkeypatch.setattr(os, "replace", real_replace)
    if not interrupted:
        assert calls["n"] < fail_at  # renew finished before the simulated crash point

    # Whatever happened, the files on disk form a matching pair (plain ssl, no helper).
    raw = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    raw.load_cert_chain(str(cert), str(key))  # raises on key mismatch
    assert handshake(tls_strict_server, tls.client_context(cert, key, ca_path=tls_ca.cert_path)).ok
    if interrupted:  # the symlink flip is the last rename: any crash leaves the old pair live
        assert tls.certificate_serial(cert) == old_serial
    else:
        assert tls.certificate_serial(cert) != old_serial
    assert not [p for p in cert.parent.iterdir() if ".tmp-" in p.name]  # no temp leftovers

    # A later renew completes and cleans stale versions.
    tls_ca.renew(cert, key)
    assert tls.certificate_serial(cert) != old_serial
    raw.load_cert_chain(str(cert), str(key))
    versions = [p for p in cert.parent.iterdir() if ".v-" in p.name]
    assert len(versions) == 1


# --------------------------------------------------------------------------- OCSP
def test_ocsp_responses_parse_back(tls_ca, tmp_path):
    cert, _ = tls_ca.issue("ocsp-svc", directory=tmp_path / "o")
    serial = tls.certificate_serial(cert)
    resp = ocsp.load_der_ocsp_response(tls_ca.ocsp_response(cert))
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert resp.serial_number == serial
    tls_ca.certificate.public_key().verify(resp.signature, resp.tbs_response_bytes,
                                           ec.ECDSA(resp.signature_hash_algorithm))
    unknown = ocsp.load_der_ocsp_response(tls_ca.ocsp_response(cert, status="unknown"))
    assert unknown.certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    tls_ca.revoke(serial, reason=x509.ReasonFlags.superseded)
    revoked = ocsp.load_der_ocsp_response(tls_ca.ocsp_response(cert))
    assert revoked.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert revoked.revocation_reason == x509.ReasonFlags.superseded
    with pytest.raises(ValueError):
        tls_ca.ocsp_response(cert, status="maybe")


# --------------------------------------------------------------------------- bad input
def test_corrupt_pem_is_certificate_error(tls_ca, tls_server_pair, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n")
    with pytest.raises(tls.CertificateError):
        tls.load_certificate(bad)
    with pytest.raises(tls.CertificateError):
        tls.server_context(bad, tls_server_pair[1], tls_ca.cert_path)
    with pytest.raises(tls.CertificateError):
        tls.server_context(*tls_server_pair, ca_path=tls_ca.cert_path, crl_path=bad)
    with pytest.raises(tls.CertificateError):
        tls.needs_renewal(tmp_path / "missing.pem")


def test_mismatched_key_is_certificate_error(tls_ca, tls_server_pair, tls_client_pair):
    with pytest.raises(tls.CertificateError, match="does not match"):
        tls.server_context(tls_server_pair[0], tls_client_pair[1], tls_ca.cert_path)
    with pytest.raises(tls.CertificateError):
        tls.client_context(tls_client_pair[0], tls_server_pair[1], ca_path=tls_ca.cert_path)


def test_wrong_passphrase_is_typed_and_not_leaked(tls_ca):
    wrong = "wrong passphrase 123"
    with pytest.raises(tls.PassphraseError) as info:
        tls.CertificateAuthority.load(tls_ca.directory, wrong)
    assert isinstance(info.value, tls.TLSError) and isinstance(info.value, ValueError)
    text = str(info.value) + repr(info.value)
    assert wrong not in text and PASSPHRASE not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(tls.PassphraseError):
        tls.CertificateAuthority.load(tls_ca.directory, b"")


# --------------------------------------------------------------------------- k8s templates
def test_k8s_templates(tmp_path):
    mtls_path, cm_path = tls.write_k8s_templates(
        tmp_path / "infra" / "tls", services=[("api", ["api", "api.engine.svc"])],
        acme_email="ops@example.com", istio=True)
    assert mtls_path.name == "mtls-config.yaml" and cm_path.name == "cert-manager.yaml"
    mtls_docs = list(yaml.safe_load_all(mtls_path.read_text()))
    config = mtls_docs[0]
    assert config["kind"] == "ConfigMap" and config["data"]["MTLS_MODE"] == "STRICT"
    assert all(isinstance(v, str) for v in config["data"].values())
    assert config["data"]["TLS13_CIPHERSUITES"] == "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
    assert mtls_docs[1]["spec"]["mtls"]["mode"] == "STRICT"

    docs = list(yaml.safe_load_all(cm_path.read_text()))
    assert all(d["apiVersion"] == "cert-manager.io/v1" for d in docs)
    by_kind: dict[str, list] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    issuers = {d["metadata"]["name"]: d for d in by_kind["Issuer"]}
    assert any(d["spec"] == {"selfSigned": {}} for d in issuers.values())
    ca_issuer = next(d for d in issuers.values() if "ca" in d["spec"])
    certs = {d["metadata"]["name"]: d for d in by_kind["Certificate"]}
    ca_cert = next(d for d in certs.values() if d["spec"].get("isCA"))
    assert ca_issuer["spec"]["ca"]["secretName"] == ca_cert["spec"]["secretName"]
    assert ca_cert["spec"]["privateKey"] == {"algorithm": "ECDSA", "size": 384, "rotationPolicy": "Always"}
    assert ca_cert["spec"]["duration"] == "87600h"
    assert ca_cert["spec"]["issuerRef"]["name"] in issuers
    svc = certs["api-tls"]["spec"]
    assert svc["secretName"] == "api-tls"
    assert svc["duration"] == "8760h" and svc["renewBefore"] == "2978h"
    assert 1 - 2978 / 8760 == pytest.approx(0.66, abs=0.001)
    assert svc["privateKey"]["algorithm"] == "ECDSA" and svc["privateKey"]["size"] == 256
    assert svc["dnsNames"] == ["api", "api.engine.svc"]
    assert svc["usages"] == ["server auth", "client auth", "digital signature"]
    assert svc["issuerRef"] == {"name": ca_issuer["metadata"]["name"], "kind": "Issuer",
                                "group": "cert-manager.io"}
    acme = by_kind["ClusterIssuer"][0]["spec"]["acme"]
    assert acme["server"].startswith("https://") and acme["privateKeySecretRef"]["name"]
    assert acme["solvers"][0]["http01"]["ingress"]
    assert "ClusterIssuer" not in tls.cert_manager_yaml()
