"""A multi-node Ray cluster on one machine: a head and workers, each its own `ray start --block`.

What `make cluster-demo` and tests/integration/test_cluster_live.py run on: real raylets (one CPU
each, their own temp folder and ports), joined with the head's token, the application deployed with
`serve deploy` as on a real cluster. Every port comes from one base, so a second cluster (another
checkout, a test session) can run beside the first. Each node is stopped, or killed outright, by the
PIDs seen below its `ray start` (process_tree.py), never by name.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from serve_app.paths import REPO_ROOT
from serve_app.process_tree import ProcessTree, stop_tree
from serve_app.processes import ExitedBeforeReady, StartedProcess, StopStep, start_process

CLUSTER_CONFIG = REPO_ROOT / "configs" / "serve_config.cluster.yaml"
APP_NAME = "recognition"
RECOGNIZER = "Recognizer_efficientnet_lite0"
# SIGTERM lets `ray start --block` take its node down; what is left goes by SIGKILL (stop_tree).
START_ATTEMPTS = 5
NODE_STOP = (StopStep(signal.SIGTERM, 20.0, whole_group=True), StopStep(signal.SIGKILL, None, True))


@dataclass(frozen=True)
class NodePorts:
    """The ports one raylet and its agents listen on."""

    node_manager: int
    object_manager: int
    metrics_export: int
    runtime_env_agent: int
    dashboard_agent_listen: int
    dashboard_agent_grpc: int
    min_worker: int
    max_worker: int

    def args(self) -> list[str]:
        return [
            f"--node-manager-port={self.node_manager}",
            f"--object-manager-port={self.object_manager}",
            f"--metrics-export-port={self.metrics_export}",
            f"--runtime-env-agent-port={self.runtime_env_agent}",
            f"--dashboard-agent-listen-port={self.dashboard_agent_listen}",
            f"--dashboard-agent-grpc-port={self.dashboard_agent_grpc}",
            f"--min-worker-port={self.min_worker}",
            f"--max-worker-port={self.max_worker}",
        ]


@dataclass(frozen=True)
class ClusterPlan:
    """Every port and folder of one local cluster, derived from `base_port` (1000 ports from it).

    base+0 GCS, +1 dashboard, +2 Ray client; node i (0 = head) +10+10i..; its workers
    +100+150i..; Serve direct ingress +600..+799; Serve's HTTP port +900, a worker's proxy +901,
    the fallback proxies +902/+903.
    """

    base_port: int
    root: Path
    cpus_per_node: int = 1

    @property
    def gcs_port(self) -> int:
        return self.base_port

    @property
    def dashboard_port(self) -> int:
        return self.base_port + 1

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def serve_port(self) -> int:
        return self.base_port + 900

    @property
    def worker_proxy_port(self) -> int:
        return self.base_port + 901

    @property
    def token_path(self) -> Path:
        return self.root / "auth_token"

    def node_ports(self, index: int) -> NodePorts:
        first = self.base_port + 10 + 10 * index
        workers = self.base_port + 100 + 150 * index
        return NodePorts(
            first, first + 1, first + 2, first + 3, first + 4, first + 5, workers, workers + 149
        )

    def env(self) -> dict[str, str]:
        """What every node and CLI client of this cluster runs with: token auth, our token, Serve's
        machine-wide ports moved into our range."""
        b = self.base_port
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(b + 600),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(b + 699),
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(b + 700),
            "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(b + 799),
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(b + 902),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(b + 903),
            # HAProxy binds its stats and metrics ports once per host: two nodes on one host would
            # fight over them. On VMs or pods each node has its own host; see docs/DEPLOYMENT.md.
            "RAY_SERVE_ENABLE_HA_PROXY": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
        }

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token_path.read_text().strip()}"}


def test_variant(plan: ClusterPlan, source: Path = CLUSTER_CONFIG) -> dict[str, Any]:
    """The cluster config trimmed for one machine: loopback HTTP on the plan's port, two fixed
    Recognizer replicas (no Prometheus here for the forecast policy), no Forecaster (it would only
    retry its Prometheus), the quality store in the plan's folder."""
    doc = yaml.safe_load(source.read_text())
    doc["http_options"] = {"host": "127.0.0.1", "port": plan.serve_port}
    # Its port is machine-wide, and the scenario speaks HTTP only.
    doc.pop("grpc_options", None)
    app = doc["applications"][0]
    args = app["args"]
    args.pop("forecaster", None)
    # Loopback only (above), as `recserve up` without keys: the keys file is the cluster's Secret.
    args.pop("auth", None)
    args["quality"]["store_dir"] = str(plan.root / "quality")
    args["ingress"]["num_cpus"] = 0.25
    for model in args["models"]:
        model.pop("autoscaling_config", None)
        model["num_replicas"] = 2
        model["num_cpus"] = 0.5
    app["deployments"] = [d for d in app["deployments"] if d["name"] != "Forecaster"]
    return doc


