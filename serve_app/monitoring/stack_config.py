"""What our own Prometheus + Alertmanager run from: the stack's settings and the config files
rendered from them into its state directory, plus the drop-in copies for someone else's servers.

Nothing here starts a process (serve_app.monitoring.stack does).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from serve_app.monitoring.alerting.alertmanager_config import (
    ReceiverSettings,
    load_receiver_settings,
    render_alertmanager_config,
)
from serve_app.monitoring.alerting.prometheus_config import (
    DEFAULT_SCRAPE_INTERVAL,
    PrometheusSettings,
    ray_sd_file,
    render_prometheus_config,
)
from serve_app.monitoring.alerting.rules import render_alert_rules, render_recording_rules
from serve_app.monitoring.alerting.thresholds import (
    DEFAULT_ALERTS_FILE,
    check_duration,
    load_thresholds,
)
from serve_app.monitoring.alerting.yamldoc import dump_yaml
from serve_app.monitoring.dashboard_panels import render_grafana_dashboard

DEFAULT_STATE_DIR = Path(".cache/stack")
HOST = "127.0.0.1"
STATE_SUBDIRS = (
    "prometheus",
    "prometheus/targets",
    "prometheus/data",
    "alertmanager",
    "alertmanager/data",
    "logs",
    "pids",
)


class StackError(RuntimeError):
    """The stack could not be started, checked or stopped; the message says what to do."""


@dataclass
class StackConfig:
    """Everything `up` needs; the defaults are the documented ports and paths."""

    state_dir: Path = DEFAULT_STATE_DIR
    ray_tmpdir: Path | None = None  # None: $RAY_TMPDIR or /tmp, as Ray itself decides
    prometheus_port: int = 9090
    alertmanager_port: int = 9093
    scrape_interval: str = DEFAULT_SCRAPE_INTERVAL
    alerts_file: Path | None = None  # None: configs/alerts.yaml
    receivers: ReceiverSettings | None = None  # None: from RECSERVE_* variables / receivers file
    alertmanager_config: dict | None = None  # a whole alertmanager.yml, replacing the rendered one
    extra_rule_files: list[Path] = field(default_factory=list)
    retention: str = "15d"

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        check_duration(self.scrape_interval)
        check_duration(self.retention)
        for name in ("prometheus_port", "alertmanager_port"):
            port = getattr(self, name)
            if not 0 < int(port) < 65536:
                raise StackError(f"{name.replace('_', ' ')} {port} is not a TCP port (1..65535)")

    @property
    def prometheus_url(self) -> str:
        """Where our Prometheus answers."""
        return f"http://{HOST}:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        """Where our Alertmanager answers."""
        return f"http://{HOST}:{self.alertmanager_port}"

    @property
    def prometheus_data_dir(self) -> Path:
        """Our Prometheus's TSDB folder (history is backfilled into it)."""
        return self.state_dir / "prometheus" / "data"


def receiver_settings(cfg: StackConfig) -> ReceiverSettings | None:
    """The receivers Alertmanager is rendered for; None when a whole config document is given."""
    if cfg.alertmanager_config is not None:
        return None
    return cfg.receivers if cfg.receivers is not None else load_receiver_settings()


def render_state(cfg: StackConfig) -> dict[str, Path]:
    """Write every config file the stack runs from into the state directory; return their paths."""
    d = cfg.state_dir
    for sub in STATE_SUBDIRS:
        (d / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)  # the Alertmanager config may carry webhook tokens and SMTP passwords

    thresholds = load_thresholds(cfg.alerts_file or DEFAULT_ALERTS_FILE)
    prom = d / "prometheus"
    (prom / "recording_rules.yml").write_text(render_recording_rules(thresholds))
    (prom / "alert_rules.yml").write_text(render_alert_rules(thresholds))
    rule_files = [str(prom / "recording_rules.yml"), str(prom / "alert_rules.yml")]
    for index, extra in enumerate(cfg.extra_rule_files):
        target = prom / f"extra_{index}_{Path(extra).name}"
        shutil.copyfile(extra, target)
        rule_files.append(str(target))

    settings = PrometheusSettings(
        ray_sd_file=str(ray_sd_file(cfg.ray_tmpdir)),
        rule_files=rule_files,
        extra_targets_files=[str(prom / "targets" / "*.json")],
        alertmanagers=[f"{HOST}:{cfg.alertmanager_port}"],
        self_address=f"{HOST}:{cfg.prometheus_port}",
        scrape_interval=cfg.scrape_interval,
    )
    (prom / "prometheus.yml").write_text(
        render_prometheus_config(
            settings, header=f"Rendered by `recserve stack up` into {d}; edit the sources instead."
        )
    )

    am = d / "alertmanager"
    password_file = am / "smtp_password"
    receivers = receiver_settings(cfg)
    if receivers is None:
        am_text = dump_yaml(
            cfg.alertmanager_config, "Given to running_stack(alertmanager_config=...)."
        )
    else:
        if receivers.email.password:
            password_file.write_text(receivers.email.password)
            os.chmod(password_file, 0o600)
        am_text = render_alertmanager_config(receivers, password_file=str(password_file))
    (am / "alertmanager.yml").write_text(am_text)
    os.chmod(am / "alertmanager.yml", 0o600)
    return {
        "prometheus_config": prom / "prometheus.yml",
        "alertmanager_config": am / "alertmanager.yml",
        "ray_sd_file": Path(settings.ray_sd_file),
    }


def render_drop_in(out_dir: Path, alerts_file: Path | None = None) -> list[Path]:
    """Write the files someone with their own Prometheus/Alertmanager drops in; return the paths."""
    thresholds = load_thresholds(alerts_file or DEFAULT_ALERTS_FILE)
    prom, am, grafana = (
        out_dir / "prometheus",
        out_dir / "alertmanager",
        out_dir / "grafana" / "dashboards",
    )
    files = {
        prom / "recording_rules.yml": render_recording_rules(thresholds),
        prom / "alert_rules.yml": render_alert_rules(thresholds),
        prom / "prometheus.yml": render_prometheus_config(PrometheusSettings()),
        am / "alertmanager.yml": render_alertmanager_config(ReceiverSettings()),
        grafana / "recognition-serve.json": render_grafana_dashboard(),
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(files)
