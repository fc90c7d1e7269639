"""Prometheus rules and Alertmanager config: promtool / amtool checks, rendering, configuration."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from promql_names import REPO, RULES_DIR, require, unknown_metrics

from serve_app.monitoring.alerting.alertmanager_config import (
    ReceiverSettings,
    load_receiver_settings,
    render_alertmanager_config,
)
from serve_app.monitoring.alerting.prometheus_config import (
    PrometheusSettings,
    ray_sd_file,
    render_prometheus_config,
)
from serve_app.monitoring.alerting.rules import (
    alert_rules,
    render_alert_rules,
    render_recording_rules,
)
from serve_app.monitoring.alerting.thresholds import AlertThresholds, load_thresholds
from serve_app.monitoring.stack_config import render_drop_in

TESTS_DIR = RULES_DIR / "tests"
ALERT_FILE = RULES_DIR / "alert_rules.yml"
RECORDING_FILE = RULES_DIR / "recording_rules.yml"


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120)


def _alerts(path: Path = ALERT_FILE) -> list[dict]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


# --- promtool ------------------------------------------------------------------------------------


def test_committed_rules_pass_promtool_check():
    result = _run(require("promtool"), "check", "rules", str(RECORDING_FILE), str(ALERT_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_committed_prometheus_config_passes_promtool_check():
    result = _run(
        require("promtool"), "check", "config", "--syntax-only", str(RULES_DIR / "prometheus.yml")
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass():
    files = sorted(TESTS_DIR.glob("*.yml"))
    assert files, f"no promtool tests under {TESTS_DIR}"
    result = _run(require("promtool"), "test", "rules", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_promtool_case():
    firing, quiet = set(), set()
    for path in TESTS_DIR.glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in _alerts()}
    assert names - firing == set(), "alerts never shown firing in configs/prometheus/tests"
    assert names - quiet == set(), "alerts never shown quiet (under threshold or inside `for`)"


# --- content -------------------------------------------------------------------------------------


def test_every_alert_has_severity_summary_and_a_description_with_its_value():
    for rule in _alerts():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["labels"]["family"], rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        description = rule["annotations"]["description"]
        # The value itself, or (for a 1/0 status alert) a value looked up with `query`.
        assert "$value" in description or "| query" in description, rule["alert"]
        assert rule["for"], rule["alert"]


def test_issue_alerts_are_all_present():
    expected = {
        "GPUUtilizationHigh",
        "GPUMemoryHigh",
        "GPUMemoryCritical",
        "GPUTemperatureHigh",
        "LatencyP99High",
        "LatencyP99Critical",
        "ErrorRatioHigh",
        "ErrorRatioCritical",
        "OverloadShedding",
        "ModelAccuracyDropped",
        "ShadowAgreementLow",
        "ReplicasIdleOffPeak",
        "DeploymentUnhealthy",
        "DeploymentNoReadyReplicas",
        "NoTrafficWhenExpected",
        "ForecasterStale",
        "ForecasterFailing",
        "PredictionStoreUnwritable",
    }
    assert {rule["alert"] for rule in _alerts()} == expected


@pytest.mark.parametrize(
    "alert, expr_part, for_, severity",
    [
        (
            "GPUUtilizationHigh",
            "> 0.85",
            "5m",
            "warning",
        ),  # seeds: gpu_utilization > 85% for 5 minutes
        ("GPUMemoryCritical", "> 0.9", "1m", "critical"),  # seeds: gpu_memory_used > 90%
        ("GPUMemoryHigh", "> 0.8", "5m", "warning"),  # seeds: degrade traffic above 80%
        ("GPUTemperatureHigh", "> 85", "2m", "critical"),  # seeds: gpu_temperature > 85 °C
        ("LatencyP99High", "> 0.5", "5m", "warning"),  # seeds: P99 > 500 ms
        (
            "ModelAccuracyDropped",
            "- 0.05",
            "10m",
            "critical",
        ),  # seeds: accuracy down > 5 %, for 10m
        ("ReplicasIdleOffPeak", "> 2", "30m", "warning"),  # seeds: more than 2 instances idle
    ],
)
def test_default_thresholds_are_the_seeds(alert, expr_part, for_, severity):
    rule = next(r for r in _alerts() if r["alert"] == alert)
    assert expr_part in rule["expr"]
    assert rule["for"] == for_
    assert rule["labels"]["severity"] == severity


def test_rule_expressions_name_only_known_metrics():
    rules = _alerts() + _alerts(RECORDING_FILE)
    problems = {
        rule.get("alert") or rule["record"]: unknown_metrics(rule["expr"]) for rule in rules
    }
    assert {k: v for k, v in problems.items() if v} == {}


# --- rendering -----------------------------------------------------------------------------------


def test_committed_thresholds_file_holds_the_defaults():
    assert load_thresholds(REPO / "configs" / "alerts.yaml") == AlertThresholds()


def test_committed_files_equal_the_rendered_defaults(tmp_path):
    for written in render_drop_in(tmp_path):
        committed = REPO / "configs" / written.relative_to(tmp_path)
        assert committed.read_text() == written.read_text(), (
            f"{committed} is stale: run `recserve stack render`"
        )


def test_prometheus_config_reads_the_ray_discovery_file_and_alerts_alertmanager():
    doc = yaml.safe_load(
        render_prometheus_config(
            PrometheusSettings(ray_sd_file="/x/ray/sd.json", scrape_interval="5s")
        )
    )
    ray_job = next(job for job in doc["scrape_configs"] if job["job_name"] == "ray")
    assert ray_job["file_sd_configs"][0]["files"] == ["/x/ray/sd.json"]
    assert doc["global"]["scrape_interval"] == doc["global"]["evaluation_interval"] == "5s"
    assert doc["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]


def test_ray_sd_file_follows_ray_tmpdir(monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", "/data/raytmp")
    assert ray_sd_file() == Path("/data/raytmp/ray/prom_metrics_service_discovery.json")
    monkeypatch.delenv("RAY_TMPDIR")
    assert ray_sd_file() == Path("/tmp/ray/prom_metrics_service_discovery.json")
    assert ray_sd_file("/r") == Path("/r/ray/prom_metrics_service_discovery.json")


# --- configurability -----------------------------------------------------------------------------

CUSTOM_TEST = """
rule_files: [recording_rules.yml, alert_rules.yml]
evaluation_interval: 1m
group_eval_order:
  [recserve_traffic, recserve_latency, recserve_gpu, recserve_replicas, recserve_quality,
   recserve_alerts]
