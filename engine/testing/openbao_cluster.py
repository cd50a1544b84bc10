"""A real three-node OpenBao cluster on loopback: integrated storage (Raft), Shamir unseal keys
held by the caller, TLS everywhere from the engine's own CA (:mod:`engine.tls`).

    from engine.testing.openbao_cluster import BaoCluster

    with BaoCluster() as cluster:                 # three nodes, initialised and unsealed
        provider = engine.VaultKeyProvider(cluster.addresses, token=cluster.root_token,
                                           verify=cluster.ca_file)
        victim = cluster.kill_leader()            # SIGKILL; the others elect a new leader
        cluster.restart(victim)                   # same data, unsealed again, a standby

:meth:`BaoCluster.start` creates a temporary directory with a throwaway CA, one P-256
certificate per node (127.0.0.1 and ``localhost``) and one configuration per node
(``storage "raft"`` with ``performance_multiplier = 1``, the fastest election timing, and one
HTTPS listener whose cluster port is the one advertised as ``cluster_addr``). It starts the
processes, initialises the first node (``sys/init``; the unseal keys and the root token stay in
this object), unseals it, joins the others to it (``sys/storage/raft/join`` with the CA) and
unseals them, mounts Transit at ``transit/`` and KV version 2 at ``secret/``, and waits until
every node answers as the active node or a standby.

:meth:`BaoCluster.stop` kills every node and removes the directory, whatever state the cluster
is in; it runs at interpreter exit too, so a test that fails (or is interrupted) leaves no
process and no directory behind. Each node also dies with the process that started it (Linux's
parent-death signal), so even a test runner killed outright leaves no server running (only its
temporary directory). Start a cluster from a thread that outlives it (the main thread): the
signal follows the thread that started the node.

Snapshots: :meth:`BaoCluster.snapshot_save` runs ``bao operator raft snapshot save`` against the
leader; :meth:`BaoCluster.wipe` kills the nodes and deletes their data; :meth:`BaoCluster.restore`
brings up a fresh cluster and installs the snapshot (``bao operator raft snapshot restore
-force``), after which the snapshot's own unseal keys and root token are the cluster's again.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .openbao import BaoError, BaoStartError, _clean_env, find_bao, free_port

__all__ = ["BaoCluster", "BaoNode", "BaoSnapshot"]

START_TIMEOUT = 60.0
ELECTION_TIMEOUT = 30.0
KEY_SHARES, KEY_THRESHOLD = 3, 2


@dataclass
class BaoNode:
    """One node of a :class:`BaoCluster`.

    Attributes:
        index: its position in :attr:`BaoCluster.nodes`.
        node_id: its Raft node id (``node0``...).
        address: ``https://127.0.0.1:<port>``, its API address (and ``api_addr``).
        cluster_port: the port of its cluster listener (Raft and request forwarding).
        directory: its configuration, log and Raft data.
    """

    index: int
    node_id: str
    address: str
    cluster_port: int
    directory: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        """True while its process runs."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.directory / "bao.log"

    @property
    def data_dir(self) -> Path:
        return self.directory / "raft"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass(frozen=True, repr=False)
class BaoSnapshot:
    """A Raft snapshot file and the credentials of the cluster it was taken from (a restored
    cluster is unsealed with these keys, and its root token is this one again)."""

    path: Path
    unseal_keys: tuple[str, ...]
    root_token: str

    def __repr__(self) -> str:
        return f"<BaoSnapshot {str(self.path)!r}>"


# Every cluster still running, stopped at interpreter exit (a test interrupted mid-way).
_LIVE: "weakref.WeakSet[BaoCluster]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for cluster in list(_LIVE):
        cluster.stop()


