"""Prometheus metrics, scraped over loopback from a real exporter."""

from __future__ import annotations

import datetime
import urllib.request

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from engine import metrics, tls


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_exporter_serves_the_engine_metrics(tmp_path):
    m = metrics.EngineMetrics(CollectorRegistry())
    port = m.serve(0)
    try:
        m.encrypted(1_000_000)
        m.encrypted(5)
        m.decrypted(7)
        m.error("invalid_tag", 2)
        m.rotation_succeeded(1_700_000_000.0)
        m.set_versions_active(3)
        ca = tls.CertificateAuthority.create(tmp_path / "ca", passphrase="pw")
        cert, _ = ca.issue("svc.internal", dns_names=["svc.internal"])
        seconds = m.observe_certificate(cert)
        assert 364 * 86400 < seconds <= 365 * 86400
        got = scrape(port)
    finally:
        m.stop()
    assert got[("encryption_operations_total", (("type", "encrypt"),))] == 1_000_005
    assert got[("encryption_operations_total", (("type", "decrypt"),))] == 7
    assert got[("encryption_errors_total", (("error_type", "invalid_tag"),))] == 2
    assert got[("key_rotation_last_success_timestamp", ())] == 1_700_000_000.0
    assert got[("key_versions_active", ())] == 3
    subject = tls.certificate_subject(cert)
    assert abs(got[("certificate_expiry_seconds", (("subject", subject),))] - seconds) < 5


def test_expired_certificate_is_negative(tmp_path):
    m = metrics.EngineMetrics(CollectorRegistry())
    ca = tls.CertificateAuthority.create(tmp_path / "ca", passphrase="pw")
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=400)
    cert, _ = ca.issue("old.internal", now=past)
    assert m.observe_certificate(cert) < 0


def test_process_wide_metrics_are_one_object():
    assert metrics.get_metrics() is metrics.get_metrics()
