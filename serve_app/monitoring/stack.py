"""Our own Prometheus + Alertmanager (+ the DingTalk bridge) on loopback: start, reload, status,
stop.

Each process runs from a state directory (default .cache/stack) holding its rendered config
(serve_app.monitoring.stack_config), its data, its log and a PID record; `down` stops exactly
those PIDs. The system services the Debian packages install are never touched: ours listen on
their own ports with their own data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterator

from serve_app.monitoring.alerting.alertmanager_config import ReceiverSettings
from serve_app.monitoring.alerting.prometheus_config import DEFAULT_SCRAPE_INTERVAL
from serve_app.monitoring.prometheus_api import PrometheusClient
from serve_app.monitoring.stack_config import (
    HOST,
    StackConfig,
    StackError,
    receiver_settings,
    render_state,
)
from serve_app.paths import REPO_ROOT
from serve_app.processes import (
    TERM_THEN_KILL,
    ProcessFailed,
    StartedProcess,
    http_ok,
    is_alive,
    pid_file,
    port_in_use,
    read_record,
    start_process,
    stop_recorded,
    write_record,
)

READY_TIMEOUT_S = 60.0
RELOAD_TIMEOUT_S = 15.0
PROMETHEUS_BINARIES = ("prometheus",)
# Debian names the Alertmanager binary prometheus-alertmanager; upstream tarballs call it
# alertmanager.
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")
INSTALL_HINT = (
    "install them with: sudo apt-get install -y prometheus prometheus-alertmanager "
    "(or `make system-deps`)"
)
# Stopped in this order: Prometheus first, so it sends no alert into the void.
NAMES = ("prometheus", "alertmanager", "dingtalk")


@dataclass
class ProcessSpec:
    """One process of the stack: how to start it and how to tell it is ready."""

    name: str
    argv: list[str]
    ready_url: str
    env: dict[str, str] = field(default_factory=dict)


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


def _dingtalk_spec(receivers: ReceiverSettings) -> ProcessSpec:
    port = receivers.dingtalk.bridge_port
    env = {"RECSERVE_DINGTALK_WEBHOOK": receivers.dingtalk.url}
    if receivers.dingtalk.secret:
        env["RECSERVE_DINGTALK_SECRET"] = receivers.dingtalk.secret
    if receivers.dingtalk.at_mobiles:
        env["RECSERVE_DINGTALK_AT_MOBILES"] = ",".join(receivers.dingtalk.at_mobiles)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    )
    argv = [sys.executable, "-m", "serve_app.monitoring.alerting.dingtalk"]
    return ProcessSpec(
        "dingtalk", [*argv, "--listen", f"{HOST}:{port}"], f"http://{HOST}:{port}/-/ready", env
    )


def process_specs(cfg: StackConfig, paths: dict[str, Path]) -> list[ProcessSpec]:
    """The processes to start, in order: Alertmanager (and its DingTalk bridge) first, then
    Prometheus."""
    d = cfg.state_dir
    specs = []
    receivers = receiver_settings(cfg)
    if receivers is not None and receivers.dingtalk.url:
        specs.append(_dingtalk_spec(receivers))
    alertmanager = [
        find_binary(ALERTMANAGER_BINARIES, "RECSERVE_ALERTMANAGER_BIN"),
        f"--config.file={paths['alertmanager_config']}",
        f"--storage.path={d / 'alertmanager' / 'data'}",
        f"--web.listen-address={HOST}:{cfg.alertmanager_port}",
        f"--web.external-url={cfg.alertmanager_url}",
        "--cluster.listen-address=",  # a single instance: no gossip port to collide with
    ]
    specs.append(ProcessSpec("alertmanager", alertmanager, f"{cfg.alertmanager_url}/-/ready"))
    prometheus = [
        find_binary(PROMETHEUS_BINARIES, "RECSERVE_PROMETHEUS_BIN"),
        f"--config.file={paths['prometheus_config']}",
        f"--storage.tsdb.path={cfg.prometheus_data_dir}",
        f"--storage.tsdb.retention.time={cfg.retention}",
        f"--web.listen-address={HOST}:{cfg.prometheus_port}",
        f"--web.external-url={cfg.prometheus_url}",
        # No --web.enable-lifecycle: it lets anyone who reaches the port POST /-/quit and
        # /-/reload. A reload is a SIGHUP to the recorded PID instead (_reload).
    ]
    specs.append(ProcessSpec("prometheus", prometheus, f"{cfg.prometheus_url}/-/ready"))
    return specs


def base_url(ready_url: str) -> str:
    """The address of a stack process, from its readiness URL."""
    return ready_url.rsplit("/-/", 1)[0]


def answers(name: str, ready_url: str, timeout_s: float = 2.0) -> bool:
    """The process is ready: Prometheus answers a query, the others their `/-/ready`."""
    if name != "prometheus":
        return http_ok(ready_url, timeout_s)
    client = PrometheusClient(base_url(ready_url), timeout_s=timeout_s)
    try:
        return client.ready()
    finally:
        client.close()


def stack_down(state_dir: Path) -> dict[str, str]:
    """Stop every process recorded in `state_dir`, by PID; say what happened to each."""
    return {name: stop_recorded(state_dir, name, TERM_THEN_KILL) for name in NAMES}


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
            "ready": alive and answers(name, record["ready_url"]),
            "pid": record.get("pid"),
            "url": base_url(record["ready_url"]),
            "log": record.get("log"),
        }
    return out


def reload_state(name: str, url: str) -> tuple[float, float] | None:
    """(last reload successful 0/1, time of the last successful reload) from a process' own
    metrics; None when it does not answer."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            text = response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError):
        return None
    found = {}
    for line in text.splitlines():
        metric, _, value = line.partition(" ")
        if metric.startswith(f"{name}_config_last_reload_success"):
            found[metric] = float(value)
    ok = found.get(f"{name}_config_last_reload_successful")
    at = found.get(f"{name}_config_last_reload_success_timestamp_seconds")
    return None if ok is None or at is None else (ok, at)


