"""Stopping the service a load test started: the launcher by PID, then whatever it left in its own group."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from loadtests import stack

# A stand-in launcher: leaves a child behind in its process group, and exits on Ctrl-C like `recserve up`.
LAUNCHER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
try:
    print("ready", flush=True)  # inside the try: a Ctrl-C right after "ready" must take the same path
    time.sleep(120)
except KeyboardInterrupt:
    sys.exit(130)
"""


def start_launcher(tmp_path: Path) -> stack.StartedService:
    log_path = tmp_path / "launcher.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER], stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=stack._default_sigint,
        )
    while "ready" not in log_path.read_text():
        if process.poll() is not None:
            raise AssertionError(log_path.read_text())
    return stack.StartedService(process, log_path)


def test_stop_ends_the_launcher_and_what_it_left_behind(tmp_path):
    service = start_launcher(tmp_path)
    assert stack.group_alive(service.pid)
    assert service.stop(grace_s=20) == 130  # it took the Ctrl-C path
    assert not stack.group_alive(service.pid)


def test_stop_of_an_exited_launcher_is_harmless(tmp_path):
    service = start_launcher(tmp_path)
    service.stop(grace_s=20)
    assert service.stop(grace_s=1) == 130


def test_launcher_command_starts_the_stack_only_when_prometheus_is_down():
    with_stack = stack.launcher_command(Path("configs/serve_config.yaml"), "http://127.0.0.1:19090", False)
    assert with_stack[-5:] == ["up", "--config", "configs/serve_config.yaml", "--prometheus-port", "19090"]
    without = stack.launcher_command(Path("configs/serve_config.yaml"), "http://127.0.0.1:9090", True)
    assert without[-4:] == ["up", "--config", "configs/serve_config.yaml", "--no-stack"]


def test_start_service_refuses_a_missing_config(tmp_path):
    try:
        stack.start_service(tmp_path / "absent.yaml", "http://127.0.0.1:9", tmp_path / "log", "http://x", True, 1)
    except FileNotFoundError as exc:
        assert "pass --config or --host" in str(exc)
    else:
        raise AssertionError("a missing config must be refused")