@dataclass
class LocalNode:
    """One `ray start --block` and every process seen below it."""

    name: str
    index: int
    started: StartedProcess
    tree: ProcessTree
    started_at: float
    attempts: int = 1

    def pids(self) -> list[int]:
        self.tree.refresh()
        return sorted(ref.pid for ref in self.tree.alive())

    def kill(self) -> int:
        """SIGKILL the raylet, its workers and agents, by PID, at once: a node lost, not stopped."""
        self.tree.refresh()
        killed = self.tree.signal_all(signal.SIGKILL)
        self.tree.wait_gone(30)
        self.started.process.poll()
        return killed

    def stop(self) -> None:
        stop_tree(self.started, NODE_STOP, self.tree)


@dataclass
class LocalCluster:
    """A head and workers started by this process; `close()` stops each by the PIDs it saw."""

    plan: ClusterPlan
    nodes: list[LocalNode] = field(default_factory=list)

    def _ray_start(self, name: str, index: int, args: list[str], env: dict[str, str]) -> LocalNode:
        ray = str(Path(sys.executable).parent / "ray")
        temp = self.plan.root / name
        temp.mkdir(parents=True, exist_ok=True)
        argv = [
            ray,
            "start",
            "--block",
            f"--num-cpus={self.plan.cpus_per_node}",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
            *self.plan.node_ports(index).args(),
            *args,
        ]
        started = start_process(
            f"ray node {name}",
            argv,
            log_path=self.plan.root / f"{name}.log",
            env={**self.plan.env(), **env},
            cwd=REPO_ROOT,
            die_with_parent=True,
        )
        node = LocalNode(name, index, started, ProcessTree(started.pid), time.monotonic())
        self.nodes.append(node)
        return node

    def _start_ready(self, start, probe, ready_check: str, timeout_s: float) -> LocalNode:
        """Start a node until it is ready, at most START_ATTEMPTS times: `ray start` gives its
        raylet a fixed 30 s to register, which a host busy with other work can miss. A failed
        try is stopped by its PIDs before the next."""
        for attempt in range(1, START_ATTEMPTS + 1):
            node = start()
            try:
                node.started.wait_ready(probe, timeout_s=timeout_s, ready_check=ready_check)
                node.attempts = attempt
                return node
            except ExitedBeforeReady:
                node.stop()
                self.nodes.remove(node)
                if attempt == START_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def start_head(self) -> LocalNode:
        """The head: GCS, dashboard, and the `recserve_state` resource the stateful deployments
        ask for (they stay on the node with the durable folder)."""
        self.plan.root.mkdir(parents=True, exist_ok=True)
        if not self.plan.token_path.exists():
            self.plan.token_path.write_text(secrets.token_hex(32))
            self.plan.token_path.chmod(0o600)
        args = [
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={self.plan.gcs_port}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.plan.dashboard_port}",
            f"--ray-client-server-port={self.plan.base_port + 2}",
            '--resources={"recserve_state": 1}',
        ]
        return self._start_ready(
            lambda: self._ray_start("head", 0, args, {}),
            lambda: self.alive_nodes(quiet=True) >= 1,
            f"dashboard {self.plan.dashboard_url} lists the head alive",
            timeout_s=180,
        )

    def start_worker(self, index: int, timeout_s: float = 180) -> LocalNode:
        """A worker joining the head with the head's token; its proxy on its own port (two
        proxies on one host)."""
        # By id: the node this one replaces may still be listed alive until the head notices.
        before = self.alive_node_ids()
        return self._start_ready(
            lambda: self._ray_start(
                f"worker{index}",
                index,
                ["--node-ip-address=127.0.0.1", f"--address=127.0.0.1:{self.plan.gcs_port}"],
                {"RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(self.plan.worker_proxy_port)},
            ),
            lambda: bool(self.alive_node_ids(quiet=True) - before),
            "the head lists a new node alive",
            timeout_s=timeout_s,
        )

    # ---- the cluster as its API reports it ------------------------------------------------------

    def api(self, path: str, timeout: float = 10) -> Any:
        r = requests.get(
            f"{self.plan.dashboard_url}{path}", headers=self.plan.auth_headers(), timeout=timeout
        )
        r.raise_for_status()
        return r.json()

    def nodes_state(self) -> list[dict]:
        return self.api("/api/v0/nodes?limit=100")["data"]["result"]["result"]

    def alive_node_ids(self, quiet: bool = False) -> set[str]:
        try:
            return {n["node_id"] for n in self.nodes_state() if n["state"] == "ALIVE"}
        except (requests.RequestException, KeyError, ValueError, OSError):
            if quiet:
                return set()
            raise

    def alive_nodes(self, quiet: bool = False) -> int:
        try:
            return sum(1 for n in self.nodes_state() if n["state"] == "ALIVE")
        except (requests.RequestException, KeyError, ValueError, OSError):
            if quiet:
                return 0
            raise

    def replicas(self, deployment: str = RECOGNIZER) -> list[dict]:
        """The live replica actors of a deployment: node id and PID of each."""
        cls = f"ServeReplica:{APP_NAME}:{deployment}"
        found = self.api(
            "/api/v0/actors?limit=1000&detail=false"
            f"&filter_keys=class_name&filter_predicates=%3D&filter_values={cls}"
        )["data"]["result"]["result"]
        return [a for a in found if a["state"] == "ALIVE"]

    def serve_status(self) -> dict:
        return self.api("/api/serve/applications/")

    def app_running(self) -> bool:
        try:
            apps = self.serve_status().get("applications", {})
        except (requests.RequestException, ValueError):
            return False
        app = apps.get(APP_NAME) or {}
        deployments = app.get("deployments", {})
        return app.get("status") == "RUNNING" and all(
            d.get("status") == "HEALTHY" for d in deployments.values()
        )

    def head_node_id(self) -> str:
        return next(n["node_id"] for n in self.nodes_state() if n["is_head_node"])

    # ---- deploying ------------------------------------------------------------------------------

    def serve_deploy(self, config: dict[str, Any]) -> None:
        """`serve deploy` of `config` (written beside the nodes' folders), as on a real cluster."""
        path = self.plan.root / "serve_config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        serve = str(Path(sys.executable).parent / "serve")
        subprocess.run(
            [serve, "deploy", str(path), "-a", self.plan.dashboard_url],
            env={**os.environ, **self.plan.env()},
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
            timeout=120,
        )

    def wait_running(self, timeout_s: float, min_nodes_with_replica: int = 0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.app_running() and (
                len({r["node_id"] for r in self.replicas()}) >= min_nodes_with_replica
            ):
                return
            time.sleep(1)
        raise TimeoutError(
            f"application not running on {min_nodes_with_replica} nodes after {timeout_s:.0f} s: "
            f"{json.dumps(self.serve_status())[:2000]}"
        )

    def close(self) -> None:
        """Stop every node this process started, workers first, each by the PIDs seen below it."""
        for node in reversed(self.nodes):
            node.stop()
