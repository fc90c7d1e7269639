"""`recserve up` stopped by SIGTERM and by SIGINT: everything it started is gone within its bound,
every port is free, and a start right after on the same ports gets a ready service.

One `recserve up` of its own (not the session's `serve run`): a small config with the first model
of the test config, its own ports (28xxx, moved by RECSERVE_TEST_PORT_OFFSET), its own RAY_TMPDIR
and stack directory. Two full starts on the same ports, one per signal: the second start is the
restart check of the first stop. SIGTERM is what systemd, Docker and Kubernetes send, SIGINT what
Ctrl-C sends. SIGHUP takes the same path in the launcher (StopSignals notes the signal;
stop_started stops the tree and the stack): tests/unit/test_stop_signals.py shows each of the
three reach that path, through `make run` too, so a third full start here would show nothing more.

Each start also runs with API keys (a keys file in $RECSERVE_API_KEYS_FILE, as an operator sets it)
and is checked before its signal for what it exposes: every listening socket of HAProxy, Prometheus,
Alertmanager and the Ray dashboard is on loopback, and the keyed API refuses what it must
(docs/SECURITY.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from serve_app import launcher
from serve_app.api_keys_cli import add_key
from serve_app.exposure import is_loopback, private_dir
from serve_app.process_tree import ProcessTree
from serve_app.processes import port_in_use
from tests.integration.ports import OFFSET
from tests.integration.scratch import discard_unless_failed, scratch_dir

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
    args["models"][0].pop("shadow", None)  # its candidate is not among the models kept
    args.pop("forecaster", None)
    args["ingress"]["num_replicas"] = 1
    # The quality store beside the config, not in the project's .cache: every run starts empty
    # (request ids repeat across runs) and a restart within the module finds what it stored.
    args.setdefault("quality", {})["store_dir"] = str(target.parent / "quality")
    target.write_text(yaml.safe_dump(doc, sort_keys=False))
    return target


@pytest.fixture(scope="module")
def workdir(request) -> Path:
    taken = [f"{name} {port}" for name, port in PORTS.items() if port_in_use(port)]
    if taken:
        # Another service on these fixed ports (e.g. someone's `make run`) is not ours to stop.
        pytest.skip(f"ports already in use: {', '.join(taken)}")
    # Ray's socket paths live under RAY_TMPDIR and must stay under 107 bytes: pytest's own
    # temporary folders are too deep once a session has made many of them.
    path = scratch_dir("rs-stop-")
    yield path
    # HAProxy's private folder: under the temp folder when the stack's is too deep for its sockets
    haproxy_dir = private_dir(path / "stack" / "hp")
    if not haproxy_dir.is_relative_to(path):
        shutil.rmtree(haproxy_dir, ignore_errors=True)
    discard_unless_failed(request.session, path)


@pytest.fixture(scope="module")
def api_keys(workdir: Path) -> dict[str, str]:
    """Tokens by name: two clients with predict + feedback, one with predict only, an operator."""
    path = workdir / "keys.json"
    scopes = {
        "alice": ["predict", "feedback"],
        "bobby": ["predict", "feedback"],
        "viewer": ["predict"],
        "operator": ["admin"],
    }
    return {name: add_key(path, s, key_id=name) for name, s in scopes.items()}


def start_up(workdir: Path, run: str) -> subprocess.Popen:
    """`recserve up` with the small config, in a session of its own; returns once /readyz is 200."""
    env = {
        **os.environ,
        "RAY_TMPDIR": str(workdir / "ray"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(PORTS["haproxy_stats"]),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(PORTS["haproxy_metrics"]),
        "PYTHONUNBUFFERED": "1",
        "RECSERVE_API_KEYS_FILE": str(workdir / "keys.json"),
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


# The processes whose every listening socket must be on loopback, by a part of their command line.
LOOPBACK_ONLY = ("haproxy", "prometheus", "alertmanager")
RAY_DASHBOARD = "dashboard/dashboard.py"
SERVE_ACTORS = ("ServeReplica", "ProxyActor", "ServeController")


def listening(pids) -> list[tuple[int, str, str, int]]:
    """(pid, command line, address, port) of every listening TCP socket of `pids`."""
    out = []
    for pid in pids:
        try:
            sockets = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            continue  # a worker that exited meanwhile
        for c in sockets:
            if c.status == psutil.CONN_LISTEN:
                out.append((pid, cmdline(pid), c.laddr.ip, c.laddr.port))
    return out


def is_dashboard_page(port: int) -> bool:
    """The port serves the Ray dashboard's web page: HTTP, and not the Prometheus text its metrics
    port serves on every path (`/` there answers metrics)."""
    try:
        answer = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
    except requests.RequestException:
        return False  # a gRPC port
    return not answer.headers.get("Content-Type", "").startswith("text/plain; version=")


def check_exposure(proc: subprocess.Popen) -> None:
    """Every listener below `recserve up` is on loopback: the API through HAProxy, its stats and
    exporter, Prometheus, Alertmanager, the Ray dashboard and Ray's own GCS, raylet, agents and
    workers; Serve's gRPC servers alone bind every interface (is_serve_grpc_wildcard). Read again
    for a while: Ray replaces HAProxy on each reload."""
    deadline = time.monotonic() + 60
    while True:
        tree = ProcessTree(proc.pid)
        tree.refresh()
        sockets = listening({ref.pid for ref in tree.members})
        ours = [s for s in sockets if any(part in s[1] for part in LOOPBACK_ONLY)]
        found = {part for part in LOOPBACK_ONLY for s in ours if part in s[1]}
        on_fixed_ports = [s for s in sockets if s[3] in PORTS.values()]
        dashboard = [s for s in sockets if RAY_DASHBOARD in s[1] and is_dashboard_page(s[3])]
        complete = found == set(LOOPBACK_ONLY) and dashboard
        if complete and {s[3] for s in on_fixed_ports} == set(PORTS.values()):
            break
        assert time.monotonic() < deadline, sockets
        time.sleep(2)
    exposed = [s for s in sockets if not is_loopback(s[2].removeprefix("::ffff:"))]
    assert [s for s in exposed if not is_serve_grpc_wildcard(s)] == [], exposed
    assert ours and on_fixed_ports and dashboard  # the named listeners were among those checked


def is_serve_grpc_wildcard(socket: tuple[int, str, str, int]) -> bool:
    """Serve binds its gRPC servers (the fallback proxy's, the replicas' direct-ingress and internal
    ones) on [::] whatever the node's address, with no setting to change it: the one exception,
    guarded by the service's peer check (docs/SECURITY.md)."""
    _, command, address, _ = socket
    return address == "::" and any(part in command for part in SERVE_ACTORS)


