"""The production path: VaultKeyProvider over HTTPS, against a real OpenBao server whose TLS
listeners present certificates issued by the engine's own CertificateAuthority.

One OpenBao dev server runs for the module with six HTTPS listeners beside its plain admin one:
a good P-256 service certificate for 127.0.0.1/localhost, one from another CA, an expired one,
one not valid yet, one issued for another host name, and the good one again on a listener that
requires a client certificate from the engine's CA (strict mTLS).
"""

from __future__ import annotations

import datetime as dt
import os
import pickle
import types
import uuid

import hvac
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from engine import EncryptionService, tls
from engine.errors import EngineError
from engine.testing.openbao import BaoNotFound, BaoServer, TLSListener
from engine.vault import (
    VaultAuthError,
    VaultConfigurationError,
    VaultError,
    VaultKeyProvider,
    VaultSecrets,
    VaultTLSError,
    VaultUnavailable,
)

GOOD, FOREIGN, EXPIRED, NOT_YET_VALID, MISNAMED, MTLS = range(6)
LOOPBACK = {"dns_names": ["localhost"], "ip_addresses": ["127.0.0.1"]}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = tls.CertificateAuthority.create(d / "ca", passphrase="test CA passphrase")
    other = tls.CertificateAuthority.create(d / "other-ca", passphrase="other passphrase",
                                            common_name="another internal CA")
    now = dt.datetime.now(dt.timezone.utc)
    return types.SimpleNamespace(
        ca=ca, ca_pem=str(ca.cert_path),
        server=ca.issue("vault.internal", **LOOPBACK),
        foreign=other.issue("vault.internal", **LOOPBACK),
        expired=ca.issue("vault-expired", **LOOPBACK, days=1, now=now - dt.timedelta(days=30)),
        not_yet_valid=ca.issue("vault-future", **LOOPBACK, days=30,
                               now=now + dt.timedelta(days=10)),
        misnamed=ca.issue("elsewhere.internal", dns_names=["elsewhere.internal"]),
        client=tuple(map(str, ca.issue("engine-client"))),
        intruder=tuple(map(str, other.issue("engine-client"))),
    )


