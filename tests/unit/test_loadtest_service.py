"""Stopping the service a load test started: the launcher by PID, then whatever of its process
tree outlived it, in its group or not."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from loadtests.service import StartedService, launcher_command, start_service
from serve_app.processes import group_alive, start_process

# A stand-in launcher: leaves a child behind in its process group and one in a session of its own
# (as `recserve up` starts serve run), prints their PIDs, and exits on SIGTERM like `recserve up`.
LAUNCHER = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
in_group = subprocess.Popen(sleeper)
own_session = subprocess.Popen(sleeper, start_new_session=True)
print(in_group.pid, own_session.pid, flush=True)
# Inside the wait: a SIGTERM right after "ready" must take the same path.
print("ready", flush=True)
time.sleep(120)
"""


def start_launcher(tmp_path: Path) -> StartedService:
    log_path = tmp_path / "launcher.log"
    launcher = start_process("launcher", [sys.executable, "-c", LAUNCHER], log_path)
    # A whole line: a traceback quoting the print statement must not count as ready.
    launcher.wait_ready(
        lambda: "ready" in log_path.read_text().splitlines(), 120, "prints ready", poll_s=0.01
    )
    return StartedService(launcher)


def children_of(service: StartedService) -> list[int]:
    return [int(pid) for pid in service.log_path.read_text().splitlines()[0].split()]


def pid_runs(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


# Generous: on a loaded 2-core machine a Python process can take seconds to act on a signal, and the
# escalation to SIGKILL after the grace period would make the SIGTERM path look broken.
GRACE_S = 90


def stop_and_time(service: StartedService, grace_s: float) -> tuple[int | None, float]:
    started = time.monotonic()
    code = service.stop(grace_s=grace_s)
    return code, time.monotonic() - started


def test_stop_ends_the_launcher_and_what_it_left_behind(tmp_path):
    service = start_launcher(tmp_path)
    children = children_of(service)
    assert group_alive(service.pid) and all(map(pid_runs, children))
    assert (
        os.getpgid(children[1]) != service.pid
    )  # out of the launcher's group: a group kill misses it
    code, took_s = stop_and_time(service, GRACE_S)
    assert code == 0, (
        f"exit {code} after {took_s:.1f} s; launcher log: {service.log_path.read_text()!r}"
    )
    assert not group_alive(service.pid)
    assert not any(map(pid_runs, children)), "a child of the launcher outlived the stop"


def test_stop_of_an_exited_launcher_is_harmless(tmp_path):
    service = start_launcher(tmp_path)
    first, took_s = stop_and_time(service, GRACE_S)
    assert first == 0, (
        f"exit {first} after {took_s:.1f} s; launcher log: {service.log_path.read_text()!r}"
    )
    second, _ = stop_and_time(service, 1)
    assert second == first
    assert not group_alive(service.pid)


def test_launcher_command_starts_the_stack_only_when_prometheus_is_down():
    with_stack = launcher_command(
        Path("configs/serve_config.yaml"), "http://127.0.0.1:19090", False
    )
    assert with_stack[-5:] == [
        "up",
        "--config",
        "configs/serve_config.yaml",
        "--prometheus-port",
        "19090",
    ]
    without = launcher_command(Path("configs/serve_config.yaml"), "http://127.0.0.1:9090", True)
    assert without[-4:] == ["up", "--config", "configs/serve_config.yaml", "--no-stack"]


def test_start_service_refuses_a_missing_config(tmp_path):
    try:
        start_service(
            tmp_path / "absent.yaml", "http://127.0.0.1:9", tmp_path / "log", "http://x", True, 1
        )
    except FileNotFoundError as exc:
        assert "pass --config or --host" in str(exc)
    else:
        raise AssertionError("a missing config must be refused")
