"""Monitoring files shipped with the engine, for the metrics of :mod:`engine.metrics`:

* :data:`ALERT_RULES`: Prometheus alert rules (``alerts.yml``) for rotation failures, certificate
  expiry within 30 days, the encryption error rate, Vault connectivity, a stalled re-encryption
  and key usage near its limit (each explained in docs/metrics.md);
* :data:`DASHBOARD`: a Grafana dashboard (``dashboard.json``) over the same metrics.

Copy them where Prometheus and Grafana read them, e.g.
``cp "$(python -c 'import engine.monitoring as m; print(m.ALERT_RULES)')" /etc/prometheus/rules/``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ALERT_RULES", "DASHBOARD"]

_HERE = Path(__file__).resolve().parent

#: The Prometheus rule file.
ALERT_RULES = _HERE / "alerts.yml"
#: The Grafana dashboard (JSON model; its data source is chosen on import).
DASHBOARD = _HERE / "dashboard.json"