class BaoCluster:
    """Three (or ``size``) ``bao server`` processes forming one Raft cluster on loopback.

    Args:
        size: the number of nodes (3: one may fail and a majority remains).
        binary: the ``bao`` executable (default: :func:`~engine.testing.openbao.find_bao`).
        start_timeout: seconds to wait for the whole cluster to come up.
        performance_multiplier: Raft timing (1: the fastest elections OpenBao allows).

    Attributes:
        nodes: the :class:`BaoNode` objects.
        root_token: the root token of the cluster (a test credential).
        unseal_keys: the Shamir key shares (base64), of which :data:`KEY_THRESHOLD` unseal.
        ca_file: the PEM file of the CA that issued every node's certificate.
        directory: the temporary directory that holds everything (removed by :meth:`stop`).
    """

    def __init__(self, size: int = 3, *, binary: str | None = None,
                 start_timeout: float = START_TIMEOUT, performance_multiplier: int = 1) -> None:
        if type(size) is not int or size < 1:
            raise ValueError("size must be a positive integer")
        self.size = size
        self.binary = binary or find_bao()
        self.start_timeout = start_timeout
        self.performance_multiplier = performance_multiplier
        self.directory: Path | None = None
        self.nodes: list[BaoNode] = []
        self.root_token = ""
        self.unseal_keys: tuple[str, ...] = ()
        self.ca_file = ""
        self._ssl: ssl.SSLContext | None = None
        self._ca: Any = None

    def __repr__(self) -> str:
        return f"<BaoCluster nodes={[n.address for n in self.nodes]} running={self.running}>"

    def __enter__(self) -> "BaoCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def addresses(self) -> list[str]:
        """The nodes' API addresses, in node order."""
        return [n.address for n in self.nodes]

    @property
    def running(self) -> list[int]:
        """The indexes of the nodes whose process runs."""
        return [n.index for n in self.nodes if n.running]

    # ---- lifecycle ----

    def start(self) -> "BaoCluster":
        """Creates the CA, certificates and configurations, starts every node, initialises,
        unseals and joins them, and mounts Transit and KV v2.

        Raises:
            BaoStartError: a node did not start or the cluster did not form in time (the
                message has the logs' tails); everything started is stopped again.
        """
        if self.root_token and self.directory is not None:
            return self  # started already (``with BaoCluster().start() as c`` is fine)
        if self.directory is None:  # new, or stopped: everything afresh
            self.nodes, self.root_token, self.unseal_keys = [], "", ()
            self.directory = Path(tempfile.mkdtemp(prefix="openbao-cluster-"))
            _LIVE.add(self)
            try:
                self._make_pki()
                self._make_nodes()
            except BaseException:
                self.stop()
                raise
        try:
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def _make_pki(self) -> None:
        from ..tls import CertificateAuthority  # only the cluster needs cryptography

        assert self.directory is not None
        ca = CertificateAuthority.create(self.directory / "pki", passphrase=secrets.token_hex(16),
                                         common_name="openbao test cluster CA")
        self.ca_file = str(ca.cert_path)
        self._ca = ca
        self._ssl = ssl.create_default_context(cafile=self.ca_file)

    def _make_nodes(self) -> None:
        assert self.directory is not None
        for i in range(self.size):
            directory = self.directory / f"node{i}"
            directory.mkdir(mode=0o700)
            port = free_port()
            node = BaoNode(i, f"node{i}", f"https://127.0.0.1:{port}", free_port(), directory)
            cert, key = self._ca.issue(f"bao-node{i}", dns_names=["localhost"],
                                       ip_addresses=["127.0.0.1"], directory=directory / "tls")
            (directory / "bao.json").write_text(json.dumps(self._config(node, cert, key),
                                                           indent=1))
            self.nodes.append(node)

    def _config(self, node: BaoNode, cert: Path, key: Path) -> dict[str, Any]:
        port = node.address.rsplit(":", 1)[1]
        return {
            "storage": {"raft": {"path": str(node.data_dir), "node_id": node.node_id,
                                 "performance_multiplier": self.performance_multiplier,
                                 # Autopilot promotes a joined node to voter only after it
                                 # was stable for a while, checked every 10 s by default.
                                 "autopilot_reconcile_interval": "100ms",
                                 "autopilot_update_interval": "100ms"}},
            "listener": [{"tcp": {"address": f"127.0.0.1:{port}",
                                  "cluster_address": f"127.0.0.1:{node.cluster_port}",
                                  "tls_cert_file": str(cert), "tls_key_file": str(key)}}],
            "api_addr": node.address,
            "cluster_addr": f"https://127.0.0.1:{node.cluster_port}",
            "disable_mlock": True,
            "log_level": "info",
        }

    def _form(self) -> None:
        """Starts every node and brings a fresh cluster (no Raft data) up."""
        deadline = time.monotonic() + self.start_timeout
        for node in self.nodes:
            node.data_dir.mkdir(mode=0o700, exist_ok=True)
            self._spawn(node)
        for node in self.nodes:
            self._wait(node, deadline, lambda s, b: s in (501, 503) or s == 200,
                       "answer its health check")
        status, body = self.request(0, "PUT", "sys/init", {"secret_shares": KEY_SHARES,
                                                          "secret_threshold": KEY_THRESHOLD},
                                    token=None)
        if status != 200 or "root_token" not in body:
            raise BaoStartError(f"sys/init failed with HTTP {status}:\n{self.nodes[0].log_tail()}")
        self.root_token = body["root_token"]
        self.unseal_keys = tuple(body["keys_base64"])
        self._unseal(self.nodes[0], deadline)
        self._wait(self.nodes[0], deadline, lambda s, b: s == 200, "become active")
        self._admin(0, "POST", "sys/storage/raft/autopilot/configuration",
                    {"server_stabilization_time": "100ms"})
        # Mounted before the others join: a standby that unsealed before a KV v2 mount was
        # created answers its reads with 400 "waiting for the primary to upgrade" until it
        # becomes active itself.
        self._admin(0, "POST", "sys/mounts/transit", {"type": "transit"})
        self._admin(0, "POST", "sys/mounts/secret", {"type": "kv", "options": {"version": "2"}})
        ca_pem = Path(self.ca_file).read_text()
        for node in self.nodes[1:]:
            status, body = self.request(node.index, "POST", "sys/storage/raft/join", {
                "leader_api_addr": self.nodes[0].address, "leader_ca_cert": ca_pem}, token=None)
            if status != 200 or not body.get("joined"):
                raise BaoStartError(f"{node.node_id} did not join the cluster (HTTP {status}):"
                                    f"\n{node.log_tail()}")
            self._unseal(node, deadline)
        for node in self.nodes:
            self._wait(node, deadline, lambda s, b: s in (200, 429), "join as active or standby")
        self._wait_for_voters(deadline)
        self.wait_for_leader()

    def voters(self) -> dict[str, bool]:
        """{node id: voter?} from the leader's Raft configuration."""
        status, body = self.request(self.wait_for_leader(), "GET", "sys/storage/raft/configuration")
        servers = ((body.get("data") or {}).get("config") or {}).get("servers") or []
        return {s.get("node_id"): bool(s.get("voter")) for s in servers}

    def _wait_for_voters(self, deadline: float) -> None:
        """Until every node votes: a cluster whose joined nodes are not voters yet loses its
        quorum with its first node."""
        while True:
            voters = self.voters()
            if len(voters) == self.size and all(voters.values()):
                return
            if time.monotonic() > deadline:
                raise BaoStartError(f"not every node became a Raft voter in time: {voters}")
            time.sleep(0.1)

    def _spawn(self, node: BaoNode) -> None:
        self._kill(node)  # never two processes for one node (the first would be lost)
        log = open(node.log_path, "ab")
        try:
            node.proc = subprocess.Popen(
                [self.binary, "server", f"-config={node.directory / 'bao.json'}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=_clean_env(), start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            log.close()

    def _unseal(self, node: BaoNode, deadline: float, keys: tuple[str, ...] | None = None) -> None:
        for key in (keys or self.unseal_keys)[:KEY_THRESHOLD]:
            while True:
                try:
                    status = self.request(node.index, "PUT", "sys/unseal", {"key": key},
                                          token=None)[0]
                except OSError:
                    status = 0
                if status == 200:
                    break
                if time.monotonic() > deadline or not node.running:
                    raise BaoStartError(f"{node.node_id} could not be unsealed (HTTP {status}):"
                                        f"\n{node.log_tail()}")
                time.sleep(0.05)

    def _wait(self, node: BaoNode, deadline: float, ready: Callable[[int, dict], bool],
              what: str) -> None:
        while True:
            if not node.running:
                code = node.proc.returncode if node.proc else None
                raise BaoStartError(f"{node.node_id} exited (code {code}) before it could "
                                    f"{what}:\n{node.log_tail()}")
            try:
                status, body = self.health(node.index)
                if ready(status, body):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BaoStartError(f"{node.node_id} did not {what} in time:\n{node.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Kills every node and removes the cluster's directory. Idempotent; never raises."""
        for node in self.nodes:
            self._kill(node)
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
        _LIVE.discard(self)

    # ---- faults ----

    @staticmethod
    def _kill(node: BaoNode) -> None:
        proc, node.proc = node.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: nothing it spawned stays
            except ProcessLookupError:
                pass
        proc.wait()

    def kill(self, index: int) -> None:
        """SIGKILLs node ``index`` (no shutdown: Raft sees it vanish) and reaps it."""
        self._kill(self.nodes[index])

    def kill_leader(self, timeout: float = ELECTION_TIMEOUT) -> int:
        """SIGKILLs the active node; returns its index."""
        index = self.wait_for_leader(timeout)
        self.kill(index)
        return index

    def restart(self, index: int, timeout: float = START_TIMEOUT) -> None:
        """Starts node ``index`` again on its data and ports, unseals it and waits until it
        answers as a standby or the active node.

        Raises:
            BaoStartError: it did not come back in time.
        """
        node = self.nodes[index]
        if node.running:
            raise BaoError(f"{node.node_id} is running")
        deadline = time.monotonic() + timeout
        self._spawn(node)
        self._wait(node, deadline, lambda s, b: s in (200, 429, 503), "answer after a restart")
        self._unseal(node, deadline)
        self._wait(node, deadline, lambda s, b: s in (200, 429), "rejoin as active or standby")

    def step_down(self, timeout: float = ELECTION_TIMEOUT) -> int:
        """Makes the active node step down (``sys/step-down``: it stays up, as a standby),
        waits until another node is active and every running node names it (``sys/leader``);
        returns the new active node's index.

        Raises:
            BaoError: no other node took over within ``timeout`` seconds.
        """
        old = self.wait_for_leader(timeout)
        deadline = time.monotonic() + timeout
        while True:
            self.request(old, "PUT", "sys/step-down")
            try:
                new = self.wait_for_leader(min(3.0, timeout), not_index=old)
                break
            except BaoError:
                # The same node may take the lock again before another does: step down again.
                if time.monotonic() > deadline:
                    raise
        while not all(self.request(n.index, "GET", "sys/leader", token=None)[1].get(
                "leader_address") == self.nodes[new].address for n in self.nodes if n.running):
            if time.monotonic() > deadline:
                raise BaoError(f"not every node names {self.nodes[new].node_id} as active")
            time.sleep(0.05)
        return new

    # ---- leadership ----

    def leader(self) -> int | None:
        """The index of the node that answers as the active one now, or None."""
        for node in self.nodes:
            if not node.running:
                continue
            try:
                status, _ = self.health(node.index, timeout=2.0)
            except OSError:
                continue
            if status == 200:
                return node.index
        return None

    def wait_for_leader(self, timeout: float = ELECTION_TIMEOUT, *,
                        not_index: int | None = None) -> int:
        """Waits until a node (other than ``not_index``) is active; returns its index.

        Raises:
            BaoError: no node became active within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            index = self.leader()
            if index is not None and index != not_index:
                return index
            if time.monotonic() > deadline:
                raise BaoError(f"no active node after {timeout:g} s; running: {self.running}")
            time.sleep(0.05)

    # ---- snapshots ----

    def snapshot_save(self, path: str | os.PathLike[str]) -> BaoSnapshot:
        """``bao operator raft snapshot save <path>`` against the leader.

        Returns:
            The snapshot and the credentials it needs after a restore.
        """
        leader = self.wait_for_leader()
        self._bao(leader, "operator", "raft", "snapshot", "save", os.fspath(path))
        return BaoSnapshot(Path(path), self.unseal_keys, self.root_token)

    def wipe(self) -> None:
        """Kills every node and deletes their Raft data (configurations and certificates stay)."""
        for node in self.nodes:
            self._kill(node)
            shutil.rmtree(node.data_dir, ignore_errors=True)

    def restore(self, snapshot: BaoSnapshot) -> None:
        """Brings up a fresh cluster on wiped nodes (:meth:`wipe` first) and installs
        ``snapshot`` with ``bao operator raft snapshot restore -force``: from then on the
        snapshot's unseal keys and root token are the cluster's, and every node is unsealed
        with them."""
        if any(n.running for n in self.nodes):
            raise BaoError("restore() needs a wiped cluster: call wipe() first")
        self._form()
        leader = self.wait_for_leader()
        self._bao(leader, "operator", "raft", "snapshot", "restore", "-force",
                  os.fspath(snapshot.path))
        self.unseal_keys, self.root_token = snapshot.unseal_keys, snapshot.root_token
        # Each node finds that its root key no longer opens the restored keyring and seals
        # itself (the leader last, seconds later): each is unsealed with the snapshot's keys
        # as soon as it says it is sealed.
        deadline = time.monotonic() + self.start_timeout
        unsealed: set[int] = set()
        serving: set[int] = set()
        while len(serving) < self.size:
            for node in self.nodes:
                if node.index in serving:
                    continue
                try:
                    status, body = self.health(node.index, timeout=2.0)
                except OSError:
                    status, body = 0, {}
                if body.get("sealed"):
                    self._unseal(node, deadline)
                    unsealed.add(node.index)
                elif status in (200, 429) and node.index in unsealed:
                    serving.add(node.index)
            if time.monotonic() > deadline:
                raise BaoStartError(f"the restored cluster did not come back in time; "
                                    f"serving: {sorted(serving)}")
            time.sleep(0.05)
        self.wait_for_leader()

    # ---- a minimal admin client (stdlib only) ----

    def _bao(self, index: int, *args: str) -> str:
        env = {**_clean_env(), "BAO_ADDR": self.nodes[index].address, "BAO_CACERT": self.ca_file,
               "BAO_TOKEN": self.root_token}
        done = subprocess.run([self.binary, *args], env=env, capture_output=True, text=True,
                              timeout=self.start_timeout)
        if done.returncode != 0:
            raise BaoError(f"bao {' '.join(args[:4])} failed (exit {done.returncode}): "
                           f"{done.stderr.strip()[-500:]}")
        return done.stdout

    def _admin(self, index: int, method: str, path: str, body: dict[str, Any]) -> dict:
        status, answer = self.request(index, method, path, body)
        if status not in (200, 204):
            raise BaoStartError(f"{method} {path} failed with HTTP {status}: {answer}")
        return answer

    def health(self, index: int, timeout: float = 5.0) -> tuple[int, dict]:
        """``sys/health`` of node ``index``: 200 active, 429 standby, 501 not initialised,
        503 sealed."""
        return self.request(index, "GET", "sys/health", token=None, timeout=timeout)

    def request(self, index: int, method: str, path: str, body: dict[str, Any] | None = None,
                *, token: str | None | bool = True, timeout: float = 5.0) -> tuple[int, dict]:
        """One HTTPS call to node ``index``'s ``/v1/<path>``; returns (status, parsed JSON or
        {}). ``token=True`` sends the root token, a string sends that token, None sends none.
        Redirects are not followed."""
        headers = {"Content-Type": "application/json"}
        tok = self.root_token if token is True else token
        if tok:
            headers["X-Vault-Token"] = str(tok)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.nodes[index].address}/v1/{path}", data=data,
                                     headers=headers, method=method)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=self._ssl),
                                             _NoRedirect())
        try:
            with opener.open(req, timeout=timeout) as resp:
                raw, status = resp.read(), resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, (json.loads(raw) if raw.strip() else {})
        except ValueError:
            return status, {}


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the process that started it dies, however it
    dies (a test runner killed by a timeout runs no atexit hook). Linux only; elsewhere,
    :meth:`BaoCluster.stop` and the atexit hook are all there is."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
