"""`recserve up` stopped by SIGTERM, SIGHUP and SIGINT: everything it started is gone within its
bound, every port is free, and a start right after on the same ports gets a ready service.

One `recserve up` of its own (not the session's `serve run`): a small config with the first model
of the test config, its own ports (28xxx, moved by RECSERVE_TEST_PORT_OFFSET), its own RAY_TMPDIR
and stack directory. Three full starts on the same ports, one per signal: each later start is the
restart check of the stop before it. All three signals take the same path in the launcher
(StopSignals notes the signal; stop_started stops the tree and the stack); running each for real
is what shows serve run, Ray and HAProxy take it the same way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from serve_app import launcher
from serve_app.processes import ProcessTree, port_in_use
from tests.integration.ports import OFFSET

ROOT = Path(__file__).resolve().parents[2]
TEST_CONFIG = ROOT / "configs" / "serve_config.test.yaml"
PORTS = {
    "serve": 28000 + OFFSET,
    "prometheus": 28090 + OFFSET,
    "alertmanager": 28093 + OFFSET,
    "haproxy_stats": 28404 + OFFSET,
    "haproxy_metrics": 28101 + OFFSET,
}
READY_TIMEOUT_S = 300
# The launcher's own bound, plus time for a loaded 2-core machine to schedule the exits.
EXIT_TIMEOUT_S = launcher.STOP_BOUND_S + 30


def small_config(target: Path) -> Path:
    """The test config's first model alone, on this file's ports, one ingress replica."""
    doc = yaml.safe_load(TEST_CONFIG.read_text())
    doc["http_options"]["port"] = PORTS["serve"]
    args = doc["applications"][0]["args"]
    args["models"] = args["models"][:1]
    args.pop("forecaster", None)
    args["ingress"]["num_replicas"] = 1
    target.write_text(yaml.safe_dump(doc, sort_keys=False))
    return target


@pytest.fixture(scope="module")
def workdir() -> Path:
    taken = [f"{name} {port}" for name, port in PORTS.items() if port_in_use(port)]
    if taken:
        # Another service on these fixed ports (e.g. someone's `make run`) is not ours to stop.
        pytest.skip(f"ports already in use: {', '.join(taken)}")
    # Ray's socket paths live under RAY_TMPDIR and must stay under 107 bytes: pytest's own
    # temporary folders are too deep once a session has made many of them.
    return Path(tempfile.mkdtemp(prefix="rs-stop-", dir="/tmp"))


def start_up(workdir: Path, run: str) -> subprocess.Popen:
    """`recserve up` with the small config, in a session of its own; returns once /readyz is 200."""
    env = {
        **os.environ,
        "RAY_TMPDIR": str(workdir / "ray"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(PORTS["haproxy_stats"]),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(PORTS["haproxy_metrics"]),
        "PYTHONUNBUFFERED": "1",
    }
    (workdir / "ray").mkdir(exist_ok=True)
    command = [
        str(Path(sys.executable).parent / "recserve"),
        "up",
        "--config",
        str(small_config(workdir / "serve_config.yaml")),
        "--prometheus-port",
        str(PORTS["prometheus"]),
        "--alertmanager-port",
        str(PORTS["alertmanager"]),
        "--stack-dir",
        str(workdir / "stack"),
    ]
    log = (workdir / f"up-{run}.log").open("wb")
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    proc.log_path = workdir / f"up-{run}.log"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"recserve up exited with {proc.returncode}:\n{tail(proc.log_path)}")
        try:
            url = f"http://127.0.0.1:{PORTS['serve']}/readyz"
            if requests.get(url, timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(1)
    kill_tree(proc)
    pytest.fail(f"not ready after {READY_TIMEOUT_S} s:\n{tail(proc.log_path)}")


def tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def kill_tree(proc: subprocess.Popen) -> None:
    """Clean-up after a failure: SIGKILL, by PID, to everything below the launcher."""
    tree = ProcessTree(proc.pid)
    tree.refresh()
    tree.signal_all(signal.SIGKILL)
    proc.wait(timeout=30)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def recorded_pids(stack_dir: Path) -> dict[str, int]:
    return {
        path.stem: json.loads(path.read_text())["pid"]
        for path in sorted((stack_dir / "pids").glob("*.json"))
    }


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_stop_signal_stops_everything_and_frees_the_ports(workdir, sig):
    proc = start_up(workdir, sig.name)
    try:
        tree = ProcessTree(proc.pid)
        tree.refresh()
        seen = {ref.pid: cmdline(ref.pid) for ref in tree.members}
        stack = recorded_pids(workdir / "stack")
        # What the launcher started, as the test sees it before the signal: Ray's core processes,
        # its HAProxy, the Serve replicas, and the stack recorded by PID.
        for part in ("gcs_server", "raylet", "haproxy", "ServeReplica", "serve run"):
            assert any(part in line for line in seen.values()), f"no {part} below recserve up"
        assert set(stack) == {"prometheus", "alertmanager"}
        assert set(stack.values()) <= set(seen)

        proc.send_signal(sig)
        code = proc.wait(timeout=EXIT_TIMEOUT_S)
        log = tail(proc.log_path)
        assert code == 0, log
        assert f"recserve up: {sig.name}: stopping" in log
        left = {ref.pid: seen.get(ref.pid, "") for ref in tree.alive()}
        assert left == {}, f"still running after recserve up exited: {left}\n{log}"
        taken = [f"{name} {port}" for name, port in PORTS.items() if port_in_use(port)]
        assert taken == [], log
        assert recorded_pids(workdir / "stack") == {}  # the records went with the processes
    finally:
        if proc.poll() is None:
            kill_tree(proc)
