"""The engine's Prometheus metrics: one ``engine_`` prefix, the seed's five names as aliases.

Every family is named ``engine_...``. The seed's monitoring asks for five names
without a prefix; they are exported as well, as exact copies of the prefixed families
(:data:`SEED_ALIASES`; ``EngineMetrics(seed_names=False)`` leaves them out). docs/metrics.md
lists every family, the alert rules and the dashboard shipped in :mod:`engine.monitoring`.

``engine_encryption_operations_total{type="encrypt|decrypt"}`` counts records, not calls: a batch
of a million adds a million in one increment. ``engine_encryption_errors_total{error_type}``
counts every input the engine refuses, once, by a kind from the fixed set
:data:`~engine.errors.ERROR_TYPES` (see :mod:`engine.refusals`). The key facts (versions that
still decrypt, the current version's usage against its limit, when it was made) are read from the
key provider, so they are true in every process that holds a key, not only in the one that
rotated.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator
from urllib.parse import unquote, urlsplit, urlunsplit

from prometheus_client import REGISTRY, CollectorRegistry, Counter, push_to_gateway, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import basic_auth_handler, default_handler

from .errors import ERROR_TYPES, EngineError
from .keys.base import KeyProvider, KeyState, usage_limit
from .locks import fork_safe_lock

__all__ = [
    "ERROR_TYPES",
    "SEED_ALIASES",
    "EngineMetrics",
    "KeyFacts",
    "OperationCounts",
    "PushFailed",
    "VaultConnectivity",
    "get_metrics",
    "read_key_facts",
    "set_metrics",
]

#: Prefixed family -> the seed's name, exported as an exact copy.
SEED_ALIASES = {
    "engine_encryption_operations": "encryption_operations",
    "engine_encryption_errors": "encryption_errors",
    "engine_key_rotation_last_success_timestamp_seconds": "key_rotation_last_success_timestamp",
    "engine_key_versions_active": "key_versions_active",
    "engine_certificate_expiry_seconds": "certificate_expiry_seconds",
}


# ---------------------------------------------------------------- the key facts


@dataclass(frozen=True)
class KeyFacts:
    """What a key provider says about its versions (never a key).

    Attributes:
        versions_active: versions that still decrypt (active or decrypt-only).
        current_version: the version new data is encrypted under (None before the first).
        current_created: when it was made (Unix time): the last successful rotation.
        current_usage: encryptions recorded for it, across processes.
        current_usage_limit: encryptions it may do (2**32 for AES-256-GCM; None for XAES).
    """

    versions_active: int
    current_version: int | None
    current_created: float | None
    current_usage: int | None
    current_usage_limit: int | None


def read_key_facts(provider: KeyProvider) -> KeyFacts:
    """Reads :class:`KeyFacts` from a provider (a file read, or Vault requests).

    Raises:
        KeyProviderError: the provider cannot be read.
    """
    infos = provider.list_versions()
    current = provider.current_version
    info = next((i for i in infos if i.version == current), None)
    return KeyFacts(
        versions_active=sum(i.state is not KeyState.DEPRECATED for i in infos),
        current_version=current,
        current_created=info.created_at.timestamp() if info is not None else None,
        current_usage=provider.usage(info.version) if info is not None else None,
        current_usage_limit=usage_limit(info.algorithm) if info is not None else None,
    )


class _KeyWatch:
    """The key facts of one provider, read off the scrape path: a scrape starts a read in a
    thread of its own when the last one is older than ``max_age`` and waits for it only a
    bounded time, so a Vault that hangs delays no scrape by more than that, and the metrics
    that say Vault is down still go out. No lock: a forked child inherits nothing held."""

    __slots__ = ("_provider", "_facts", "_read_at", "_reader", "_changes", "max_age")

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self._provider: KeyProvider | None = None
        self._facts: tuple[Any, KeyFacts | None] = (None, None)
        self._read_at = float("-inf")
        self._reader: threading.Thread | None = None
        self._changes = 0  # a read that started before a change does not count as fresh

    def watch(self, provider: KeyProvider) -> None:
        if provider is not self._provider:
            self._provider = provider
            self.invalidate()

    def invalidate(self) -> None:
        self._changes += 1
        self._read_at = float("-inf")

    def facts(self, wait: float) -> KeyFacts | None:
        provider = self._provider
        if provider is None:
            return None
        reader = self._reader
        if (reader is None or not reader.is_alive()) and \
                time.monotonic() - self._read_at >= self.max_age:
            reader = threading.Thread(target=self._read, args=(provider,), daemon=True,
                                      name="engine-key-facts")
            self._reader = reader
            reader.start()
        if reader is not None and wait > 0:
            reader.join(wait)
        source, facts = self._facts
        return facts if source is provider else None

    def _read(self, provider: KeyProvider) -> None:
        started, changes = time.monotonic(), self._changes
        try:
            facts = read_key_facts(provider)
        except Exception:  # noqa: BLE001 - unreadable: the key families are left out
            facts = None
        self._facts = (provider, facts)
        self._read_at = started if changes == self._changes else float("-inf")


# ---------------------------------------------------------------- the metrics


class OperationCounts:
    """``engine_encryption_operations_total{type="encrypt|decrypt"}``: two integers under one
    lock, exported by a collector. It is counted once per encrypted value on the single-value
    path, where a prometheus ``Counter.inc`` would cost several times what the lock does."""

    __slots__ = ("_lock", "_counts")

    def __init__(self) -> None:
        self._lock = fork_safe_lock()
        self._counts = {"encrypt": 0, "decrypt": 0}

    def add(self, kind: str, count: int) -> None:
        with self._lock:
            self._counts[kind] += count

    def value(self, kind: str) -> int:
        """The count of ``"encrypt"`` or ``"decrypt"`` operations so far."""
        with self._lock:
            return self._counts[kind]

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily("engine_encryption_operations", "Records encrypted or decrypted",
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
    is active (``sys/leader``) in a thread of its own and waits for the answer only as long as
    the scrape allows, so a Vault that hangs delays no scrape (its last known state goes out).
    Leader changes count each time a connection saw another node become active. A process with
    no Vault connection exports neither.
    """

    __slots__ = ("probe_after", "_probes")

    def __init__(self, probe_after: float = 30.0) -> None:
        self.probe_after = probe_after
        self._probes: dict[int, threading.Thread] = {}

    def _probe(self, routers: list[Any], wait: float) -> None:
        self._probes = {k: t for k, t in self._probes.items() if t.is_alive()}
        started = []
        for router in routers:
            status = router.status()
            if status.up is not None and time.monotonic() - status.last_contact <= self.probe_after:
                continue
            probe = self._probes.get(id(router))
            if probe is None or not probe.is_alive():
                probe = threading.Thread(target=router.probe, daemon=True, name="engine-vault-probe")
                self._probes[id(router)] = probe
                probe.start()
            started.append(probe)
        deadline = time.monotonic() + wait
        for probe in started:
            probe.join(max(0.0, deadline - time.monotonic()))

    def families(self, wait: float) -> list[Metric]:
        nodes = sys.modules.get("engine.vault.nodes")  # never imported: no connection to report
        routers = nodes.live_routers() if nodes is not None else []
        if not routers:
            return []
        self._probe(routers, wait)
        up = GaugeMetricFamily("engine_vault_up", "1 when Vault answers this process (an active "
                               "node reachable), else 0", labels=["vault"])
        changes = CounterMetricFamily("engine_vault_leader_changes", "Changes of Vault's active "
                                      "node seen by this process", labels=["vault"])
        seen: dict[str, tuple[bool, int]] = {}
        for router in routers:
            status = router.status()
            label = ",".join(status.nodes)
            was_up, was_changes = seen.get(label, (False, 0))
            seen[label] = (was_up or bool(status.up), max(was_changes, status.leader_changes))
        for label, (healthy, count) in sorted(seen.items()):
            up.add_metric([label], 1.0 if healthy else 0.0)
            changes.add_metric([label], count)
        return [up, changes]


