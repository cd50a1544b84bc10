"""Metrics of batch commands and services, end to end: the command line pushes to a real
Pushgateway and serves a real exporter, a real Prometheus scrapes both and evaluates the shipped
alert rules, and the assertions are on what Prometheus's HTTP API returns."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from engine import EncryptionService, monitoring
from engine.keys import EnvironmentKeyProvider
from engine.testing.postgres import free_port
from engine.testing.prometheus import PrometheusNotFound, PrometheusServer, Pushgateway

JOB = "crypto-engine"


@pytest.fixture(scope="module")
def key_env(tmp_path_factory):
    state = tmp_path_factory.mktemp("keys")
    env = {**os.environ, "ENCRYPTION_MASTER_KEY": "prometheus-test-master-key-" * 2,
           "ENCRYPTION_KDF_ITERATIONS": "1000",
           "ENGINE_KEY_STATE_FILE": str(state / "keys.json"), "VAULT_ENABLED": "false",
           "ENGINE_STATE_DIR": str(state / "rotation"), "KEY_ROTATION_INTERVAL_DAYS": "30"}
    env.pop("ENGINE_AUDIT_LOG", None)
    return env


def cli(*args, env, **kwargs):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                          text=True, timeout=300, env=env, **kwargs)


@pytest.fixture(scope="module")
def stack(key_env):
    """A Pushgateway, a rotation scheduler serving its metrics, and Prometheus scraping both
    every second with the shipped alert rules."""
    assert cli("rotate", env=key_env).returncode == 0  # versions 1 and 2
    assert cli("rotate", env=key_env).returncode == 0
    try:
        gateway = Pushgateway().start()
    except PrometheusNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    exporter = free_port()
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "engine", "rotation-scheduler", "--check-every", "3600",
         "--metrics-port", str(exporter)], env=key_env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    prom = PrometheusServer(targets={"engine": [f"127.0.0.1:{exporter}"]},
                            pushgateway=gateway.address, rule_files=[monitoring.ALERT_RULES])
    try:
        prom.start()
        yield {"gateway": gateway, "prometheus": prom, "scheduler": scheduler, "env": key_env}
    finally:
        scheduler.send_signal(signal.SIGINT)
        try:
            scheduler.wait(30)
        except subprocess.TimeoutExpired:
            scheduler.kill()
            scheduler.wait()
        prom.stop()
        gateway.stop()


def value(result: list[dict]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def pushed(gateway: Pushgateway, **labels: str) -> dict:
    """The group of the Pushgateway with exactly these grouping labels."""
    for group in gateway.groups():
        if group["labels"] == labels:
            return group
    raise AssertionError(f"no group {labels} in {[g['labels'] for g in gateway.groups()]}")


def test_a_long_running_command_is_scraped(stack):
    prom = stack["prometheus"]
    assert value(prom.wait_for('up{job="engine"} == 1')) == 1
    # the seed's names and the engine's, both true in the scheduler process
    assert value(prom.wait_for('key_versions_active{job="engine"}')) == 2
    assert value(prom.query('engine_key_versions_active{job="engine"}')) == 2
    assert value(prom.query('engine_key_current_version{job="engine"}')) == 2
    assert value(prom.query('engine_key_current_usage_limit{job="engine"}')) == 2**32
    assert value(prom.query('engine_key_rotation_interval_seconds{job="engine"}')) == 30 * 86400
    age = value(prom.query('time() - key_rotation_last_success_timestamp{job="engine"}'))
    assert 0 <= age < 300
    kinds = {r["metric"]["error_type"] for r in prom.query(
        'engine_encryption_errors_total{job="engine"}')}
    assert "malformed" in kinds and "invalid_tag" in kinds
    assert prom.query('process_cpu_seconds_total{job="engine"}')  # the process's own too


def test_a_batch_command_pushes_when_it_ends(stack, tmp_path):
    gateway, prom, env = stack["gateway"], stack["prometheus"], stack["env"]
    (tmp_path / "in.txt").write_bytes(b"a file to encrypt" * 1000)
    r = cli("encrypt", str(tmp_path / "in.txt"), str(tmp_path / "out.enc"), "--json",
            "--pushgateway", gateway.address, "--push-label", "dataset=reports", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["operation"] == "encrypt" and r.stderr == ""
    group = pushed(gateway, job=JOB, command="encrypt", dataset="reports")
    assert "engine_job_exit_code" in group and "key_versions_active" in group
    where = 'job="crypto-engine", command="encrypt", dataset="reports"'
    assert value(prom.wait_for(f"engine_job_exit_code{{{where}}}")) == 0
    assert value(prom.query(f"engine_job_duration_seconds{{{where}}}")) > 0
    assert value(prom.query(f"key_versions_active{{{where}}}")) == 2
    assert value(prom.query(f"sum(engine_encryption_errors_total{{{where}}})")) == 0


def test_a_failed_command_pushes_its_failure_and_the_alert_fires(stack, tmp_path):
    gateway, prom, env = stack["gateway"], stack["prometheus"], stack["env"]
    (tmp_path / "plain.txt").write_text("not encrypted")
    r = cli("decrypt", str(tmp_path / "plain.txt"), str(tmp_path / "out"), "--pushgateway",
            gateway.address, env=env)
    assert r.returncode == 1 and "not an engine encrypted file" in r.stderr
    assert "warning" not in r.stderr and not (tmp_path / "out").exists()
    where = 'job="crypto-engine", command="decrypt"'
    assert value(prom.wait_for(f"engine_job_exit_code{{{where}}}")) == 1
    assert value(prom.query(f'engine_encryption_errors_total{{{where}, error_type="malformed"}}')) == 1
    assert value(prom.query(f'encryption_errors_total{{{where}, error_type="malformed"}}')) == 1
    # the shipped rule, evaluated by Prometheus on what was pushed
    deadline = time.monotonic() + 30
    while True:
        alerts = [a for a in prom.api("alerts")["alerts"]
                  if a["labels"]["alertname"] == "EngineBatchJobFailed"
                  and a["labels"].get("command") == "decrypt"]
        if alerts and alerts[0]["state"] == "firing" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert alerts and alerts[0]["state"] == "firing"
    assert alerts[0]["annotations"]["summary"] == "crypto-engine decrypt exited with 1"
    # a later success of the same group replaces the failure
    good = tmp_path / "good.enc"
    assert cli("encrypt", str(tmp_path / "plain.txt"), str(good), env=env).returncode == 0
    assert cli("decrypt", str(good), str(tmp_path / "back"), "--pushgateway", gateway.address,
               env=env).returncode == 0
    assert float(pushed(gateway, job=JOB, command="decrypt")["engine_job_exit_code"]
                 ["metrics"][0]["value"]) == 0


def test_an_interrupted_command_pushes_what_it_did(stack, tmp_path):
    gateway, env = stack["gateway"], stack["env"]
    proc = subprocess.Popen([sys.executable, "-m", "engine", "encrypt", "-", str(tmp_path / "o"),
                             "--pushgateway", gateway.address, "--push-label", "run=interrupt"],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdin.write(b"x" * 2**20)  # more than a pipe holds: it is reading when this returns
    proc.stdin.flush()
    time.sleep(1.5)  # reading stdin, which stays open
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    group = pushed(gateway, job=JOB, command="encrypt", run="interrupt")
    assert float(group["engine_job_exit_code"]["metrics"][0]["value"]) == 130
    assert not (tmp_path / "o").exists()


def test_rotate_pushes_the_rotation(stack, tmp_path):
    gateway, prom, env = stack["gateway"], stack["prometheus"], stack["env"]
    env = {**env, "ENGINE_KEY_STATE_FILE": str(tmp_path / "keys.json")}
    before = time.time()
    r = cli("rotate", "--json", "--pushgateway", gateway.address, "--push-label",
            "job=key-rotation", env=env)
    assert r.returncode == 0, r.stderr
    where = 'job="key-rotation", command="rotate"'
    last = value(prom.wait_for(f"engine_key_rotation_last_success_timestamp_seconds{{{where}}}"))
    assert before - 1 <= last <= time.time() + 1
    assert value(prom.query(f"key_rotation_last_success_timestamp{{{where}}}")) == last
    assert value(prom.query(f"engine_key_rotation_interval_seconds{{{where}}}")) == 30 * 86400
    assert value(prom.query(f"engine_key_versions_active{{{where}}}")) == 1
    assert not prom.query(f"engine_key_rotation_last_failure_timestamp_seconds{{{where}}}")


def test_reencrypt_pushes_its_progress(stack, tmp_path):
    gateway, prom, env = stack["gateway"], stack["prometheus"], stack["env"]
    env = {**env, "ENGINE_KEY_STATE_FILE": str(tmp_path / "keys.json")}
    service = EncryptionService(EnvironmentKeyProvider(env=env), metrics=False)
    db = tmp_path / "crm.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, ssn TEXT)")
        conn.executemany("INSERT INTO users VALUES (?, ?)",
                         list(zip(range(1, 501), service.encrypt_many([f"s{i}" for i in range(500)]))))
    assert cli("rotate", env=env).returncode == 0
    r = cli("reencrypt", "--store", f"sqlite:///{db}", "--table", "users", "--key", "id",
            "--column", "ssn", "--json", "--pushgateway", gateway.address,
            "--metrics-port", "0", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["reencrypted"] == 500
    where = 'job="crypto-engine", command="reencrypt"'
    done = value(prom.wait_for(f'engine_reencryption_values_total{{{where}, outcome="reencrypted"}}'))
    assert done == 500
    assert value(prom.query(f"engine_reencryption_values_remaining{{{where}}}")) == 0
    assert value(prom.query(f"engine_job_exit_code{{{where}}}")) == 0


def test_a_push_that_fails_is_a_warning_only(stack, tmp_path):
    env = stack["env"]
    (tmp_path / "in").write_bytes(b"data")
    r = cli("encrypt", str(tmp_path / "in"), str(tmp_path / "out"), "--json",
            "--pushgateway", f"http://127.0.0.1:{free_port()}", env=env)
    assert r.returncode == 0
    assert json.loads(r.stdout)["plaintext_bytes"] == 4  # the report is whole
    assert r.stderr.startswith("crypto-engine: warning: the Pushgateway at")
    assert "Traceback" not in r.stderr and (tmp_path / "out").exists()
    r = cli("decrypt", str(tmp_path / "in"), str(tmp_path / "o2"), "--pushgateway",
            f"http://127.0.0.1:{free_port()}", env=env)
    assert r.returncode == 1  # the command's own exit code, not the push's


def test_a_metrics_port_in_use_is_a_configuration_error(stack, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = cli("rotation-scheduler", "--max-checks", "1", "--metrics-port", str(port),
                env=stack["env"])
    assert r.returncode == 3 and "cannot serve metrics on 127.0.0.1:" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_metrics_arguments_are_usage_errors(stack):
    for args in (("rotate", "--pushgateway", "ftp://x"), ("rotate", "--push-label", "a"),
                 ("rotate", "--push-label", "__x=1"), ("rotation-scheduler", "--metrics-port", "70000"),
                 ("audit-verify", "x", "--pushgateway", "http://h")):
        r = cli(*args, env=stack["env"])
        assert r.returncode == 2 and "usage:" in r.stderr, args


def test_the_rules_load_and_every_dashboard_expression_runs(stack):
    prom = stack["prometheus"]
    groups = prom.api("rules")["groups"]
    loaded = [rule for group in groups for rule in group["rules"]]
    assert len(loaded) == 12
    deadline = time.monotonic() + 30
    while any(rule.get("health") != "ok" for rule in loaded) and time.monotonic() < deadline:
        time.sleep(0.5)
        loaded = [rule for group in prom.api("rules")["groups"] for rule in group["rules"]]
    assert all(rule["health"] == "ok" for rule in loaded), loaded
    from test_alert_rules import dashboard_expressions

    for expr in dashboard_expressions():
        expr = expr.replace("$__rate_interval", "1m").replace("$job", ".*")
        prom.query(expr)  # raises unless Prometheus accepts it
    assert prom.query('max by (job) (engine_key_versions_active{job=~".*"})')


def test_a_gateway_password_is_used_and_never_shown(stack, tmp_path):
    """Basic authentication from the URL; a failure names the gateway without its password."""
    (tmp_path / "in").write_bytes(b"data")
    port = free_port()
    r = cli("encrypt", str(tmp_path / "in"), str(tmp_path / "out"), "--pushgateway",
            f"http://pusher:s3cr3t-pw@127.0.0.1:{port}", env=stack["env"])
    assert r.returncode == 0
    assert f"http://127.0.0.1:{port}" in r.stderr and "s3cr3t" not in r.stderr + r.stdout
    # the real gateway takes no authentication and ignores the header: the push arrives
    gateway = stack["gateway"]
    address = gateway.address.replace("http://", "http://pusher:s3cr3t-pw@")
    r = cli("encrypt", str(tmp_path / "in"), str(tmp_path / "out2"), "--pushgateway", address,
            "--push-label", "auth=basic", env=stack["env"])
    assert r.returncode == 0 and r.stderr == ""
    pushed(gateway, job=JOB, command="encrypt", auth="basic")
