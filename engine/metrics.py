"""Prometheus metrics that the IntelliFlow monitoring expects.

``encryption_operations_total{type="encrypt|decrypt"}`` counts records, not calls: a batch of a
million adds a million in one increment. Labelled children are resolved once, so counting costs a
lock and an addition per call, whatever the batch size.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["EngineMetrics", "OperationCounts", "VaultConnectivity", "get_metrics", "set_metrics"]


class OperationCounts:
    """``encryption_operations_total{type="encrypt|decrypt"}``: two integers under one lock,
    exported by a collector. It is counted once per encrypted value on the single-value path, where
    a prometheus ``Counter.inc`` would cost several times what the lock does."""

    __slots__ = ("_lock", "_counts")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = {"encrypt": 0, "decrypt": 0}

    def add(self, kind: str, count: int) -> None:
        with self._lock:
            self._counts[kind] += count

    def value(self, kind: str) -> int:
        """The count of ``"encrypt"`` or ``"decrypt"`` operations so far."""
        with self._lock:
            return self._counts[kind]

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily("encryption_operations", "Records encrypted or decrypted",
                                    labels=["type"])]

    def collect(self) -> list[CounterMetricFamily]:
        family = self.describe()[0]
        with self._lock:
            counts = list(self._counts.items())
        for kind, count in counts:
            family.add_metric([kind], count)
        return [family]


class VaultConnectivity:
    """``engine_vault_up`` and ``engine_vault_leader_changes_total`` per Vault (label ``vault``:
    its nodes' addresses), read at scrape time from this process's open Vault connections.

    Up is 1 when the last call reached a node that did the work, 0 when one gave up; when no
    call went out for ``probe_after`` seconds (keys cached), the scrape asks the nodes which one
    is active (``sys/leader``, bounded by the connection's timeout). Leader changes count each
    time a connection saw another node become active. A process with no Vault connection
    exports neither.
    """

    def __init__(self, probe_after: float = 30.0) -> None:
        self.probe_after = probe_after

    def describe(self) -> list[Any]:
        return self._families()

    @staticmethod
    def _families() -> list[Any]:
        return [GaugeMetricFamily("engine_vault_up", "1 when Vault answers this process (an "
                                  "active node reachable), else 0", labels=["vault"]),
                CounterMetricFamily("engine_vault_leader_changes", "Changes of Vault's active "
                                    "node seen by this process", labels=["vault"])]

    def collect(self) -> list[Any]:
        up, changes = self._families()
        nodes = sys.modules.get("engine.vault.nodes")  # never imported: no connection to report
        if nodes is None:
            return [up, changes]
        seen: dict[str, tuple[bool, int]] = {}
        for router in nodes.live_routers():
            status = router.status()
            healthy = status.up
            if healthy is None or time.monotonic() - status.last_contact > self.probe_after:
                healthy = router.probe()
            label = ",".join(status.nodes)
            was_up, was_changes = seen.get(label, (False, 0))
            seen[label] = (was_up or bool(healthy), max(was_changes, status.leader_changes))
        for label, (healthy, count) in sorted(seen.items()):
            up.add_metric([label], 1.0 if healthy else 0.0)
            changes.add_metric([label], count)
        return [up, changes]


class EngineMetrics:
    """The engine's metrics in one registry (the default registry unless one is given).

    Args:
        registry: where to register; a private ``CollectorRegistry()`` keeps tests apart.
    """

    __slots__ = (
        "registry", "operations", "errors", "rotation_last_success", "versions_active",
        "certificate_expiry", "_server", "reencryption", "reencryption_remaining", "vault",
    )

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = REGISTRY if registry is None else registry
        self.operations = OperationCounts()
        self.registry.register(self.operations)
        self.errors = Counter(
            "encryption_errors", "Failed encryption operations by kind", ["error_type"],
            registry=self.registry,
        )
        self.rotation_last_success = Gauge(
            "key_rotation_last_success_timestamp", "Unix time of the last successful key rotation",
            registry=self.registry,
        )
        self.versions_active = Gauge(
            "key_versions_active", "Key versions that can still decrypt (active or decrypt-only)",
            registry=self.registry,
        )
        self.certificate_expiry = Gauge(
            "certificate_expiry_seconds", "Seconds until a certificate expires", ["subject"],
            registry=self.registry,
        )
        self.reencryption = Counter(
            "reencryption_values", "Stored values seen by re-encryption jobs, by outcome: "
            "reencrypted, skipped (already current, NULL, or changed meanwhile), failed",
            ["outcome"], registry=self.registry,
        )
        self.reencryption_remaining = Gauge(
            "reencryption_values_remaining", "Values the running re-encryption job has still "
            "to scan", registry=self.registry,
        )
        self.vault = VaultConnectivity()
        self.registry.register(self.vault)
        self._server: Any = None

    def encrypted(self, records: int = 1) -> None:
        """Counts ``records`` encryptions (one call per batch)."""
        self.operations.add("encrypt", records)

    def decrypted(self, records: int = 1) -> None:
        """Counts ``records`` decryptions (one call per batch)."""
        self.operations.add("decrypt", records)

    def error(self, error_type: str, count: int = 1) -> None:
        """Counts failures of one kind (``invalid_tag``, ``unknown_key_version``, ...)."""
        self.errors.labels(error_type=error_type).inc(count)

    def rotation_succeeded(self, when: float | None = None) -> None:
        self.rotation_last_success.set(time.time() if when is None else when)

    def set_versions_active(self, count: int) -> None:
        self.versions_active.set(count)

    def reencryption_progress(self, reencrypted: int, skipped: int, failed: int,
                              remaining: int) -> None:
        """Counts one step of a re-encryption job (a batch or a partition) and sets the
        values it has left to scan."""
        for outcome, count in (("reencrypted", reencrypted), ("skipped", skipped),
                               ("failed", failed)):
            if count:
                self.reencryption.labels(outcome=outcome).inc(count)
        self.reencryption_remaining.set(max(remaining, 0))

    def observe_certificate(self, cert_path: str, now: Any = None) -> float:
        """Sets ``certificate_expiry_seconds{subject=...}`` from a PEM certificate on disk."""
        from .tls import certificate_expiry_seconds, certificate_subject

        seconds = certificate_expiry_seconds(cert_path, now=now)
        self.certificate_expiry.labels(subject=certificate_subject(cert_path)).set(seconds)
        return seconds

    def serve(self, port: int = 9464, addr: str = "127.0.0.1") -> int:
        """Starts the HTTP exporter (``/metrics``) in a daemon thread; returns the bound port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return server.server_address[1]

    def stop(self) -> None:
        """Stops the HTTP exporter started by :meth:`serve`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


_lock = threading.Lock()
_metrics: EngineMetrics | None = None


def get_metrics() -> EngineMetrics:
    """The process-wide metrics, registered in prometheus_client's default registry."""
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = EngineMetrics()
    return _metrics


def set_metrics(metrics: EngineMetrics | None) -> None:
    """Replaces the process-wide metrics (tests use a private registry)."""
    global _metrics
    with _lock:
        _metrics = metrics