class PushFailed(EngineError):
    """The Pushgateway did not take the metrics (unreachable, refused, timed out)."""


class EngineMetrics:
    """The engine's metrics, registered as one collector (in prometheus_client's default
    registry unless one is given).

    Args:
        registry: where to register; a private ``CollectorRegistry()`` keeps tests apart.
        seed_names: also export the seed's five names (:data:`SEED_ALIASES`).
        key_refresh_seconds: read the key provider's facts at most this often (scrapes between
            reads see the last facts read; a rotation in this process reads them again).

    Thread-safe.
    """

    __slots__ = (
        "registry", "operations", "errors", "reencryption", "_own", "_server", "_keys",
        "_seed_names", "_rotation_success", "_rotation_failure", "_rotation_interval",
        "_versions_active", "_certificates", "_reencryption_remaining", "_reencryption_progress",
        "_vault", "_job", "_lock",
    )

    def __init__(self, registry: CollectorRegistry | None = None, *, seed_names: bool = True,
                 key_refresh_seconds: float = 5.0) -> None:
        self._own = CollectorRegistry(auto_describe=True)
        self.operations = OperationCounts()
        self._own.register(self.operations)
        self.errors = Counter(
            "engine_encryption_errors", "Inputs refused and operations failed, by kind",
            ["error_type"], registry=self._own,
        )
        for kind in ERROR_TYPES:  # every kind from zero: rate() and increase() see the first
            self.errors.labels(error_type=kind)
        self.reencryption = Counter(
            "engine_reencryption_values", "Stored values seen by re-encryption jobs, by outcome: "
            "reencrypted, skipped (already current, NULL, or changed meanwhile), failed",
            ["outcome"], registry=self._own,
        )
        for outcome in ("reencrypted", "skipped", "failed"):
            self.reencryption.labels(outcome=outcome)
        self._keys = _KeyWatch(key_refresh_seconds)
        self._seed_names = seed_names
        self._rotation_success: float | None = None
        self._rotation_failure: float | None = None
        self._rotation_interval: float | None = None
        self._versions_active: int | None = None
        self._certificates: dict[str, float] = {}  # subject -> notAfter (Unix time)
        self._reencryption_remaining = 0
        self._reencryption_progress: float | None = None
        self._vault = VaultConnectivity()
        self._lock = fork_safe_lock()
        self._job: tuple[int, float] | None = None
        self._server: Any = None
        self.registry = REGISTRY if registry is None else registry
        self.registry.register(self)

    # ---- counting ----

    def encrypted(self, records: int = 1) -> None:
        """Counts ``records`` encryptions (one call per batch)."""
        self.operations.add("encrypt", records)

    def decrypted(self, records: int = 1) -> None:
        """Counts ``records`` decryptions (one call per batch)."""
        self.operations.add("decrypt", records)

    def error(self, error_type: str, count: int = 1) -> None:
        """Counts failures of one kind from :data:`ERROR_TYPES` (any other string counts as
        ``other``: a label value never comes from elsewhere)."""
        kind = error_type if error_type in ERROR_TYPES else "other"
        self.errors.labels(error_type=kind).inc(count)

    def error_count(self, error_type: str) -> float:
        """The failures of one kind counted so far."""
        return self._own.get_sample_value("engine_encryption_errors_total",
                                          {"error_type": error_type}) or 0.0

    # ---- keys and rotation ----

    def watch_keys(self, provider: KeyProvider) -> None:
        """Reads the key facts (``engine_key_versions_active``, the current version, its usage
        and limit, when it was made) from ``provider`` at scrape time; the last provider given
        wins (a service and its rotation share one)."""
        self._keys.watch(provider)

    def key_facts(self, wait: float = 1.0) -> KeyFacts | None:
        """The key facts as the next scrape would export them (reading the provider if they are
        older than ``key_refresh_seconds``, waiting at most ``wait`` seconds), or None."""
        return self._keys.facts(wait)

    def rotation_succeeded(self, when: float | None = None) -> None:
        """Records a successful rotation (the key facts are read again at the next scrape)."""
        self._rotation_success = time.time() if when is None else when
        self._keys.invalidate()

    def rotation_failed(self, when: float | None = None) -> None:
        """Records a failed rotation: ``engine_key_rotation_last_failure_timestamp_seconds`` and
        one ``key_rotation_failed`` error."""
        self._rotation_failure = time.time() if when is None else when
        self.error("key_rotation_failed")
        self._keys.invalidate()

    def set_rotation_interval(self, seconds: float | None) -> None:
        """The rotation policy's interval (None: rotation by time is off), for the overdue alert."""
        self._rotation_interval = seconds

    def set_versions_active(self, count: int) -> None:
        """Sets ``engine_key_versions_active`` where no provider is watched (a watched provider's
        own count wins)."""
        self._versions_active = count

    # ---- re-encryption ----

    def reencryption_progress(self, reencrypted: int, skipped: int, failed: int,
                              remaining: int) -> None:
        """Counts one step of a re-encryption job (a batch or a partition), sets the values it
        has left to scan and the time of this step."""
        for outcome, count in (("reencrypted", reencrypted), ("skipped", skipped),
                               ("failed", failed)):
            if count:
                self.reencryption.labels(outcome=outcome).inc(count)
        self._reencryption_remaining = max(remaining, 0)
        self._reencryption_progress = time.time()

    # ---- certificates, Vault, jobs ----

    def observe_certificate(self, cert_path: str, now: Any = None) -> float:
        """Exports ``engine_certificate_expiry_seconds{subject=...}`` for a PEM certificate on
        disk, counting down at every scrape; returns the seconds left now (negative: expired)."""
        from .tls import certificate_expiry_seconds, certificate_subject

        seconds = certificate_expiry_seconds(cert_path, now=now)
        self._certificates[certificate_subject(cert_path)] = time.time() + seconds
        return seconds

    def job_finished(self, exit_code: int, duration_seconds: float) -> None:
        """Records how a batch command ended (``engine_job_exit_code``, ``engine_job_duration_seconds``),
        exported from then on; the command line pushes them with the rest."""
        self._job = (int(exit_code), float(duration_seconds))

    # ---- the collector ----

    def _families(self, wait: float) -> Iterator[Metric]:
        yield from self._own.collect()
        facts = self._keys.facts(wait)
        now = time.time()
        success = max(self._rotation_success or 0.0, (facts and facts.current_created) or 0.0)
        yield _gauge("engine_key_rotation_last_success_timestamp_seconds",
                     "Unix time of the last successful key rotation (0: none known)", success)
        if self._rotation_failure is not None:
            yield _gauge("engine_key_rotation_last_failure_timestamp_seconds",
                         "Unix time of the last failed key rotation (in this process)",
                         self._rotation_failure)
        if self._rotation_interval is not None:
            yield _gauge("engine_key_rotation_interval_seconds",
                         "The rotation policy's interval", self._rotation_interval)
        active = facts.versions_active if facts is not None else (self._versions_active or 0)
        yield _gauge("engine_key_versions_active",
                     "Key versions that can still decrypt (active or decrypt-only)", active)
        if facts is not None and facts.current_version is not None:
            yield _gauge("engine_key_current_version", "The version new data is encrypted under",
                         facts.current_version)
            yield _gauge("engine_key_current_usage_encryptions", "Encryptions recorded for the "
                         "current key version, across processes", facts.current_usage or 0)
            if facts.current_usage_limit is not None:
                yield _gauge("engine_key_current_usage_limit", "Encryptions the current key "
                             "version may do (2^32 for AES-256-GCM)", facts.current_usage_limit)
        expiry = GaugeMetricFamily("engine_certificate_expiry_seconds",
                                   "Seconds until a certificate expires (negative: expired)",
                                   labels=["subject"])
        not_after = GaugeMetricFamily("engine_certificate_not_after_timestamp_seconds",
                                      "Unix time a certificate expires (what alerts compare "
                                      "with time(): right also when pushed)", labels=["subject"])
        for subject, expires in sorted(self._certificates.items()):
            expiry.add_metric([subject], expires - now)
            not_after.add_metric([subject], expires)
        yield expiry
        yield not_after
        yield _gauge("engine_reencryption_values_remaining",
                     "Values the running re-encryption job has still to scan",
                     self._reencryption_remaining)
        if self._reencryption_progress is not None:
            yield _gauge("engine_reencryption_last_progress_timestamp_seconds",
                         "Unix time of the re-encryption job's last step",
                         self._reencryption_progress)
        yield from self._vault.families(wait)
        if self._job is not None:
            yield _gauge("engine_job_exit_code", "How the batch command ended (0: success; the "
                         "README's exit codes)", self._job[0])
            yield _gauge("engine_job_duration_seconds", "How long the batch command ran",
                         self._job[1])

    def collect(self, wait: float = 1.0) -> Iterator[Metric]:
        """Every family, prefixed, and the seed's names as copies (prometheus_client calls it)."""
        for family in self._families(wait):
            yield family
            alias = SEED_ALIASES.get(family.name) if self._seed_names else None
            if alias is not None:
                yield _renamed(family, alias)

    def describe(self) -> list[Metric]:
        """Every family this collector may export, without samples (for the registry's
        duplicate check, and for checks that a dashboard names only these)."""
        families: list[Metric] = []
        for family in self._own.collect():
            families.append(_empty(family))
        for name, kind in _OWN_FAMILIES:
            families.append(Metric(name, "", kind))
        if self._seed_names:
            families += [_empty(f, SEED_ALIASES[f.name]) for f in families
                         if f.name in SEED_ALIASES]
        return families

    # ---- exporting ----

    def serve(self, port: int = 9464, addr: str = "127.0.0.1") -> int:
        """Starts the HTTP exporter (``/metrics``) in a daemon thread; returns the bound port.

        Raises:
            OSError: the address cannot be bound.
        """
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return server.server_address[1]

    def stop(self) -> None:
        """Stops the HTTP exporter started by :meth:`serve`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def push(self, gateway: str, job: str, grouping_key: dict[str, str] | None = None, *,
             timeout: float = 5.0) -> None:
        """Pushes these metrics (not the process's own) to a Pushgateway, replacing the group
        ``job`` + ``grouping_key`` (HTTP PUT), for a batch job that ends before any scrape.

        Args:
            gateway: ``http(s)://host:port`` of the Pushgateway (``user:password@`` in it: basic
                authentication; the password is never shown in an error).
            job: the ``job`` label.
            grouping_key: more labels that name the group (``{"command": "rotate"}``).
            timeout: seconds for the key facts, then for the request.

        Raises:
            PushFailed: the Pushgateway is unreachable or refused the metrics.
        """
        parts = urlsplit(gateway)
        shown = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        handler = default_handler
        if parts.username is not None:
            user, password = unquote(parts.username), unquote(parts.password or "")

            def handler(url: str, method: str, timeout: float | None, headers: list,
                        data: bytes) -> Callable[[], None]:
                return basic_auth_handler(url, method, timeout, headers, data, user, password)

        snapshot = _Snapshot(list(self.collect(wait=timeout)))
        try:
            push_to_gateway(shown, job=job, registry=snapshot, grouping_key=grouping_key,
                            timeout=timeout, handler=handler)
        except Exception as exc:  # noqa: BLE001 - urllib, socket and HTTP errors alike
            reason = f"{type(exc).__name__}: {exc}"  # the URL in it has no password
        else:
            return
        raise PushFailed(f"the Pushgateway at {shown} did not take the metrics ({reason})")


# Families built by EngineMetrics._families (the rest come from its own registry).
_OWN_FAMILIES = (
    ("engine_key_rotation_last_success_timestamp_seconds", "gauge"),
    ("engine_key_rotation_last_failure_timestamp_seconds", "gauge"),
    ("engine_key_rotation_interval_seconds", "gauge"),
    ("engine_key_versions_active", "gauge"),
    ("engine_key_current_version", "gauge"),
    ("engine_key_current_usage_encryptions", "gauge"),
    ("engine_key_current_usage_limit", "gauge"),
    ("engine_certificate_expiry_seconds", "gauge"),
    ("engine_certificate_not_after_timestamp_seconds", "gauge"),
    ("engine_reencryption_values_remaining", "gauge"),
    ("engine_reencryption_last_progress_timestamp_seconds", "gauge"),
    ("engine_vault_up", "gauge"),
    ("engine_vault_leader_changes", "counter"),
    ("engine_job_exit_code", "gauge"),
    ("engine_job_duration_seconds", "gauge"),
)


class _Snapshot:
    """Families collected once, as a collector (what one push sends)."""

    __slots__ = ("_families",)

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _empty(family: Metric, name: str | None = None) -> Metric:
    return Metric(name or family.name, family.documentation, family.type)


def _renamed(family: Metric, name: str) -> Metric:
    """A copy of ``family`` under ``name`` (its samples' suffixes kept: ``_total``, ``_created``)."""
    copy = Metric(name, family.documentation, family.type)
    copy.samples = [s._replace(name=name + s.name[len(family.name):]) for s in family.samples]
    return copy


_lock = fork_safe_lock()
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
