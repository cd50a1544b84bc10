"""The alert rules and the dashboard shipped in engine.monitoring: checked and unit-tested by
Prometheus's own promtool, and every expression names only metrics the engine exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from engine import monitoring
from engine.metrics import EngineMetrics
from engine.testing.prometheus import PrometheusNotFound, find_program

RULES_TEST = Path(__file__).resolve().parent / "monitoring" / "alerts_test.yml"
# Series the Pushgateway adds to every group it holds (the rules leave out stale pushes with it).
PUSHGATEWAY_SERIES = {"push_time_seconds"}
# Grafana's variables, as values Prometheus accepts, to check the dashboard's PromQL with promtool.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$job": ".*"}


@pytest.fixture(scope="module")
def promtool() -> str:
    try:
        return find_program("promtool")
    except PrometheusNotFound as exc:
        pytest.fail(str(exc), pytrace=False)


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)


# ---- what the engine exports, and what an expression names

def exported_names() -> set[str]:
    """Every series name the engine's collector can export (counters with _total)."""
    names = set()
    for family in EngineMetrics(CollectorRegistry()).describe():
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
             "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: its selectors' names and ``__name__``
    matchers; functions, aggregations, keywords, label lists, durations and strings are not."""
    names = set(re.findall(r'__name__\s*=\s*"([^"]*)"', expr))
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    expr = re.sub(r"\{[^{}]*\}", " ", expr)
    expr = re.sub(r"\[[^\[\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", expr)
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        token = match.group(0)
        if expr[match.end():].lstrip().startswith("(") or token.lower() in _KEYWORDS:
            continue
        names.add(token)
    return names


def test_metric_names_parser():
    assert metric_names('sum by (job, type) (rate(a_total{job=~"$job", x="b_c"}[$__rate_interval]))') \
        == {"a_total"}
    assert metric_names("time() - b > c * 2 + 1e3 unless on (job) (d offset 5m)") == {"b", "c", "d"}
    assert metric_names('{__name__="e"} or max without (instance) (f) > bool 2') == {"e", "f"}


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(monitoring.ALERT_RULES.read_text())["groups"]
            for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(monitoring.DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert found, f"a variable query this test cannot read: {query}"
            exprs.append(found.group(1))
    return exprs


# ---- the rules

def test_rules_are_shipped_in_the_package():
    assert monitoring.ALERT_RULES.is_file() and monitoring.DASHBOARD.is_file()
    assert monitoring.ALERT_RULES.parent.name == "monitoring"


def test_promtool_checks_the_rules(promtool):
    r = run_promtool(promtool, "check", "rules", str(monitoring.ALERT_RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules())} rules found" in r.stdout


def test_promtool_unit_tests_pass(promtool):
    r = run_promtool(promtool, "test", "rules", str(RULES_TEST))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_every_alert_the_seed_asks_for_is_there():
    names = {rule["alert"] for rule in rules()}
    assert {"EngineKeyRotationFailed", "EngineCertificateExpiresIn30Days",
            "EngineEncryptionErrorRate", "EngineVaultDown", "EngineReencryptionStalled",
            "EngineKeyUsageNearLimit"} <= names
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical")
        anchor = rule["alert"].lower()
        assert rule["annotations"]["runbook"] == f"docs/metrics.md#{anchor}"


_IDENTITY = ("job", "instance", "command", "subject")


def _identity(labels: dict) -> tuple:
    return tuple(str(labels.get(k, "")) for k in _IDENTITY)


def test_every_alert_has_a_case_that_fires_and_one_that_does_not():
    """Each alert fires in some case, and some case has an evaluation where it must stay quiet,
    or series (a job, instance, command or subject) that none of its expected alerts names."""
    cases = yaml.safe_load(RULES_TEST.read_text())["tests"]
    for rule in rules():
        fires = quiet = False
        for case in cases:
            series = {_identity(dict(re.findall(r'(\w+)="([^"]*)"', s["series"])))
                      for s in case["input_series"]}
            for check in case.get("alert_rule_test", []):
                if check["alertname"] != rule["alert"]:
                    continue
                expected = {_identity(a["exp_labels"]) for a in check.get("exp_alerts") or []}
                fires |= bool(expected)
                quiet |= not expected or bool(series - expected)
        assert fires and quiet, rule["alert"]


def test_the_unit_tests_catch_an_alert_that_never_fires(promtool, tmp_path):
    """Each alert in turn is replaced by one that never fires: its unit tests must fail."""
    original = yaml.safe_load(monitoring.ALERT_RULES.read_text())
    cases = yaml.safe_load(RULES_TEST.read_text())["tests"]
    for name in [rule["alert"] for rule in rules()]:
        mutated = json.loads(json.dumps(original))
        for group in mutated["groups"]:
            for rule in group["rules"]:
                if rule["alert"] == name:
                    rule["expr"] = "vector(1) > 2"
        (tmp_path / "alerts.yml").write_text(yaml.safe_dump(mutated))
        mine = [case for case in cases
                if any(c["alertname"] == name for c in case.get("alert_rule_test", []))]
        test = {"rule_files": [str(tmp_path / "alerts.yml")], "evaluation_interval": "1m",
                "tests": mine}
        (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(test))
        r = run_promtool(promtool, "test", "rules", str(tmp_path / "alerts_test.yml"))
        assert r.returncode != 0 and name in r.stdout + r.stderr, name


def test_rules_name_only_exported_metrics():
    exported = exported_names()
    for rule in rules():
        unknown = metric_names(rule["expr"]) - exported - PUSHGATEWAY_SERIES
        assert not unknown, (rule["alert"], unknown)


# ---- the dashboard

def test_dashboard_names_only_exported_metrics():
    exported = exported_names()
    exprs = dashboard_expressions()
    assert len(exprs) >= 15
    named = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= exported, (expr, names - exported)
        named |= names
    # and it shows every family of the seed's monitoring, under the engine's names
    assert {"engine_encryption_operations_total", "engine_encryption_errors_total",
            "engine_key_rotation_last_success_timestamp_seconds", "engine_key_versions_active",
            "engine_vault_up", "engine_reencryption_values_remaining"} <= named


def test_dashboard_expressions_are_valid_promql(promtool, tmp_path):
    """promtool parses each expression (as a recording rule), Grafana's variables filled in."""
    records = []
    for i, expr in enumerate(dashboard_expressions()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        records.append({"record": f"dashboard:expr_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    r = run_promtool(promtool, "check", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr


def test_dashboard_is_a_grafana_model():
    dashboard = json.loads(monitoring.DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
            grid = panel["gridPos"]
            assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24