@pytest.fixture(scope="module")
def bao_tls(pki):
    listeners = [TLSListener(*pki.server), TLSListener(*pki.foreign), TLSListener(*pki.expired),
                 TLSListener(*pki.not_yet_valid), TLSListener(*pki.misnamed),
                 TLSListener(*pki.server, client_ca_file=pki.ca.cert_path)]
    try:
        server = BaoServer(tls=listeners).start()
    except BaoNotFound as exc:
        pytest.fail(f"OpenBao is required for the Vault tests: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def connect(bao_tls, names):
    """VaultKeyProvider on one of the HTTPS listeners (closed after the test)."""
    made = []

    def connect(listener=GOOD, host="127.0.0.1", **kw):
        address = bao_tls.tls_addresses[listener].replace("127.0.0.1", host)
        kw.setdefault("token", bao_tls.root_token)
        p = VaultKeyProvider(address, retries=1, timeout=5.0, **names, **kw)
        made.append(p)
        return p

    yield connect
    for p in made:
        p.close()


def refused(fn) -> VaultError:
    with pytest.raises(EngineError) as info:
        fn()
    exc = info.value
    assert isinstance(exc, VaultError) and exc.__context__ is None and exc.__cause__ is None
    again = pickle.loads(pickle.dumps(exc))  # e.g. from a worker process
    assert type(again) is type(exc) and str(again) == str(exc)
    assert getattr(again, "problem", None) == getattr(exc, "problem", None)
    return exc


def test_the_server_presents_a_p256_service_certificate_from_the_engine_ca(pki):
    cert = tls.load_certificate(pki.server[0])
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert cert.issuer == pki.ca.certificate.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_keys_and_secrets_over_https_with_vault_cacert(bao_tls, pki, names):
    # hvac ignored verify= (and so VAULT_CACERT) when given a session: this used to be refused.
    env = {"VAULT_ADDR": bao_tls.tls_addresses[GOOD], "VAULT_CACERT": pki.ca_pem,
           "VAULT_TOKEN": bao_tls.root_token, "VAULT_TRANSIT_KEY": names["key_name"],
           "VAULT_KV_PATH": names["kv_path"]}
    with VaultKeyProvider.from_environment(env) as p:
        assert p.address.startswith("https://127.0.0.1:")
        service = EncryptionService(p)
        tokens = service.encrypt_many([b"over TLS", b"twice"])
        p.create_version()
        assert service.decrypt_many(tokens).to_list() == [b"over TLS", b"twice"]
        secrets = VaultSecrets(p, base_path="tls-" + uuid.uuid4().hex[:6])
        assert secrets.write("cache", {"url": "rediss://cache:6380/0"}) == 1
        assert secrets.read("cache")["url"] == "rediss://cache:6380/0"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_constructor_takes_the_ca_bundle_as_verify(connect, pki, host):
    p = connect(host=host, verify=pki.ca_pem)
    key = p.get_current_key()
    nonce = os.urandom(16)
    assert key.cipher.decrypt(nonce, key.cipher.encrypt(nonce, b"x")) == b"x"


@pytest.mark.parametrize("listener, host, problem, words", [
    (FOREIGN, "127.0.0.1", "untrusted", "not issued by a CA this client trusts"),
    (EXPIRED, "127.0.0.1", "expired", "has expired"),
    (NOT_YET_VALID, "localhost", "not-yet-valid", "not valid yet"),
    (MISNAMED, "127.0.0.1", "hostname-mismatch", "not valid for the host name or IP address"),
    (MISNAMED, "localhost", "hostname-mismatch", "not valid for the host name or IP address"),
])
def test_a_bad_server_certificate_is_refused_with_a_tls_error_naming_it(
        connect, pki, listener, host, problem, words):
    exc = refused(lambda: connect(listener, host, verify=pki.ca_pem))
    assert isinstance(exc, VaultTLSError) and not isinstance(exc, VaultUnavailable)
    assert exc.problem == problem and words in str(exc)
    assert "unavailable" not in str(exc) and "attempt" not in str(exc)  # not retried


def test_the_system_cas_do_not_trust_the_engine_ca(connect):
    exc = refused(lambda: connect(verify=True))
    assert isinstance(exc, VaultTLSError) and exc.problem == "untrusted"


def test_skip_verify_accepts_any_certificate(bao_tls, names):
    env = {"VAULT_ADDR": bao_tls.tls_addresses[FOREIGN], "VAULT_SKIP_VERIFY": "true",
           "VAULT_TOKEN": bao_tls.root_token, "VAULT_TRANSIT_KEY": names["key_name"],
           "VAULT_KV_PATH": names["kv_path"]}
    with pytest.warns(Warning, match="Unverified HTTPS"):
        with VaultKeyProvider.from_environment(env) as p:
            assert p.get_current_key().version == 1


def test_plain_http_to_the_tls_listener_and_tls_to_the_plain_one(bao_tls, pki, names):
    # HTTP 400 on the first token lookup used to escape as the private _BadRequest.
    exc = refused(lambda: VaultKeyProvider(
        bao_tls.tls_addresses[GOOD].replace("https://", "http://"), token=bao_tls.root_token,
        **names))
    assert isinstance(exc, VaultConfigurationError) and "use https://" in str(exc)
    exc = refused(lambda: VaultKeyProvider(bao_tls.address.replace("http://", "https://"),
                                           token=bao_tls.root_token, verify=pki.ca_pem, **names))
    assert isinstance(exc, VaultTLSError) and exc.problem == "not-tls"


def test_tls_files_are_checked_before_any_request(bao_tls, pki, tmp_path, names):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    address, token = bao_tls.tls_addresses[GOOD], bao_tls.root_token
    cases = [
        ({"verify": str(tmp_path / "missing.pem")}, "does not exist"),
        ({"verify": str(garbage)}, "no PEM certificate"),
        ({"verify": pki.ca_pem, "client_key": pki.client[1]}, "client_key needs client_cert"),
        ({"verify": pki.ca_pem, "client_cert": pki.client[0], "client_key": pki.intruder[1]},
         "is not a PEM certificate with its unencrypted private key"),
        # The CA's own key is encrypted: refused, never an interactive passphrase prompt.
        ({"verify": pki.ca_pem, "client_cert": pki.ca_pem, "client_key": str(pki.ca.key_path)},
         "unencrypted private key"),
        ({"verify": pki.ca_pem, "client_cert": str(tmp_path / "none.pem")}, "does not exist"),
    ]
    for kw, words in cases:
        exc = refused(lambda kw=kw: VaultKeyProvider(address, token=token, **names, **kw))
        assert isinstance(exc, VaultConfigurationError) and words in str(exc)


# ---- client certificates: strict mTLS, and the cert auth method ----

def test_a_listener_requiring_client_certificates(connect, pki):
    exc = refused(lambda: connect(MTLS, verify=pki.ca_pem))
    assert isinstance(exc, VaultTLSError) and exc.problem == "client-certificate"
    exc = refused(lambda: connect(MTLS, verify=pki.ca_pem, client_cert=pki.intruder[0],
                                  client_key=pki.intruder[1]))
    assert isinstance(exc, VaultTLSError) and exc.problem == "client-certificate"
    p = connect(MTLS, verify=pki.ca_pem, client_cert=pki.client[0], client_key=pki.client[1])
    assert p.get_current_key().version == 1  # token auth, over mutual TLS


@pytest.fixture(scope="module")
def cert_role(bao_tls, pki):
    """The cert auth method, with a role trusting the engine's CA for keys under test/."""
    status, _ = bao_tls.request("POST", "sys/auth/cert", {"type": "cert"})
    assert status in (200, 204)
    policy = '''
path "transit/keys/*" { capabilities = ["create", "read", "update"] }
path "transit/datakey/plaintext/*" { capabilities = ["update"] }
path "transit/decrypt/*" { capabilities = ["update"] }
path "secret/data/test/*" { capabilities = ["create", "read", "update"] }
path "secret/metadata/test/*" { capabilities = ["list", "read"] }
'''
    assert bao_tls.request("PUT", "sys/policies/acl/engine-cert", {"policy": policy})[0] in (
        200, 204)
    with open(pki.ca_pem) as f:
        ca_pem = f.read()
    status, _ = bao_tls.request("POST", "auth/cert/certs/engine", {
        "certificate": ca_pem, "token_policies": ["engine-cert"], "token_ttl": "10m"})
    assert status in (200, 204)
    return "engine"


@pytest.mark.parametrize("listener", [GOOD, MTLS])
def test_certificate_login(bao_tls, pki, connect, cert_role, listener):
    p = connect(listener, verify=pki.ca_pem, token=None, client_cert=pki.client[0],
                client_key=pki.client[1], cert_role=cert_role)
    sealed = p.get_current_key().cipher.encrypt(bytes(16), b"mtls")
    login_token = p.connection.client.token
    assert login_token and login_token != bao_tls.root_token
    status, info = bao_tls.request("GET", "auth/token/lookup-self", token=login_token)
    assert status == 200 and info["data"]["policies"] == ["default", "engine-cert"]
    assert info["data"]["path"] == "auth/cert/login"

    bao_tls.request("POST", "auth/token/revoke", {"token": login_token})  # as if it expired
    p.refresh()
    assert p.create_version().version == 2  # logged in again, once, by itself
    assert p.get_key(1).cipher.decrypt(bytes(16), sealed) == b"mtls"
    again = p.connection.client.token
    assert again != login_token
    p.close()  # revokes the token it logged in for
    assert bao_tls.request("GET", "auth/token/lookup-self", token=again)[0] == 403


def test_certificate_login_from_the_environment(bao_tls, pki, names, cert_role):
    env = {"VAULT_ADDR": bao_tls.tls_addresses[GOOD].replace("127.0.0.1", "localhost"),
           "VAULT_CACERT": pki.ca_pem, "VAULT_CLIENT_CERT": pki.client[0],
           "VAULT_CLIENT_KEY": pki.client[1], "VAULT_CERT_ROLE": cert_role,
           "VAULT_TRANSIT_KEY": names["key_name"], "VAULT_KV_PATH": names["kv_path"]}
    with VaultKeyProvider.from_environment(env) as p:
        assert p.get_current_key().version == 1
        assert hvac.Client(p.address, token=p.connection.client.token,
                           verify=pki.ca_pem).auth.token.lookup_self()["data"]["path"] == \
            "auth/cert/login"


def test_certificate_login_with_a_certificate_from_another_ca_is_an_auth_error(
        connect, pki, cert_role):
    exc = refused(lambda: connect(verify=pki.ca_pem, token=None, client_cert=pki.intruder[0],
                                  client_key=pki.intruder[1], cert_role=cert_role))
    assert isinstance(exc, VaultAuthError) and "cert login" in str(exc)
    exc = refused(lambda: connect(verify=pki.ca_pem, token=None, cert_role=cert_role))
    assert isinstance(exc, VaultConfigurationError)  # no credentials at all
