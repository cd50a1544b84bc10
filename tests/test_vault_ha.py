"""VaultKeyProvider and VaultSecrets on a real three-node OpenBao Raft cluster (TLS from the
engine's CA, Shamir keys held here), and the rules for requests that change state.

These run in ``make test``: one cluster for the module (about 7 s to start), a few leader
kills. The long runs (rotation and traffic under 20+ leader kills, snapshot restore) are in
tests/test_vault_ha_slow.py, marked ``vault_ha`` and run by ``make test-vault-ha`` (.ci/run).
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

import hvac
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from vault_ha_support import AnswerLosingProxy, RequestLog, cluster_provider, start_cluster

from engine import EncryptionService
from engine.keys.base import KeyState, UnknownKeyVersion
from engine.metrics import EngineMetrics
from engine.testing.openbao import BaoNotFound
from engine.testing.openbao_cluster import BaoCluster
from engine.vault import (
    SecretVersionConflict,
    VaultKeyProvider,
    VaultOutcomeUnknown,
    VaultSecrets,
    VaultUnavailable,
)
from engine.vault.options import check_addresses

NONCE = bytes(16)


@pytest.fixture(scope="module")
def cluster():
    c = start_cluster()
    yield c
    c.stop()


@pytest.fixture
def make(cluster, names):
    """Providers on the cluster (closed after the test); every node is running again after it."""
    made = []

    def make(**kw):
        p = cluster_provider(cluster, names, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()
    for i, node in enumerate(cluster.nodes):
        if not node.running:
            cluster.restart(i)
    cluster.wait_for_leader()


def scrape(metrics: EngineMetrics) -> dict[tuple[str, tuple], float]:
    port = metrics.serve(0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    finally:
        metrics.stop()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# ---- the cluster itself ----

def test_three_voters_one_active_node_and_certificates_from_the_engine_ca(cluster):
    assert cluster.voters() == {"node0": True, "node1": True, "node2": True}
    statuses = sorted(cluster.health(i)[0] for i in range(3))
    assert statuses == [200, 429, 429]  # one active node, two standbys
    ca = x509.load_pem_x509_certificate(open(cluster.ca_file, "rb").read())
    for address in cluster.addresses:
        host, port = address.removeprefix("https://").split(":")
        pem = ssl.get_server_certificate((host, int(port)))
        cert = x509.load_pem_x509_certificate(pem.encode())
        assert cert.issuer == ca.subject
        ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                               ec.ECDSA(cert.signature_hash_algorithm))
    with pytest.raises(OSError):  # TLS only: plain HTTP to a node gets no answer
        urllib.request.urlopen(cluster.addresses[0].replace("https", "http") + "/v1/sys/health",
                               timeout=5)


def test_a_failing_test_leaves_no_process_and_no_directory():
    with pytest.raises(RuntimeError, match="the test failed"):
        with start_cluster(size=1) as c:
            pids = [n.pid for n in c.nodes]
            directory = c.directory
            assert directory.is_dir() and c.leader() == 0
            raise RuntimeError("the test failed")
    assert not directory.exists()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    c.stop()  # idempotent


def test_a_test_runner_killed_outright_leaves_no_server_running(tmp_path):
    script = tmp_path / "runner.py"
    script.write_text(
        "import os, sys\n"
        "from engine.testing.openbao_cluster import BaoCluster\n"
        "c = BaoCluster(1).start()\n"
        "print(c.nodes[0].pid, c.directory, flush=True)\n"
        "os.kill(os.getpid(), 9)  # no atexit, no finally\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == -9, done.stderr
    pid, directory = done.stdout.split()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"bao {pid} outlived the process that started it")
    shutil.rmtree(directory)  # a directory is all a killed runner leaves


def test_a_missing_binary_says_how_to_install_it(monkeypatch):
    monkeypatch.setenv("BAO_BINARY", "/nonexistent/bao")
    with pytest.raises(BaoNotFound, match="BAO_BINARY"):
        BaoCluster()


# ---- following the active node ----

def test_requests_go_to_the_active_node_whatever_the_order_of_the_addresses(cluster, make):
    leader = cluster.wait_for_leader()
    standbys_first = [a for i, a in enumerate(cluster.addresses) if i != leader] + \
        [cluster.addresses[leader]]
    p = make(addresses=standbys_first)
    log = RequestLog(p)
    p.create_version()
    key = p.get_current_key()
    assert key.cipher.decrypt(NONCE, key.cipher.encrypt(NONCE, b"x")) == b"x"
    assert p.connection.leader == cluster.addresses[leader]
    work = [s for s in log.sent if "sys/leader" not in s.path]
    assert work and {s.node for s in work} == {cluster.addresses[leader]}


def test_one_standby_address_leads_the_provider_to_the_active_node(cluster, make):
    leader = cluster.wait_for_leader()
    standby = cluster.addresses[(leader + 1) % 3]
    p = make(addresses=standby)  # the standby names the active node (sys/leader)
    log = RequestLog(p)
    p.create_version()
    assert p.connection.leader == cluster.addresses[leader]
    assert {s.node for s in log.sent} == {cluster.addresses[leader]}


def test_a_leader_that_steps_down_redirects_writes_which_are_never_forwarded(cluster, make):
    p = make()
    last = p.create_version().version
    redirected = 0
    for _ in range(3):  # on a loaded machine a read may fail over first: then again
        p.get_current_key()
        old = cluster.wait_for_leader()
        assert p.connection.leader == cluster.addresses[old]
        changes = p.stats()["leader_changes"]
        cluster.step_down()  # the old active node is a standby now, and still answers
        deadline = time.monotonic() + 10
        while cluster.health(old)[0] != 429 and time.monotonic() < deadline:
            time.sleep(0.05)
        log = RequestLog(p)
        version = p.create_version().version
        active = cluster.addresses[cluster.wait_for_leader()]
        writes = [s for s in log.sent if s.method in ("POST", "PUT") and "/secret/data/" in s.path]
        # A write that reaches a standby carries X-Vault-No-Request-Forwarding: the standby
        # answers 307 with the new active node's address (or, while it knows none yet, 500
        # "active cluster node not found"), having done nothing, and the provider sends it
        # there itself. No standby ever answers a write with 200.
        assert all(s.node == active for s in writes if s.status == 200), (writes, active)
        assert p.connection.leader == active and p.stats()["leader_changes"] > changes
        assert version == last + 1 == [i.version for i in p.list_versions()][-1]
        last = version
        if writes[0].node == cluster.addresses[old] and writes[0].status == 307:
            redirected += 1
            break
    assert redirected == 1


def test_the_active_node_dies_the_provider_follows_counts_it_and_vault_up_stays_1(cluster, make):
    metrics = EngineMetrics(CollectorRegistry())
    p = make(cache_ttl=0)
    other = make()
    p.create_version()
    key = p.get_current_key()
    sealed = key.cipher.encrypt(NONCE, b"before the election")
    old = cluster.kill_leader()
    created = p.create_version()  # waits out the election (a few seconds) within its deadline
    # Created just before the leader died: a standby's replica may not have it yet; its "not
    # found" is asked again of the new active node, never turned into UnknownKeyVersion.
    fresh = make()
    assert fresh.get_key(created.version).cipher.decrypt(
        NONCE, p.get_key(created.version).cipher.encrypt(NONCE, b"y")) == b"y"
    assert p.get_key(key.version).cipher.decrypt(NONCE, sealed) == b"before the election"
    assert p.connection.leader != cluster.addresses[old]
    assert p.stats()["leader_changes"] == 1
    label = ",".join(cluster.addresses)
    got = scrape(metrics)
    assert got[("engine_vault_up", (("vault", label),))] == 1
    assert got[("engine_vault_leader_changes_total", (("vault", label),))] == 1
    assert other.get_current_key().version in (1, 2)  # idle connections follow when used
    cluster.restart(old)


def test_without_a_quorum_calls_fail_typed_within_the_deadline_and_vault_up_is_0(cluster, make):
    metrics = EngineMetrics(CollectorRegistry())
    p = make(deadline=2.0, cache_ttl=60)
    key = p.get_current_key()
    sealed = key.cipher.encrypt(NONCE, b"cached")
    first = cluster.kill_leader()
    cluster.kill(cluster.running[0])  # one node of three left: no election can succeed
    start = time.monotonic()
    with pytest.raises(VaultUnavailable) as info:
        p.create_version()
    assert time.monotonic() - start < 2.0 + 2.0 + 3.0  # the deadline, one call's timeout: no hang
    assert info.value.__context__ is None and info.value.__cause__ is None
    assert not isinstance(info.value, VaultOutcomeUnknown) or "may or may not" in str(info.value)
    assert p.get_key(key.version).cipher.decrypt(NONCE, sealed) == b"cached"  # the cache serves
    label = ",".join(cluster.addresses)
    assert scrape(metrics)[("engine_vault_up", (("vault", label),))] == 0
    for i in range(3):
        if not cluster.nodes[i].running:
            cluster.restart(i)
    cluster.wait_for_leader()
    p.create_version()  # back: and nothing half-done stays behind
    versions = p.list_versions()
    assert [i.state for i in versions].count(KeyState.ACTIVE) == 1
    assert first is not None


def test_vault_secrets_on_the_cluster_through_a_standby(cluster, make):
    leader = cluster.wait_for_leader()
    p = make(addresses=[cluster.addresses[(leader + 1) % 3], cluster.addresses[(leader + 2) % 3]])
    secrets = VaultSecrets(p, base_path=f"ha-{random.randrange(10**9)}")
    assert secrets.write("config", {"a": 1}, cas=0) == 1
    assert secrets.write("config", {"a": 2}, cas=1) == 2
    with pytest.raises(SecretVersionConflict):
        secrets.write("config", {"a": 3}, cas=1)
    assert secrets.read("config") == {"a": 2}


# ---- settings ----

def test_several_addresses_from_a_list_or_vault_addr_and_a_default_deadline(cluster, names,
                                                                             monkeypatch):
    assert check_addresses("https://a:8200, https://b:8200/,https://a:8200") == \
        ["https://a:8200", "https://b:8200"]
    monkeypatch.setenv("VAULT_ADDR", ",".join(cluster.addresses))
    monkeypatch.setenv("VAULT_TOKEN", cluster.root_token)
    monkeypatch.setenv("VAULT_CACERT", cluster.ca_file)
    p = VaultKeyProvider.from_environment(**names)
    try:
        assert p.connection.policy.deadline == 15.0
        assert p.connection.leader in cluster.addresses or p.connection.leader is None
        blob = pickle.dumps(p.config())
        assert cluster.root_token.encode() not in blob
        rebuilt = pickle.loads(blob).build()
        try:
            assert rebuilt.get_current_key().version == p.get_current_key().version
        finally:
            rebuilt.close()
    finally:
        p.close()
    monkeypatch.setenv("VAULT_DEADLINE", "3.5")
    p = VaultKeyProvider.from_environment(**names)
    try:
        assert p.connection.policy.deadline == 3.5
    finally:
        p.close()


# ---- a state-changing request is applied once, whatever happens to its answer ----

@pytest.fixture
def losing(bao):
    with AnswerLosingProxy(bao.address) as proxy:
        yield proxy


@pytest.fixture
def via_proxy(losing, bao, names):
    made = []

    def make(**kw):
        p = VaultKeyProvider(losing.address, token=bao.root_token, timeout=2.0, retries=2,
                             **names, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def test_a_lost_answer_to_a_version_write_creates_exactly_one_version(via_proxy, losing, bao,
                                                                     names):
    p = via_proxy()
    p.get_current_key()
    losing.lose(lambda method, path: method == "POST" and path.endswith("/encryption/v2"))
    assert p.create_version().version == 2  # the write applied; the provider read it back
    assert losing.lost == 1
    admin = hvac.Client(bao.address, token=bao.root_token)
    keys = admin.secrets.kv.v2.list_secrets(path=names["kv_path"], mount_point="secret")
    assert sorted(k for k in keys["data"]["keys"] if k.startswith("v")) == ["v1", "v2"]
    meta = admin.secrets.kv.v2.read_secret_metadata(path=f"{names['kv_path']}/v2",
                                                    mount_point="secret")
    assert meta["data"]["current_version"] == 1  # written once, not twice
    assert p.current_version == 2


def test_a_lost_answer_to_a_transit_rotation_rotates_once(via_proxy, losing, bao, names):
    p = via_proxy()
    p.get_current_key()
    admin = hvac.Client(bao.address, token=bao.root_token)
    before = admin.secrets.transit.read_key(names["key_name"])["data"]["latest_version"]
    losing.lose(lambda method, path: method == "POST" and path.endswith("/rotate"))
    report = p.rotate_wrapping_key()
    after = admin.secrets.transit.read_key(names["key_name"])["data"]["latest_version"]
    assert losing.lost == 1 and after == before + 1 == report.transit_version
    assert report.rewrapped == (1,)
    p.rotate_wrapping_key()  # the journal says the last run finished: this one rotates again
    assert admin.secrets.transit.read_key(names["key_name"])["data"]["latest_version"] == after + 1


def test_a_lost_answer_to_a_check_and_set_write_is_success_not_a_conflict(via_proxy, losing):
    secrets = VaultSecrets(via_proxy(), base_path=f"lost-{random.randrange(10**9)}")
    secrets.write("api", {"api_key": "first"}, cas=0)
    losing.lose(lambda method, path: method == "POST" and "/api" in path)
    assert secrets.write("api", {"api_key": "second"}, cas=1) == 2
    assert secrets.read("api") == {"api_key": "second"} and losing.lost == 1
    with pytest.raises(SecretVersionConflict):  # and a real conflict is still one
        secrets.write("api", {"api_key": "third"}, cas=1)


def test_a_write_that_cannot_be_read_back_is_outcome_unknown(via_proxy, losing):
    p = via_proxy()
    p.get_current_key()
    losing.lose(lambda method, path: method == "POST" and path.endswith("/encryption/v2"))
    real_take = losing._take

    def then_refuse(method, path):  # the answer is lost, and Vault is gone right after
        taken = real_take(method, path)
        if taken:
            losing.refuse()
        return taken

    losing._take = then_refuse
    with pytest.raises(VaultOutcomeUnknown) as info:
        p.create_version()
    exc = info.value
    assert isinstance(exc, VaultUnavailable) and exc.__context__ is None and exc.__cause__ is None
    assert "may or may not" in str(exc) and exc.operation == "create key version 2"
    assert pickle.loads(pickle.dumps(exc)).operation == exc.operation
    losing.refuse(False)
    assert p.create_version().version in (2, 3)  # v2 did apply: the next one is v3
    assert [i.version for i in p.list_versions()][-1] == 3


def test_a_rotation_whose_roll_back_fails_too_is_recorded_and_completed_by_a_rerun(
        via_proxy, losing, tmp_path):
    import json

    from engine import audit
    from engine.rotation import KeyRotationService, RotationFailed, RotationPolicy

    p = via_proxy()
    log = audit.AuditLog(tmp_path / "audit.log", p.audit_key(), fsync=False)
    svc = KeyRotationService(p, RotationPolicy(), state_dir=tmp_path, audit=log)
    first = svc.rotate_keys().new_version

    def vault_goes_away(step, detail):
        if step == "post_verification":
            losing.refuse()  # Vault unreachable for the step and for the roll-back after it
            raise RuntimeError("the leader died")

    svc.observer = vault_goes_away
    with pytest.raises(RotationFailed) as info:
        svc.rotate_keys()
    assert info.value.step == "post_verification" and info.value.rolled_back is False
    assert "run the rotation again" in str(info.value)
    entries = [json.loads(line) for line in open(tmp_path / "audit.log")]
    failed = entries[-1]
    assert failed["event"] == audit.KEY_ROTATION_FAILED
    assert failed["details"]["error"] == "RuntimeError"
    assert failed["details"]["rollback_error"] == "VaultUnavailable"
    svc.observer = None
    with pytest.raises(RotationFailed) as info:  # Vault still away: the rerun cannot start
        svc.rotate_keys()
    assert info.value.step == "start"
    start = [json.loads(line) for line in open(tmp_path / "audit.log")][-1]
    assert start["event"] == audit.KEY_ROTATION_FAILED and start["details"]["step"] == "start"
    losing.refuse(False)
    result = svc.rotate_keys()  # the rerun completes it
    states = {i.version: i.state for i in p.list_versions()}
    # the failed attempt's version stays (deprecated, never active); the rerun makes the next
    assert result.new_version == first + 2 and states[first + 2] is KeyState.ACTIVE
    assert list(states.values()).count(KeyState.ACTIVE) == 1


def test_under_steady_traffic_the_new_active_node_is_found_and_followed(cluster, make):
    p = make(cache_ttl=0)  # every call goes to Vault
    svc = EncryptionService(p, metrics=False)
    token = svc.encrypt_token(b"before")
    stop, failures, done = threading.Event(), [], [0]

    def busy() -> None:  # reads only: a write would learn the active node from a 307
        while not stop.is_set():
            try:
                assert svc.decrypt(token) == b"before"
                done[0] += 1
            except Exception as exc:  # noqa: BLE001 - collected, asserted below
                failures.append(exc)

    threads = [threading.Thread(target=busy) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        old = cluster.kill_leader()
        new = cluster.wait_for_leader(not_index=old)
        # Reads went on at the standbys meanwhile; the provider looks for the active node
        # every 0.1 s while it knows none, however busy it is.
        deadline = time.monotonic() + 5
        while p.connection.leader != cluster.addresses[new] and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    assert p.connection.leader == cluster.addresses[new] and p.stats()["leader_changes"] == 1
    assert done[0] > 0 and svc.decrypt(token) == b"before"
    cluster.restart(old)


# ---- after a restore: the versions Vault no longer has are named ----

def test_an_inventory_names_each_key_version_the_provider_lacks(bao, names, tmp_path):
    """What a restore from a snapshot older than the newest version leaves (the slow test
    restores a real one): the inventory counts the values per missing version, not just
    "unknown key version"."""
    import sqlite3

    from engine.reencrypt import inventory, open_store

    p = VaultKeyProvider(bao.address, token=bao.root_token, **names)
    svc = EncryptionService(p, metrics=False)
    db = tmp_path / "crm.db"
    kv = hvac.Client(bao.address, token=bao.root_token).secrets.kv.v2
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, ssn TEXT)")
        for count in (5, 3, 2):
            for _ in range(count):
                conn.execute("INSERT INTO customers (ssn) VALUES (?)",
                             (svc.encrypt_token(os.urandom(9)),))
            if count == 5:  # the snapshot: v1's entry and the pointer as they are now
                v1 = kv.read_secret_version(path=f"{names['kv_path']}/v1", mount_point="secret",
                                            raise_on_deleted_version=True)["data"]["data"]
            if count != 2:
                p.create_version()
    p.close()
    for gone in (2, 3):  # Vault comes back from that snapshot
        kv.delete_metadata_and_all_versions(path=f"{names['kv_path']}/v{gone}",
                                            mount_point="secret")
    kv.create_or_update_secret(path=f"{names['kv_path']}/v1", secret=v1, mount_point="secret")
    kv.create_or_update_secret(path=f"{names['kv_path']}/current", secret={"version": 1},
                               mount_point="secret")
    restored = VaultKeyProvider(bao.address, token=bao.root_token, **names)
    try:
        report = inventory(open_store(f"sqlite:///{db}", "customers", "id"), ["ssn"],
                           service=EncryptionService(restored, metrics=False))
    finally:
        restored.close()
    counts = report.columns["ssn"]
    assert counts.versions == {1: 5} and counts.unknown_key_version == 5
    assert counts.missing_versions == {2: 3, 3: 2}
    assert report.to_dict()["columns"]["ssn"]["missing_versions"] == {"2": 3, "3": 2}


def test_a_provider_running_across_a_restore_stops_using_the_versions_it_lost(bao, names):
    kv = hvac.Client(bao.address, token=bao.root_token).secrets.kv.v2
    p = VaultKeyProvider(bao.address, token=bao.root_token, cache_ttl=300, **names)
    try:
        p.get_current_key()
        v1 = kv.read_secret_version(path=f"{names['kv_path']}/v1", mount_point="secret",
                                    raise_on_deleted_version=True)["data"]["data"]
        p.create_version()
        lost = p.create_version().version
        for gone in (2, 3):  # Vault restored from a snapshot taken when v1 was current
            kv.delete_metadata_and_all_versions(path=f"{names['kv_path']}/v{gone}",
                                                mount_point="secret")
        kv.create_or_update_secret(path=f"{names['kv_path']}/v1", secret=v1, mount_point="secret")
        kv.create_or_update_secret(path=f"{names['kv_path']}/current", secret={"version": 1},
                                   mount_point="secret")
        p.refresh()  # or the pointer's cache_ttl passing
        assert p.get_current_key().version == 1  # not the lost v3, and v1 active again
        with pytest.raises(UnknownKeyVersion):
            p.get_key(lost)
    finally:
        p.close()
