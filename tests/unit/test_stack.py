"""`recserve stack`: rendered state, process command lines, PID bookkeeping (no process is started
here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from serve_app.monitoring.alerting.alertmanager_config import (
    DingTalkChannel,
    EmailChannel,
    ReceiverSettings,
    WebhookChannel,
)
from serve_app.monitoring.stack import find_binary, process_specs, stack_status, stack_up
from serve_app.monitoring.stack_cli import main
from serve_app.monitoring.stack_config import StackConfig, StackError, render_state
from serve_app.processes import read_record, stop_recorded


def config(tmp_path, **overrides) -> StackConfig:
    values = dict(
        state_dir=tmp_path / "state",
        ray_tmpdir=tmp_path / "raytmp",
        prometheus_port=19090,
        alertmanager_port=19093,
        scrape_interval="5s",
        receivers=ReceiverSettings(),
    )
    return StackConfig(**(values | overrides))


def test_render_state_writes_configs_that_point_at_each_other(tmp_path):
    cfg = config(tmp_path)
    paths = render_state(cfg)
    prom = yaml.safe_load(paths["prometheus_config"].read_text())
    assert prom["global"]["scrape_interval"] == "5s"
    ray_job = next(job for job in prom["scrape_configs"] if job["job_name"] == "ray")
    assert ray_job["file_sd_configs"][0]["files"] == [
        str(tmp_path / "raytmp" / "ray" / "prom_metrics_service_discovery.json")
    ]
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "127.0.0.1:19093"
    ]
    for rule_file in prom["rule_files"]:
        assert os.path.isabs(rule_file) and os.path.exists(rule_file)
    assert oct(os.stat(cfg.state_dir).st_mode & 0o777) == "0o700"
    assert oct(os.stat(paths["alertmanager_config"]).st_mode & 0o777) == "0o600"


def test_extra_rule_files_are_copied_and_loaded(tmp_path):
    extra = tmp_path / "test_rule.yml"
    extra.write_text("groups: []\n")
    paths = render_state(config(tmp_path, extra_rule_files=[extra]))
    rule_files = yaml.safe_load(paths["prometheus_config"].read_text())["rule_files"]
    assert rule_files[-1].endswith("extra_0_test_rule.yml")


def test_smtp_password_goes_to_a_private_file(tmp_path):
    receivers = ReceiverSettings(
        email=EmailChannel(
            to=["a@x.org"], **{"from": "b@x.org"}, smarthost="smtp.x.org:587", password="hunter2"
        )
    )
    paths = render_state(config(tmp_path, receivers=receivers))
    text = paths["alertmanager_config"].read_text()
    password_file = tmp_path / "state" / "alertmanager" / "smtp_password"
    assert "hunter2" not in text and str(password_file) in text
    assert password_file.read_text() == "hunter2"
    assert oct(os.stat(password_file).st_mode & 0o777) == "0o600"


def test_process_specs_bind_loopback_with_own_data_dirs(tmp_path):
    cfg = config(tmp_path)
    specs = {s.name: s for s in process_specs(cfg, render_state(cfg))}
    assert list(specs) == ["alertmanager", "prometheus"]  # no DingTalk robot configured: no bridge
    prom = specs["prometheus"].argv
    assert "--web.listen-address=127.0.0.1:19090" in prom
    assert f"--storage.tsdb.path={cfg.state_dir / 'prometheus' / 'data'}" in prom
    am = specs["alertmanager"].argv
    assert "--web.listen-address=127.0.0.1:19093" in am and "--cluster.listen-address=" in am
    assert specs["prometheus"].ready_url == "http://127.0.0.1:19090/-/ready"


def test_dingtalk_robot_adds_the_bridge_with_secrets_in_its_environment(tmp_path):
    receivers = ReceiverSettings(
        dingtalk=DingTalkChannel(
            url="https://oapi.dingtalk.com/robot/send?access_token=t",
            secret="SECs",
            bridge_port=19095,
        ),
        webhook=WebhookChannel(url="http://127.0.0.1:1/x"),
    )
    cfg = config(tmp_path, receivers=receivers)
    (bridge, *_) = process_specs(cfg, render_state(cfg))
    assert bridge.name == "dingtalk"
    assert bridge.argv[:3] == [sys.executable, "-m", "serve_app.monitoring.alerting.dingtalk"]
    assert "SECs" not in " ".join(
        bridge.argv
    )  # secrets travel in the environment, not in `ps` output
    assert bridge.env["RECSERVE_DINGTALK_SECRET"] == "SECs"
    assert bridge.ready_url == "http://127.0.0.1:19095/-/ready"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"scrape_interval": "5 seconds"}, "Prometheus duration"),
        ({"prometheus_port": 70000}, "not a TCP port"),
    ],
)
def test_bad_stack_settings_are_refused(tmp_path, overrides, message):
    with pytest.raises((StackError, ValueError), match=message):
        config(tmp_path, **overrides)


def test_missing_binary_names_the_install_command(monkeypatch):
    monkeypatch.delenv("RECSERVE_PROMETHEUS_BIN", raising=False)
    with pytest.raises(StackError, match="apt-get install -y prometheus prometheus-alertmanager"):
        find_binary(("no-such-prometheus-binary",), "RECSERVE_PROMETHEUS_BIN")
    monkeypatch.setenv("RECSERVE_PROMETHEUS_BIN", "/nonexistent/prometheus")
    with pytest.raises(StackError, match="RECSERVE_PROMETHEUS_BIN"):
        find_binary(("prometheus",), "RECSERVE_PROMETHEUS_BIN")


def _record(state_dir, name, pid, argv):
    (state_dir / "pids").mkdir(parents=True, exist_ok=True)
    record = {
        "name": name,
        "pid": pid,
        "argv": argv,
        "ready_url": "http://127.0.0.1:1/-/ready",
        "log": "x",
    }
    (state_dir / "pids" / f"{name}.json").write_text(json.dumps(record))


def test_a_reused_pid_is_never_signalled(tmp_path):
    # The record names this very test process but with another command line: the PID was reused.
    _record(tmp_path, "prometheus", os.getpid(), ["/usr/bin/prometheus", "--config.file=x"])
    assert stack_status(tmp_path)["prometheus"]["running"] is False
    assert stop_recorded(tmp_path, "prometheus").startswith("was not running")
    assert read_record(tmp_path, "prometheus") is None  # the stale record is cleared


def test_stop_recorded_stops_the_recorded_process(tmp_path):
    # A process this test starts itself (sleep), recorded the way write_record records one.
    proc = subprocess.Popen(["sleep", "60"])
    try:
        _record(tmp_path, "alertmanager", proc.pid, ["sleep", "60"])
        assert stack_status(tmp_path)["alertmanager"]["running"] is True
        assert stop_recorded(tmp_path, "alertmanager") == f"stopped (PID {proc.pid})"
        assert proc.poll() is not None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_cli_status_with_nothing_running(tmp_path, capsys):
    assert main(["status", "--state-dir", str(tmp_path)]) == 1
    assert "nothing running" in capsys.readouterr().out


def test_cli_render_writes_the_drop_in_files(tmp_path, capsys):
    assert main(["render", "--out", str(tmp_path)]) == 0
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == [
        "alertmanager/alertmanager.yml",
        "grafana/dashboards/recognition-serve.json",
        "prometheus/alert_rules.yml",
        "prometheus/prometheus.yml",
        "prometheus/recording_rules.yml",
    ]


def test_bad_receiver_settings_surface_as_a_stack_error_before_anything_starts(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("RECSERVE_ALERT_EMAIL_TO", "oncall@example.com")  # but no SMTP server given
    monkeypatch.delenv("RECSERVE_SMTP_SMARTHOST", raising=False)
    with pytest.raises(StackError, match="RECSERVE_SMTP_SMARTHOST"):
        stack_up(config(tmp_path, receivers=None))
    assert stack_status(tmp_path / "state") == {}
