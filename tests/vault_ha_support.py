"""Helpers of the Vault HA tests (tests/test_vault_ha*.py): the cluster fixture's start, a log of
the HTTP requests a provider sends, and a proxy that loses Vault's answers on demand."""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Callable

import pytest

from engine.testing.openbao import BaoNotFound
from engine.testing.openbao_cluster import BaoCluster
from engine.vault import VaultKeyProvider


def start_cluster(size: int = 3) -> BaoCluster:
    """A started cluster; a missing ``bao`` binary fails the test (never skips it)."""
    try:
        return BaoCluster(size).start()
    except BaoNotFound as exc:
        pytest.fail(f"OpenBao is required for the Vault HA tests: {exc}", pytrace=False)


def cluster_provider(cluster: BaoCluster, names: dict, *, addresses=None,
                     **kw) -> VaultKeyProvider:
    """A provider on every node of ``cluster`` (or on ``addresses``), over TLS with its CA."""
    kw.setdefault("timeout", 2.0)
    return VaultKeyProvider(cluster.addresses if addresses is None else addresses,
                            token=cluster.root_token, verify=cluster.ca_file, **names, **kw)


@dataclass(frozen=True)
class Sent:
    """One answered request: method, the node's base address, the path, the status."""

    method: str
    node: str
    path: str
    status: int


class RequestLog:
    """Every request a provider's HTTP session gets an answer to, in order."""

    def __init__(self, provider: VaultKeyProvider) -> None:
        self.sent: list[Sent] = []
        self._lock = threading.Lock()
        provider.connection.client.adapter.session.hooks["response"].append(self._seen)

    def _seen(self, response, *args, **kwargs) -> None:
        url = urllib.parse.urlsplit(response.url)
        with self._lock:
            self.sent.append(Sent(response.request.method, f"{url.scheme}://{url.netloc}",
                                  url.path, response.status_code))

    def clear(self) -> None:
        with self._lock:
            self.sent.clear()

    def to(self, path_part: str) -> list[Sent]:
        return [s for s in self.sent if path_part in s.path]


class AnswerLosingProxy:
    """A plain-HTTP proxy in front of a Vault server that can lose answers.

    ``lose(predicate)``: a request for which ``predicate(method, path)`` is true is passed to
    Vault and answered there, and its answer is thrown away: the client's connection is closed
    without a byte (a node that died after it applied the request). ``refuse()``: from then on,
    every connection is closed at once (Vault unreachable). ``lost`` counts the answers lost.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.lost = 0
        self._predicate: Callable[[str, str], bool] | None = None
        self._times = 0
        self._refusing = False
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _relay(self) -> None:
                if proxy._refusing:
                    self._drop()
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream = http.client.HTTPConnection(proxy.upstream.hostname,
                                                      proxy.upstream.port, timeout=10)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("host", "connection")}
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    answer = upstream.getresponse()
                    payload = answer.read()
                finally:
                    upstream.close()
                if proxy._take(self.command, self.path):
                    self._drop()
                    return
                self.send_response(answer.status, answer.reason)
                for name, value in answer.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _drop(self) -> None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            do_GET = do_POST = do_PUT = do_DELETE = do_LIST = _relay

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.address = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "AnswerLosingProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def lose(self, predicate: Callable[[str, str], bool], times: int = 1) -> None:
        """Loses the answers of the next ``times`` requests that match ``predicate``."""
        self._predicate, self._times = predicate, times

    def refuse(self, refusing: bool = True) -> None:
        self._refusing = refusing

    def _take(self, method: str, path: str) -> bool:
        if self._predicate is None or self._times <= 0 or not self._predicate(method, path):
            return False
        self._times -= 1
        self.lost += 1
        return True
