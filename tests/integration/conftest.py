"""One real Serve instance per test session, started the way users start it: `serve run CONFIG`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.integration.monitoring_fixtures import alert_sink, monitoring_stack  # noqa: F401  (session fixtures)
from tests.integration.ports import (
    HAPROXY_METRICS_PORT,
    HAPROXY_STATS_PORT,
    PROMETHEUS_URL,
    SERVICE_URL,
    config_with_ports,
)
from tests.integration.scratch import discard_unless_failed, scratch_dir
from tests.integration.serve_run import stop_serve_run

ROOT = Path(__file__).resolve().parents[2]
TEST_CONFIG = ROOT / "configs" / "serve_config.test.yaml"
STARTUP_TIMEOUT_S = 300


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def ray_tmpdir(request) -> Path:
    """Ray's temp dir for this session: keeps its sockets, logs and Prometheus SD file apart from
    any other Ray; removed after the session's Serve stopped (serve_process depends on it)."""
    path = scratch_dir("rs-ray-")
    yield path
    discard_unless_failed(request.session, path)


@pytest.fixture(scope="session")
def serve_process(ray_tmpdir: Path):
    """`serve run configs/serve_config.test.yaml` in its own process group; stopped by PID at the
    end."""
    log_path = ray_tmpdir / "serve_run.log"
    env = {
        **os.environ,
        "RAY_TMPDIR": str(ray_tmpdir),
        "RAY_AUTH_MODE": "token",
        "PYTHONUNBUFFERED": "1",
    }
    # The users' default (`make run` / `recserve up`): HAProxy in front of the ingress replicas.
    env.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
    # HAProxy's stats and metrics ports are machine-wide: move them off a running `make run`'s
    # 8404/9101.
    env.setdefault("RAY_SERVE_HAPROXY_STATS_PORT", str(HAPROXY_STATS_PORT))
    env.setdefault("RAY_SERVE_HAPROXY_METRICS_PORT", str(HAPROXY_METRICS_PORT))
    # Serve holds a stopping ingress replica open 30 s so that load balancers elsewhere can drop
    # it; here the only one is the session's HAProxy on this host, which reloads within a second,
    # and no test of the session replaces an ingress replica under load (the fault tests, which
    # do, keep the 30 s). Without this the session's stop alone takes 30 s.
    env.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
    env.update(
        {
            "RECSERVE_PROMETHEUS_URL": PROMETHEUS_URL,
            "RAY_PROMETHEUS_HOST": PROMETHEUS_URL,
        }
    )
    serve_bin = Path(sys.executable).parent / "serve"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                str(serve_bin),
                "run",
                str(config_with_ports(TEST_CONFIG, ray_tmpdir / "serve_config.yaml")),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"serve run exited with {proc.returncode} before becoming ready:\n"
                    f"{_tail(log_path)}"
                )
            try:
                if requests.get(f"{SERVICE_URL}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"service not ready after {STARTUP_TIMEOUT_S}s:\n{_tail(log_path)}")
            time.sleep(1)
        yield proc
    finally:
        stop_serve_run(proc)


@pytest.fixture(scope="session")
def service_url(serve_process) -> str:
    return SERVICE_URL


@pytest.fixture(scope="session")
def metrics_targets(serve_process, ray_tmpdir: Path) -> list[str]:
    """Every Ray metrics endpoint of the cluster, from the service-discovery file Ray writes for
    Prometheus."""
    sd_file = ray_tmpdir / "ray" / "prom_metrics_service_discovery.json"
    deadline = time.monotonic() + 30
    while not sd_file.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    groups = json.loads(sd_file.read_text())
    return [f"http://{t}/metrics" for g in groups for t in g["targets"]]