def check_keys(keys: dict[str, str], run: str, jpeg: bytes) -> None:
    """The keyed API: refusals without or with a wrong key or scope, JSON-only feedback, and one
    key unable to label (or overwrite) another key's prediction."""
    base = f"http://127.0.0.1:{PORTS['serve']}"
    model = yaml.safe_load(TEST_CONFIG.read_text())["applications"][0]["args"]["models"][0]["name"]

    def call(method, path, key=None, **kwargs):
        headers = {**kwargs.pop("headers", {})}
        if key is not None:
            headers["Authorization"] = f"Bearer {keys.get(key, key)}"
        return requests.request(method, base + path, headers=headers, timeout=60, **kwargs)

    assert call("GET", "/healthz").status_code == 200
    missing = call("GET", "/v1/models")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    forged = keys["alice"][:-4] + "AAAA"
    assert call("GET", "/v1/models", key=forged).status_code == 401
    assert call("GET", "/v1/models", key="viewer").status_code == 200
    assert call("POST", "/v1/feedback", key="viewer", json={}).status_code == 403
    assert call("GET", "/dashboard/api/panels", key="alice").status_code == 403
    assert call("GET", "/dashboard/api/panels", key="operator").status_code == 200

    # The same client-chosen id from two keys: two predictions, neither overwrites the other.
    rid = f"stop-{run}-shared"
    files_one = [("files", ("a.jpg", jpeg, "image/jpeg"))]
    files_two = files_one + [("files", ("b.jpg", jpeg, "image/jpeg"))]
    predict = f"/v1/models/{model}/predict"
    header = {"X-Request-Id": rid}
    assert call("POST", predict, key="alice", files=files_one, headers=header).status_code == 200
    assert call("POST", predict, key="bobby", files=files_two, headers=header).status_code == 200
    only_alice = f"stop-{run}-first"
    predicted = call(
        "POST", predict, key="alice", files=files_one, headers={"X-Request-Id": only_alice}
    )
    assert predicted.status_code == 200

    def feedback(key, request_id, index=0):
        body = {"request_id": request_id, "label": 281, "index": index}
        return call("POST", "/v1/feedback", key=key, json=body)

    quality = f"/v1/models/{model}/quality"
    before = call("GET", quality, key="operator").json()["feedback"]
    assert call("POST", "/v1/feedback", json={"request_id": rid, "label": 1}).status_code == 401
    # Bob's second image exists under the shared id for Bob only: Alice's one-image prediction
    # kept its place.
    assert feedback("bobby", rid, index=1).status_code == 200
    alice_second = feedback("alice", rid, index=1)
    assert alice_second.status_code == 404, alice_second.text
    assert feedback("alice", rid).status_code == 200
    stolen = feedback("bobby", only_alice)
    assert stolen.status_code == 404, stolen.text
    assert stolen.json()["request_id"] == only_alice  # the id as sent; no other key's name in it
    assert "alice" not in stolen.text  # nor the key that made the prediction
    assert (
        feedback("alice", only_alice).json()["predicted_class_id"]
        == (predicted.json()["predictions"][0]["top_k"][0]["class_id"])
    )
    after = call("GET", quality, key="operator").json()["feedback"]
    # the refused (unauthenticated, other key's) feedback changed nothing the alert reads
    assert after["joined"] - before["joined"] == 3, (before, after)

    # A cross-site form or text/plain post, even with a key, is not JSON: 415.
    for content_type in ("application/x-www-form-urlencoded", "text/plain"):
        form = call(
            "POST",
            "/v1/feedback",
            key="alice",
            data=f'{{"request_id": "{rid}", "label": 1}}',
            headers={"Content-Type": content_type},
        )
        assert form.status_code == 415, (content_type, form.text)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_stops_everything_and_frees_the_ports(workdir, api_keys, cat_jpeg, sig):
    proc = start_up(workdir, sig.name)
    try:
        tree = ProcessTree(proc.pid)
        tree.refresh()
        seen = {ref.pid: cmdline(ref.pid) for ref in tree.members}
        stack = recorded_pids(workdir / "stack")
        check_exposure(proc)
        check_keys(api_keys, sig.name, cat_jpeg)
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