tests:
  - interval: 1m
    input_series:
      - {series: 'ray_gpu_utilization{NodeAddress="n", gpu="0"}', values: '0.50x10'}
      - {series: 'ray_gpu_utilization{NodeAddress="n", gpu="1"}', values: '0.51x10'}
    alert_rule_test:
      - {eval_time: 1m, alertname: GPUUtilizationHigh, exp_alerts: []}   # 1m < for 2m
      - eval_time: 2m
        alertname: GPUUtilizationHigh
        exp_alerts:
          - exp_labels: {severity: critical, family: gpu_utilization, NodeAddress: n, gpu: "1"}
            exp_annotations:
              summary: GPU 1 on n is 51% busy
              description: >-
                Utilization of GPU 1 on n has been above 50% for 2m (now 51%).
                Add replicas or GPUs, or check the autoscaler.
  - interval: 1m
    input_series:
      # A fixed baseline of 0.90: 0.84 is 6 points below, with no history at all.
      - series: 'ray_model_accuracy{model_name="pinned", model_version="1", window="last_1h"}'
        values: '0.84x20'
      - series: 'ray_model_accuracy{model_name="pinned", model_version="1", window="last_1000"}'
        values: '0.99x20'
    promql_expr_test:
      - expr: model_name:model_accuracy:baseline
        eval_time: 5m
        exp_samples:
          - {labels: 'model_name:model_accuracy:baseline{model_name="pinned"}', value: 0.9}
    alert_rule_test:
      # The 5m mean exists from 0m: 8m is still inside `for: 9m`.
      - {eval_time: 8m, alertname: ModelAccuracyDropped, exp_alerts: []}
      - eval_time: 9m
        alertname: ModelAccuracyDropped
        exp_alerts:
          - exp_labels:
              {severity: critical, family: quality, model_name: pinned, model_version: "1"}
            exp_annotations:
              summary: Accuracy of pinned version 1 is 84%
              description: >-
                Accuracy (last_1h) of pinned version 1 is 84%, more than 5 points below its
                baseline 90% for 9m. Check recent inputs (drift) and the model version.
