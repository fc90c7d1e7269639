"""Start the service for a load test when none is running, and stop exactly the process that was
started.

The service is started with `recserve up` (what `make run` runs): `serve run CONFIG` in the
foreground plus, unless Prometheus already answers, the project's Prometheus and Alertmanager,
so the report has series to read. Ctrl-C to that one PID stops Serve and then the stack.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx


def is_ready(base_url: str, timeout_s: float = 2.0) -> bool:
    """True when GET {base_url}/readyz answers 200."""
    try:
        return httpx.get(f"{base_url.rstrip('/')}/readyz", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


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


@dataclass
class StartedService:
    """The `recserve up` process this load test started (leader of its own process group), with its
    log file."""

    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        """Process id of `recserve up`."""
        return self.process.pid

    def stop(self, grace_s: float = 120.0) -> int | None:
        """Ctrl-C `recserve up` (it stops Serve, its local Ray and the stack it started), escalating
        if it hangs."""
        for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 15.0)):
            if self.process.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=wait_s)
        # Whatever it left behind in the process group created for it (serve run, Ray) goes too;
        # nothing else.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not group_alive(self.pid):
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            deadline = time.monotonic() + 10.0
            while group_alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.5)
        if self.process.poll() is None:
            self.process.wait(timeout=10.0)
        return self.process.poll()


def group_alive(pgid: int) -> bool:
    """True while any process of group `pgid` exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _default_sigint() -> None:
    # A shell's background job ignores SIGINT and children inherit that; the launcher must see
    # Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def log_tail(path: Path, lines: int = 30) -> str:
    """Last lines of a log file, for error messages."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_service(
    config: Path,
    base_url: str,
    log_path: Path,
    prometheus_url: str,
    prometheus_running: bool,
    ready_timeout_s: float = 600.0,
) -> StartedService:
    """Run `recserve up --config CONFIG` and wait until {base_url}/readyz answers; raise with the
    log tail if not."""
    if not Path(config).is_file():
        raise FileNotFoundError(
            f"serve config {config} not found; pass --config or --host URL of a running service"
        )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = launcher_command(config, prometheus_url, prometheus_running)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )
    service = StartedService(process, log_path)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"`{' '.join(command)}` exited with code {process.returncode} before the service was ready; "
                f"log {log_path}:\n{log_tail(log_path)}"
            )
        if is_ready(base_url):
            return service
        time.sleep(2.0)
    service.stop()
    raise TimeoutError(
        f"{base_url}/readyz did not answer 200 within {ready_timeout_s:.0f} s of `{' '.join(command)}`; "
        f"raise --ready-timeout or read {log_path}:\n{log_tail(log_path)}"
    )
