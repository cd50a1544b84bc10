"""A throwaway Prometheus server and Pushgateway for tests, from Debian's ``prometheus`` and
``prometheus-pushgateway`` packages.

Each runs on a free loopback port with its state in a fresh temporary directory (the
Pushgateway's persistence file too: Debian's default is under /var/lib), and is stopped and its
directory removed by :meth:`stop`::

    from engine.testing.prometheus import PrometheusServer, Pushgateway

    with Pushgateway() as gateway, PrometheusServer(targets={"engine": [exporter]},
                                                    pushgateway=gateway.address) as prom:
        prom.wait_for_scrape("engine")
        prom.query('engine_key_versions_active')   # the HTTP API's result list

Standard library only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Sequence

from .postgres import free_port

__all__ = ["PrometheusNotFound", "PrometheusServer", "PrometheusStartError", "Pushgateway",
           "find_program"]

START_TIMEOUT = 60.0
_INSTALL_HINT = ("install Debian's `prometheus` and `prometheus-pushgateway` packages "
                 "(`make system-deps` does)")


class PrometheusNotFound(RuntimeError):
    """A program was not found; the message says how to install it."""


class PrometheusStartError(RuntimeError):
    """A server did not start in time (the message has its log's tail)."""


def find_program(name: str) -> str:
    """The path of ``name`` (``prometheus``, ``promtool``, ``prometheus-pushgateway``).

    Raises:
        PrometheusNotFound: it is not on ``PATH``.
    """
    path = shutil.which(name)
    if path is None:
        raise PrometheusNotFound(f"{name} was not found; {_INSTALL_HINT}")
    return path


def http_get(url: str, timeout: float = 5.0) -> bytes:
    """The body of a GET (raises ``urllib.error.URLError`` like urlopen)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return resp.read()


class _Server:
    """A server process in a temporary directory, on a free loopback port."""

    program = ""
    prefix = ""

    def __init__(self) -> None:
        self.port: int | None = None
        self.dir: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._log: Any = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def _arguments(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> Any:
        """Starts the server and waits until it is ready; returns ``self``.

        Raises:
            PrometheusNotFound: the program is missing.
            PrometheusStartError: it did not get ready in time (with its log's tail).
        """
        program = find_program(self.program)
        self.dir = Path(tempfile.mkdtemp(prefix=self.prefix))
        try:
            for _attempt in range(5):
                self.port = free_port()
                self._log = open(self.dir / "server.log", "wb")  # noqa: SIM115 - closed in stop
                self._proc = subprocess.Popen([program, *self._arguments()], cwd=self.dir,
                                              stdout=self._log, stderr=subprocess.STDOUT)
                if self._ready():
                    return self
                self._terminate()
                if "address already in use" not in self.log().lower():
                    break
            raise PrometheusStartError(f"{self.program} did not start:\n{self.log()[-2000:]}")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                http_get(f"{self.address}/-/ready", timeout=1)
                return True
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        return False

    def log(self) -> str:
        """The server's output so far."""
        if self.dir is None or not (self.dir / "server.log").exists():
            return ""
        return (self.dir / "server.log").read_text(errors="replace")

    def _terminate(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stops the server and removes its directory."""
        self._terminate()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


class Pushgateway(_Server):
    """A Pushgateway whose persistence file lives in its temporary directory."""

    program = "prometheus-pushgateway"
    prefix = "engine-pushgateway-"

    def _arguments(self) -> list[str]:
        assert self.dir is not None
        return [f"--web.listen-address=127.0.0.1:{self.port}",
                f"--persistence.file={self.dir / 'pushgateway.data'}", "--log.level=warn"]

    def groups(self) -> list[dict[str, Any]]:
        """The groups it holds (its ``/api/v1/metrics``)."""
        return json.loads(http_get(f"{self.address}/api/v1/metrics"))["data"]


class PrometheusServer(_Server):
    """A Prometheus server scraping ``targets`` (and a Pushgateway) every ``interval`` seconds,
    evaluating ``rule_files`` as often.

    Args:
        targets: job name -> ``host:port`` addresses to scrape.
        pushgateway: a Pushgateway's address, scraped as job ``pushgateway`` with the pushed
            labels kept (``honor_labels``), as its documentation asks.
        rule_files: alerting and recording rule files to load.
        interval: scrape and evaluation interval in seconds.
    """

    program = "prometheus"
    prefix = "engine-prometheus-"

    def __init__(self, *, targets: Mapping[str, Sequence[str]] | None = None,
                 pushgateway: str | None = None, rule_files: Sequence[str | os.PathLike] = (),
                 interval: float = 1.0) -> None:
        super().__init__()
        self.targets = {job: list(addresses) for job, addresses in (targets or {}).items()}
        self.pushgateway = pushgateway
        self.rule_files = [os.fspath(p) for p in rule_files]
        self.interval = interval

    def _config(self) -> dict[str, Any]:
        every = f"{int(self.interval * 1000)}ms"
        scrapes: list[dict[str, Any]] = [
            {"job_name": job, "static_configs": [{"targets": addresses}]}
            for job, addresses in self.targets.items()
        ]
        if self.pushgateway is not None:
            scrapes.append({"job_name": "pushgateway", "honor_labels": True, "static_configs": [
                {"targets": [urllib.parse.urlsplit(self.pushgateway).netloc]}]})
        return {"global": {"scrape_interval": every, "evaluation_interval": every,
                           "scrape_timeout": every},
                "rule_files": self.rule_files, "scrape_configs": scrapes}

    def _arguments(self) -> list[str]:
        assert self.dir is not None
        config = self.dir / "prometheus.yml"
        config.write_text(json.dumps(self._config()))  # JSON is YAML
        return [f"--config.file={config}", f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of an HTTP API answer (``/api/v1/<path>``).

        Raises:
            PrometheusStartError: the answer is not a success (with Prometheus's error).
        """
        query = urllib.parse.urlencode(params)
        body = json.loads(http_get(f"{self.address}/api/v1/{path}?{query}"))
        if body.get("status") != "success":
            raise PrometheusStartError(f"Prometheus answered {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now: ``[{"metric": labels, "value": [t, v]}]``."""
        return self.api("query", query=expr)["result"]

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Polls until ``expr`` returns a non-empty result; returns it.

        Raises:
            TimeoutError: it stayed empty for ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expr!r} stayed empty for {timeout} s; targets: "
                                   f"{self.api('targets')['activeTargets']}")
            time.sleep(self.interval / 2)
