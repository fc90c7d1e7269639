"""Start the service for a load test when none is running, and stop exactly the process that was
started.

The service is started with `recserve up` (what `make run` runs): `serve run CONFIG` in the
foreground plus, unless Prometheus already answers, the project's Prometheus and Alertmanager,
so the report has series to read. SIGTERM to that one PID stops Serve, Ray and then the stack
within its own time bound; whatever of its process tree is still running after that is stopped by
PID (serve_app.process_tree.stop_tree).
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from serve_app.process_tree import stop_tree
from serve_app.processes import StartedProcess, StopStep, http_ok, start_process

READY_POLL_S = 2.0


def is_ready(base_url: str, timeout_s: float = 2.0) -> bool:
    """True when GET {base_url}/readyz answers 200."""
    return http_ok(f"{base_url.rstrip('/')}/readyz", timeout_s)


def launcher_command(config: Path, prometheus_url: str, prometheus_running: bool) -> list[str]:
    """`recserve up` for CONFIG; with --no-stack when a Prometheus already answers, else on that
    URL's port."""
    beside = Path(sys.executable).parent / "recserve"
    command = [str(beside)] if beside.is_file() else [sys.executable, "-m", "serve_app.cli"]
    command += ["up", "--config", str(config)]
    if prometheus_running:
        command.append("--no-stack")
    else:
        port = urlparse(prometheus_url).port
        if port:
            command += ["--prometheus-port", str(port)]
    return command


def stop_steps(grace_s: float) -> tuple[StopStep, ...]:
    """SIGTERM `recserve up` (it stops Serve, its local Ray and the stack it started, within its
    own bound, STOP_BOUND_S); SIGKILL to the process group created for it if it overruns `grace_s`.
    What it leaves in other groups (serve run has its own) is stopped by stop_tree."""
    return (
        StopStep(signal.SIGTERM, grace_s),
        StopStep(signal.SIGKILL, 10.0, whole_group=True),
    )


@dataclass
class StartedService:
    """The `recserve up` process this load test started (leader of its own process group), with its
    log file."""

    launcher: StartedProcess

    @property
    def pid(self) -> int:
        """Process id of `recserve up`."""
        return self.launcher.pid

    @property
    def log_path(self) -> Path | None:
        """Where the output of `recserve up` goes."""
        return self.launcher.log_path

    def stop(self, grace_s: float = 120.0) -> int | None:
        """Stop `recserve up` and, by PID, whatever of its process tree outlived it; its exit
        code."""
        return stop_tree(self.launcher, stop_steps(grace_s)).exit_code


def start_service(
    config: Path,
    base_url: str,
    log_path: Path,
    prometheus_url: str,
    prometheus_running: bool,
    ready_timeout_s: float = 600.0,
) -> StartedService:
    """Run `recserve up --config CONFIG` and wait until {base_url}/readyz answers; raise with the
    log tail if not (ExitedBeforeReady, NotReady)."""
    if not Path(config).is_file():
        raise FileNotFoundError(
            f"serve config {config} not found; pass --config or --host URL of a running service"
        )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = launcher_command(config, prometheus_url, prometheus_running)
    service = StartedService(start_process(f"`{' '.join(command)}`", command, log_path))
    try:
        service.launcher.wait_ready(
            lambda: is_ready(base_url),
            ready_timeout_s,
            ready_check=f"{base_url}/readyz answering 200",
            poll_s=READY_POLL_S,
            hint="raise --ready-timeout",
        )
    except BaseException:
        service.stop()
        raise
    return service
