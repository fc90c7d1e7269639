"""Our own Prometheus + Alertmanager (+ the DingTalk bridge) on loopback: `recserve stack
up|down|status|render`.

Each process runs from a state directory (default .cache/stack) holding its rendered config,
its data, its log and a PID file; `down` stops exactly those PIDs. The system services the
Debian packages install are never touched: ours listen on their own ports with their own data.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

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
from serve_app.paths import REPO_ROOT
from serve_app.processes import (
    READY_TIMEOUT_S,
    ProcessSpec,
    StackError,
    abort_start,
    http_ok,
    is_alive,
    port_in_use,
    read_record,
    start_process,
    stop_process,
    wait_ready,
)

DEFAULT_STATE_DIR = Path(".cache/stack")
HOST = "127.0.0.1"

PROMETHEUS_BINARIES = ("prometheus",)
# Debian names the Alertmanager binary prometheus-alertmanager; upstream tarballs call it
# alertmanager.
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")
INSTALL_HINT = (
    "install them with: sudo apt-get install -y prometheus prometheus-alertmanager (or `make deps`)"
)


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
    alertmanager_config: dict | None = (
        None  # a whole alertmanager.yml document, replacing the rendered one
    )
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
        return f"http://{HOST}:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://{HOST}:{self.alertmanager_port}"


def find_binary(candidates: tuple[str, ...], env_var: str) -> str:
    """The first of `candidates` on PATH, or the path in `env_var`."""
    override = os.environ.get(env_var)
    if override:
        if not (Path(override).is_file() and os.access(override, os.X_OK)):
            raise StackError(f"${env_var}={override} is not an executable file")
        return override
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    raise StackError(
        f"none of {', '.join(candidates)} is on PATH; {INSTALL_HINT}; or set ${env_var}"
    )


def render_state(cfg: StackConfig) -> dict[str, Path]:
    """Write every config file the stack runs from into the state directory; return their paths."""
    d = cfg.state_dir
    for sub in (
        "prometheus",
        "prometheus/targets",
        "prometheus/data",
        "alertmanager",
        "alertmanager/data",
        "logs",
        "pids",
    ):
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
    if cfg.alertmanager_config is not None:
        am_text = dump_yaml(
            cfg.alertmanager_config, "Given to running_stack(alertmanager_config=...)."
        )
    else:
        receivers = cfg.receivers if cfg.receivers is not None else load_receiver_settings()
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


def _receivers(cfg: StackConfig) -> ReceiverSettings | None:
    if cfg.alertmanager_config is not None:
        return None
    return cfg.receivers if cfg.receivers is not None else load_receiver_settings()


def process_specs(cfg: StackConfig, paths: dict[str, Path]) -> list[ProcessSpec]:
    """The processes to start, in order: Alertmanager (and its DingTalk bridge) first, then
    Prometheus."""
    d = cfg.state_dir
    specs = []
    receivers = _receivers(cfg)
    if receivers is not None and receivers.dingtalk.url:
        port = receivers.dingtalk.bridge_port
        env = {"RECSERVE_DINGTALK_WEBHOOK": receivers.dingtalk.url}
        if receivers.dingtalk.secret:
            env["RECSERVE_DINGTALK_SECRET"] = receivers.dingtalk.secret
        if receivers.dingtalk.at_mobiles:
            env["RECSERVE_DINGTALK_AT_MOBILES"] = ",".join(receivers.dingtalk.at_mobiles)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
        )
        specs.append(
            ProcessSpec(
                "dingtalk",
                [
                    sys.executable,
                    "-m",
                    "serve_app.monitoring.alerting.dingtalk",
                    "--listen",
                    f"{HOST}:{port}",
                ],
                f"http://{HOST}:{port}/-/ready",
                env,
            )
        )
    specs.append(
        ProcessSpec(
            "alertmanager",
            [
                find_binary(ALERTMANAGER_BINARIES, "RECSERVE_ALERTMANAGER_BIN"),
                f"--config.file={paths['alertmanager_config']}",
                f"--storage.path={d / 'alertmanager' / 'data'}",
                f"--web.listen-address={HOST}:{cfg.alertmanager_port}",
                f"--web.external-url={cfg.alertmanager_url}",
                "--cluster.listen-address=",  # a single instance: no gossip port to collide with
            ],
            f"{cfg.alertmanager_url}/-/ready",
        )
    )
    specs.append(
        ProcessSpec(
            "prometheus",
            [
                find_binary(PROMETHEUS_BINARIES, "RECSERVE_PROMETHEUS_BIN"),
                f"--config.file={paths['prometheus_config']}",
                f"--storage.tsdb.path={d / 'prometheus' / 'data'}",
                f"--storage.tsdb.retention.time={cfg.retention}",
                f"--web.listen-address={HOST}:{cfg.prometheus_port}",
                f"--web.external-url={cfg.prometheus_url}",
                "--web.enable-lifecycle",
            ],
            f"{cfg.prometheus_url}/-/ready",
        )
    )
    return specs


NAMES = ("prometheus", "alertmanager", "dingtalk")


def stack_down(state_dir: Path) -> dict[str, str]:
    """Stop every process recorded in `state_dir` (Prometheus first, so it sends no alert into the
    void)."""
    return {name: stop_process(state_dir, name) for name in NAMES}


def stack_status(state_dir: Path) -> dict[str, dict]:
    """Per process: running, ready, PID and URL."""
    out = {}
    for name in NAMES:
        record = read_record(state_dir, name)
        if record is None:
            continue
        alive = is_alive(record)
        out[name] = {
            "running": alive,
            "ready": alive and http_ok(record["ready_url"]),
            "pid": record.get("pid"),
            "url": record["ready_url"].rsplit("/-/", 1)[0],
            "log": record.get("log"),
        }
    return out


def _reload(name: str, base_url: str) -> None:
    # A running Prometheus / Alertmanager re-reads the freshly rendered files; ports and data dirs
    # stay.
    if name == "dingtalk":
        return  # its settings come from its environment: `down` then `up` to change them
    request = urllib.request.Request(f"{base_url}/-/reload", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise StackError(
            f"{name} at {base_url} is running but did not reload its config ({exc}); see its log"
        ) from None


def stack_up(
    cfg: StackConfig, ready_timeout: float = READY_TIMEOUT_S, tied_to_parent: bool = False
) -> dict[str, dict]:
    """Render the configs, start what is not running and reload what is; wait until each is ready."""
    already = {name: info for name, info in stack_status(cfg.state_dir).items() if info["running"]}
    try:
        paths = render_state(cfg)
    except (
        ValueError,
        FileNotFoundError,
    ) as exc:  # thresholds or receivers: the message names the fix
        raise StackError(str(exc)) from None
    specs = process_specs(cfg, paths)
    started: list[tuple[str, subprocess.Popen]] = []
    try:
        for spec in specs:
            if spec.name in already:
                _reload(spec.name, already[spec.name]["url"])
                continue
            port = int(urllib.parse.urlsplit(spec.ready_url).port or 0)
            if port_in_use(port):
                raise StackError(
                    f"port {port} for {spec.name} is already in use. On systemd hosts the Debian package starts "
                    f"its own system service there, which this stack leaves alone: pick free ports with "
                    f"--prometheus-port / --alertmanager-port, or load configs/prometheus/ into that Prometheus "
                    f"(docs/MONITORING.md)"
                    if spec.name != "dingtalk"
                    else f"port {port} for the DingTalk bridge is already in use; set `bridge_port` in the receivers file"
                )
            record, proc = start_process(spec, cfg.state_dir, tied_to_parent)
            started.append((spec.name, proc))
            wait_ready(record, proc, ready_timeout)
    except BaseException:
        for name, proc in reversed(started):
            abort_start(cfg.state_dir, name, proc)
        raise
    return stack_status(cfg.state_dir)


@dataclass
class Stack:
    """A running stack, as the tests see it."""

    config: StackConfig

    @property
    def prometheus_url(self) -> str:
        return self.config.prometheus_url

    @property
    def alertmanager_url(self) -> str:
        return self.config.alertmanager_url

    def query(self, expr: str, timeout: float = 5.0) -> list[dict]:
        """Instant query against our Prometheus; the `result` list of the API answer."""
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=timeout) as response:
            answer = json.loads(response.read())
        if answer.get("status") != "success":
            raise StackError(f"query {expr!r} failed: {answer}")
        return answer["data"]["result"]


@contextlib.contextmanager
def running_stack(
    ray_tmpdir: str | os.PathLike | None,
    prometheus_port: int = 9090,
    alertmanager_port: int = 9093,
    scrape_interval: str = DEFAULT_SCRAPE_INTERVAL,
    extra_rule_files: list[str | os.PathLike] = (),
    alertmanager_config: ReceiverSettings | dict | None = None,
    state_dir: str | os.PathLike | None = None,
    alerts_file: str | os.PathLike | None = None,
) -> Iterator[Stack]:
    """Prometheus + Alertmanager for the duration of a `with` block, stopped by PID afterwards."""
    owned_dir = state_dir is None
    directory = Path(tempfile.mkdtemp(prefix="recserve-stack-")) if owned_dir else Path(state_dir)
    cfg = StackConfig(
        state_dir=directory,
        ray_tmpdir=Path(ray_tmpdir) if ray_tmpdir else None,
        prometheus_port=prometheus_port,
        alertmanager_port=alertmanager_port,
        scrape_interval=scrape_interval,
        alerts_file=Path(alerts_file) if alerts_file else None,
        receivers=alertmanager_config
        if isinstance(alertmanager_config, ReceiverSettings)
        else ReceiverSettings(),
        alertmanager_config=alertmanager_config if isinstance(alertmanager_config, dict) else None,
        extra_rule_files=[Path(p) for p in extra_rule_files],
    )
    try:
        stack_up(cfg, tied_to_parent=True)
        yield Stack(cfg)
    finally:
        stack_down(cfg.state_dir)
        if owned_dir:
            shutil.rmtree(directory, ignore_errors=True)


def render_drop_in(out_dir: Path, alerts_file: Path | None = None) -> list[Path]:
    """Write the files a user with their own Prometheus/Alertmanager drops in; return their paths."""
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


def _print_status(status: dict[str, dict]) -> None:
    if not status:
        print("stack: nothing running")
    for name, info in status.items():
        state = (
            "ready"
            if info["ready"]
            else ("running, not ready" if info["running"] else "not running")
        )
        print(f"  {name:<13} {state:<19} {info['url']:<28} pid {info['pid']}  log {info['log']}")


def build_parser() -> argparse.ArgumentParser:
    """The `recserve stack` argument parser."""
    parser = argparse.ArgumentParser(
        prog="recserve stack", description="Our own Prometheus + Alertmanager on loopback."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("RECSERVE_STACK_DIR", DEFAULT_STATE_DIR)),
        help="configs, data, logs and PID files (default %(default)s, or $RECSERVE_STACK_DIR)",
    )
    up = sub.add_parser("up", parents=[common], help="render the configs and start the stack")
    up.add_argument("--prometheus-port", type=int, default=9090)
    up.add_argument("--alertmanager-port", type=int, default=9093)
    up.add_argument(
        "--scrape-interval", default=DEFAULT_SCRAPE_INTERVAL, help="default %(default)s"
    )
    up.add_argument(
        "--ray-tmpdir",
        type=Path,
        default=None,
        help="Ray's temp root; discovery file is <it>/ray/prom_metrics_service_discovery.json "
        "(default $RAY_TMPDIR or /tmp)",
    )
    up.add_argument(
        "--alerts", type=Path, default=None, help="alert thresholds (default configs/alerts.yaml)"
    )
    up.add_argument(
        "--receivers",
        type=Path,
        default=None,
        help="receivers YAML (default $RECSERVE_ALERT_RECEIVERS_FILE; RECSERVE_* variables override it)",
    )
    up.add_argument(
        "--rules", type=Path, action="append", default=[], help="extra rule file (repeatable)"
    )
    up.add_argument(
        "--retention", default="15d", help="how long Prometheus keeps data (default %(default)s)"
    )
    sub.add_parser("down", parents=[common], help="stop the processes recorded in the state dir")
    sub.add_parser("status", parents=[common], help="show what runs and whether it is ready")
    render = sub.add_parser(
        "render", help="write the drop-in config files (rules from configs/alerts.yaml)"
    )
    render.add_argument(
        "--out", type=Path, default=REPO_ROOT / "configs", help="default %(default)s"
    )
    render.add_argument(
        "--alerts", type=Path, default=None, help="alert thresholds (default configs/alerts.yaml)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `recserve stack`."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "render":
            for path in render_drop_in(args.out, args.alerts):
                print(f"wrote {path}")
            return 0
        if args.command == "down":
            for name, outcome in stack_down(args.state_dir).items():
                print(f"  {name:<13} {outcome}")
            return 0
        if args.command == "status":
            status = stack_status(args.state_dir)
            _print_status(status)
            return 0 if status and all(i["ready"] for i in status.values()) else 1
        cfg = StackConfig(
            state_dir=args.state_dir,
            ray_tmpdir=args.ray_tmpdir,
            prometheus_port=args.prometheus_port,
            alertmanager_port=args.alertmanager_port,
            scrape_interval=args.scrape_interval,
            alerts_file=args.alerts,
            receivers=load_receiver_settings(args.receivers),
            extra_rule_files=args.rules,
            retention=args.retention,
        )
        status = stack_up(cfg)
    except (StackError, ValueError, FileNotFoundError) as exc:
        print(f"recserve stack: {exc}", file=sys.stderr)
        return 2
    _print_status(status)
    channels = cfg.receivers.configured_channels() if cfg.receivers else []
    print(
        f"Prometheus    {cfg.prometheus_url}   (scraping {ray_sd_file(cfg.ray_tmpdir)} every {cfg.scrape_interval})"
    )
    print(
        f"Alertmanager  {cfg.alertmanager_url}   (receivers: {', '.join(channels) or 'none configured, alerts show in its UI'})"
    )
    print(f"Stop with: recserve stack down --state-dir {cfg.state_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