def _reload(name: str, url: str, pid: int, timeout_s: float = RELOAD_TIMEOUT_S) -> None:
    # A running Prometheus / Alertmanager re-reads the freshly rendered files on SIGHUP; ports
    # and data dirs stay. Its own reload metrics say when (and whether) it has.
    if name == "dingtalk":
        return  # its settings come from its environment: `down` then `up` to change them
    before = reload_state(name, url)
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = reload_state(name, url)
        if now is None or before is None:
            continue
        if now[0] == 0:
            break
        if now[1] > before[1]:
            return
    raise StackError(
        f"{name} at {url} (PID {pid}) is running but did not reload its config; see its log"
    )


def _port_taken(spec: ProcessSpec, port: int) -> StackError:
    if spec.name == "dingtalk":
        return StackError(
            f"port {port} for the DingTalk bridge is already in use; "
            "set `bridge_port` in the receivers file"
        )
    return StackError(
        f"port {port} for {spec.name} is already in use. On systemd hosts the Debian package "
        "starts its own system service there, which this stack leaves alone: pick free ports "
        "with --prometheus-port / --alertmanager-port, or load configs/prometheus/ into that "
        "Prometheus (docs/MONITORING.md)"
    )


def _start(spec: ProcessSpec, cfg: StackConfig, tied_to_parent: bool) -> StartedProcess:
    port = int(urllib.parse.urlsplit(spec.ready_url).port or 0)
    if port_in_use(port):
        raise _port_taken(spec, port)
    started = start_process(
        spec.name,
        spec.argv,
        log_path=cfg.state_dir / "logs" / f"{spec.name}.log",
        env=spec.env,
        cwd=cfg.state_dir,
        die_with_parent=tied_to_parent,
        scrub_secrets=True,
    )
    write_record(cfg.state_dir, started, ready_url=spec.ready_url)
    return started


def stack_up(
    cfg: StackConfig, ready_timeout: float = READY_TIMEOUT_S, tied_to_parent: bool = False
) -> dict[str, dict]:
    """Render the configs, start what is not running, reload what is; wait until all are ready."""
    already = {name: info for name, info in stack_status(cfg.state_dir).items() if info["running"]}
    try:
        paths = render_state(cfg)
    except (ValueError, FileNotFoundError) as exc:  # thresholds or receivers: it names the fix
        raise StackError(str(exc)) from None
    started: list[StartedProcess] = []
    try:
        for spec in process_specs(cfg, paths):
            if spec.name in already:
                _reload(spec.name, already[spec.name]["url"], already[spec.name]["pid"])
                continue
            process = _start(spec, cfg, tied_to_parent)
            started.append(process)
            process.wait_ready(
                partial(answers, spec.name, spec.ready_url, 1.0),
                ready_timeout,
                ready_check=f"{base_url(spec.ready_url)} answering",
                poll_s=0.2,
            )
    except ProcessFailed as exc:
        _abort(cfg, started)
        raise StackError(str(exc)) from None
    except BaseException:
        _abort(cfg, started)
        raise
    return stack_status(cfg.state_dir)


def _abort(cfg: StackConfig, started: list[StartedProcess]) -> None:
    # What this call started and did not get ready goes again, through its handle.
    for process in reversed(started):
        process.stop(TERM_THEN_KILL)
        pid_file(cfg.state_dir, process.name).unlink(missing_ok=True)


@dataclass
class Stack:
    """A running stack, as the tests see it."""

    config: StackConfig
    prometheus: PrometheusClient = field(init=False)

    def __post_init__(self) -> None:
        self.prometheus = PrometheusClient(self.config.prometheus_url, timeout_s=5.0)

    @property
    def prometheus_url(self) -> str:
        """Where our Prometheus answers."""
        return self.config.prometheus_url

    @property
    def alertmanager_url(self) -> str:
        """Where our Alertmanager answers."""
        return self.config.alertmanager_url

    def query(self, expr: str) -> list[dict]:
        """Instant query against our Prometheus; the `result` list of the API answer."""
        return self.prometheus.query(expr)


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
    stack = None
    try:
        stack_up(cfg, tied_to_parent=True)
        stack = Stack(cfg)
        yield stack
    finally:
        if stack is not None:
            stack.prometheus.close()
        stack_down(cfg.state_dir)
        if owned_dir:
            shutil.rmtree(directory, ignore_errors=True)