"""


def test_thresholds_durations_and_severities_come_from_the_yaml(tmp_path):
    alerts_yaml = tmp_path / "alerts.yaml"
    alerts_yaml.write_text(
        yaml.safe_dump(
            {
                "GPUUtilizationHigh": {"threshold": 0.5, "for": "2m", "severity": "critical"},
                "ModelAccuracyDropped": {
                    "window": "last_1h",
                    "for": "9m",
                    "baselines": {"pinned": 0.9},
                },
                "LatencyP99Critical": {"enabled": False},
            }
        )
    )
    thresholds = load_thresholds(alerts_yaml)
    (tmp_path / "recording_rules.yml").write_text(render_recording_rules(thresholds))
    (tmp_path / "alert_rules.yml").write_text(render_alert_rules(thresholds))
    (tmp_path / "custom_test.yml").write_text(CUSTOM_TEST)

    assert "LatencyP99Critical" not in {r["alert"] for r in _alerts(tmp_path / "alert_rules.yml")}
    result = _run(require("promtool"), "test", "rules", str(tmp_path / "custom_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_off_peak_hours_follow_the_utc_offset():
    thresholds = AlertThresholds.model_validate(
        {"ReplicasIdleOffPeak": {"off_peak": {"utc_offset_hours": 8}}}
    )
    rule = next(
        r
        for r in alert_rules(thresholds)["groups"][0]["rules"]
        if r["alert"] == "ReplicasIdleOffPeak"
    )
    # 8 h = 28800 s: local hour = hour(UTC + 8 h); 21:00-09:00 wraps midnight, so `or`.
    assert (
        "(hour(vector(time() + 28800)) >= 21 or hour(vector(time() + 28800)) < 9)" in rule["expr"]
    )


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"GPUUtilizationHigh": {"for": "5 minutes"}}, "not a Prometheus duration"),
        ({"GPUUtilizationHigh": {"severity": "page"}}, "severity"),
        ({"GPUUtilizationHigh": {"treshold": 0.8}}, "treshold"),  # typo: refused, not ignored
        (
            {"ErrorRatioHigh": {"statuses": ['server_error"}']}},
            "may only hold",
        ),  # no PromQL injection
        (
            {"ModelAccuracyDropped": {"baselines": {"m": 75}}},
            "less than or equal to 1",
        ),  # a ratio, not percent
        ({"NoSuchAlert": {}}, "NoSuchAlert"),
    ],
)
def test_bad_threshold_files_are_refused_with_the_reason(tmp_path, doc, message):
    path = tmp_path / "alerts.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=message):
        load_thresholds(path)


def test_thresholds_file_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "alerts.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="must map alert names"):
        load_thresholds(path)


# --- Alertmanager --------------------------------------------------------------------------------

FULL_ENV = {
    "RECSERVE_ALERT_WEBHOOK_URL": "http://127.0.0.1:5001/hook",
    "RECSERVE_DINGTALK_WEBHOOK": "https://oapi.dingtalk.com/robot/send?access_token=abc",
    "RECSERVE_DINGTALK_SECRET": "SECxyz",
    "RECSERVE_DINGTALK_AT_MOBILES": "13800000000, 13900000000",
    "RECSERVE_ALERT_EMAIL_TO": "a@example.com,b@example.com",
    "RECSERVE_SMTP_FROM": "am@example.com",
    "RECSERVE_SMTP_SMARTHOST": "smtp.example.com:587",
    "RECSERVE_SMTP_USERNAME": "am",
    "RECSERVE_SMTP_PASSWORD": "hunter2",
}


def _amtool_check(path: Path) -> subprocess.CompletedProcess:
    return _run(require("amtool"), "check-config", str(path))


def _route(config: Path, *labels: str) -> str:
    result = _run(require("amtool"), "config", "routes", "test", f"--config.file={config}", *labels)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_alertmanager_config_without_receivers_is_valid(tmp_path):
    settings = load_receiver_settings(environ={})
    assert settings.configured_channels() == []
    path = tmp_path / "am.yml"
    path.write_text(render_alertmanager_config(settings))
    result = _amtool_check(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_config_with_every_receiver_is_valid_and_routes_by_severity(tmp_path):
    settings = load_receiver_settings(environ=FULL_ENV)
    assert settings.configured_channels() == ["webhook", "dingtalk", "email"]
    assert settings.dingtalk.at_mobiles == ["13800000000", "13900000000"]
    path = tmp_path / "am.yml"
    text = render_alertmanager_config(settings, password_file=str(tmp_path / "pw"))
    path.write_text(text)
    assert "hunter2" not in text  # the password goes to a file, never into the config
    result = _amtool_check(path)
    assert result.returncode == 0, result.stdout + result.stderr

    assert _route(path, "severity=critical", "alertname=X") == "critical"
    assert _route(path, "severity=warning", "alertname=X") == "warning"
    assert _route(path, "alertname=X") == "warning"  # no severity: treated as a warning
    assert _route(path, "severity=info", "alertname=X") == "info"

    receivers = {r["name"]: r for r in yaml.safe_load(text)["receivers"]}
    # Defaults: email only for critical; webhook and DingTalk (through the bridge) for critical and
    # warning.
    assert [c["url"] for c in receivers["critical"]["webhook_configs"]] == [
        "http://127.0.0.1:5001/hook",
        "http://127.0.0.1:9095/alert",
    ]
    assert receivers["critical"]["email_configs"][0]["to"] == "a@example.com, b@example.com"
    assert "email_configs" not in receivers["warning"]
    assert len(receivers["warning"]["webhook_configs"]) == 2
    assert set(receivers["info"]) == {"name"}


def test_critical_inhibits_warning_of_the_same_family_and_scope():
    doc = yaml.safe_load(render_alertmanager_config(ReceiverSettings()))
    (rule,) = doc["inhibit_rules"]
    assert rule["source_matchers"] == ['severity="critical"']
    assert rule["target_matchers"] == ['severity="warning"']
    assert {"family", "model_name", "deployment", "NodeAddress", "gpu"} <= set(rule["equal"])


def test_example_receivers_file_renders_a_valid_config(tmp_path):
    settings = load_receiver_settings(
        REPO / "configs" / "alertmanager" / "receivers.example.yaml", environ={}
    )
    assert settings.configured_channels() == ["webhook", "dingtalk", "email"]
    path = tmp_path / "am.yml"
    path.write_text(render_alertmanager_config(settings, password_file=str(tmp_path / "pw")))
    result = _amtool_check(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_environment_overrides_the_receivers_file(tmp_path):
    path = tmp_path / "receivers.yaml"
    path.write_text("webhook:\n  url: http://127.0.0.1:1/from-file\n  severities: [critical]\n")
    settings = load_receiver_settings(
        path, environ={"RECSERVE_ALERT_WEBHOOK_URL": "http://127.0.0.1:2/from-env"}
    )
    assert settings.webhook.url == "http://127.0.0.1:2/from-env"
    assert settings.webhook.severities == ["critical"]  # the rest of the file still applies


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"RECSERVE_ALERT_EMAIL_TO": "a@example.com"}, "RECSERVE_SMTP_SMARTHOST"),
        ({"RECSERVE_ALERT_WEBHOOK_URL": "localhost:5001"}, "not an http"),
        (
            {
                "RECSERVE_ALERT_EMAIL_TO": "a@x.org",
                "RECSERVE_SMTP_FROM": "b@x.org",
                "RECSERVE_SMTP_SMARTHOST": "smtp",
            },
            "host:port",
        ),
    ],
)
def test_incomplete_receivers_are_refused_with_the_fix(environ, message):
    with pytest.raises(ValueError, match=message):
        load_receiver_settings(environ=environ)


def test_missing_receivers_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_receiver_settings(tmp_path / "nope.yaml", environ={})


def test_monitoring_doc_lists_every_alert_with_its_for_and_severity():
    rows = {}
    for line in (REPO / "docs" / "MONITORING.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"`[A-Z][A-Za-z0-9]+`", cells[0]):
            rows[cells[0].strip("`")] = (cells[2], cells[3])
    rendered = {rule["alert"]: (rule["for"], rule["labels"]["severity"]) for rule in _alerts()}
    assert rows == rendered
