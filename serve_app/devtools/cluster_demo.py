"""`make cluster-demo`: the application on a two-node Ray cluster on this machine, and two faults.

A head and a worker (`ray start`, one CPU each, the worker joined with the head's token), the
cluster config deployed with `serve deploy`, replicas on both nodes and a right answer through each
node's proxy. Then, under ~10 requests/s: the worker node SIGKILLed (raylet, workers, agents, by
PID) and a replacement started, as a cloud or KubeRay would; then the head's Recognizer replica
SIGKILLed. Every request goes through the client retry docs/DEPLOYMENT.md documents
(`post_with_retry`); the report counts first attempts that failed and requests that failed even
after the retries.
tests/integration/test_cluster_live.py runs the same scenario and checks the report.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

from serve_app.devtools.local_cluster import ClusterPlan, LocalCluster, test_variant

MODEL = "efficientnet_lite0"
ESPRESSO = 967  # ImageNet class of scikit-image's coffee photo
# Statuses a lost replica or proxy can cause; a 4xx is the client's own and is never retried.
RETRY_STATUSES = frozenset({500, 502, 503, 504})
RETRY_BACKOFF_S = (0.2, 0.5, 1.0)


def coffee_jpeg() -> bytes:
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.coffee()).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def large_photo_jpeg() -> bytes:
    """The coffee photo at 3000x2000 with noise, as a JPEG of over 4 MiB: more than a replica's
    gRPC server takes in one message, so the Ingress must send it as an actor call
    (serving/transport.py)."""
    import numpy as np
    from PIL import Image
    from skimage import data

    pixels = np.asarray(Image.fromarray(data.coffee()).resize((3000, 2000))).astype(np.int16)
    noise = np.random.default_rng(0).normal(0, 12, pixels.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=97)
    return buf.getvalue()


@dataclass
class Outcome:
    attempts: int
    status: int | None  # None: no HTTP answer at all
    first_status: int | None


def post_with_retry(url: str, body: bytes, timeout_s: float = 30) -> Outcome:
    """The documented client retry: a connection error or 500/502/503/504 is tried again after
    0.2, 0.5 and 1 s (predictions are idempotent; a lost node or replica fails only the requests
    it held)."""
    first: int | None = None
    status: int | None = None
    for attempt in range(len(RETRY_BACKOFF_S) + 1):
        try:
            status = requests.post(
                url, data=body, headers={"Content-Type": "image/jpeg"}, timeout=timeout_s
            ).status_code
        except requests.RequestException:
            status = None
        if attempt == 0:
            first = status
        if status is not None and status not in RETRY_STATUSES:
            return Outcome(attempt + 1, status, first)
        if attempt < len(RETRY_BACKOFF_S):
            time.sleep(RETRY_BACKOFF_S[attempt])
    return Outcome(len(RETRY_BACKOFF_S) + 1, status, first)


@dataclass
class LoadResult:
    sent: int = 0
    first_attempt_failed: int = 0
    failed_after_retry: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    first_statuses: dict[str, int] = field(default_factory=dict)  # "None": no HTTP answer

    @property
    def first_attempt_failure_ratio(self) -> float:
        return self.first_attempt_failed / self.sent if self.sent else 1.0


def steady_load(url: str, body: bytes, rps: float, duration_s: float) -> LoadResult:
    """`rps` requests a second, each on its own thread so a slow one never holds the pace back,
    for `duration_s`; waits for the last answer."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def one() -> None:
        outcome = post_with_retry(url, body)
        with lock:
            outcomes.append(outcome)

    threads = []
    start = time.monotonic()
    for i in range(int(rps * duration_s)):
        delay = start + i / rps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t = threading.Thread(target=one, daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(timeout=120)
    result = LoadResult(sent=len(threads))
    for o in outcomes:
        result.first_attempt_failed += o.first_status != 200
        result.failed_after_retry += o.status != 200
        for counts, status in (
            (result.statuses, o.status),
            (result.first_statuses, o.first_status),
        ):
            counts[str(status)] = counts.get(str(status), 0) + 1
    result.failed_after_retry += result.sent - len(outcomes)  # never answered at all
    return result


def wait_answering(url: str, timeout_s: float = 180) -> None:
    """Until `url` answers 200: a node's proxy starts listening a while after the application
    reports RUNNING, longer on a busy host."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f} s")
        time.sleep(1)


def top1(url: str, body: bytes) -> int | None:
    r = requests.post(url, data=body, headers={"Content-Type": "image/jpeg"}, timeout=60)
    if r.status_code != 200:
        return None
    return r.json()["predictions"][0]["top_k"][0]["class_id"]


def under_load(url: str, body: bytes, rps: float, duration_s: float, fault, after_s: float):
    """Run `fault()` `after_s` into a steady load; the load's result and what `fault` returned."""
    box: dict = {}
    loader = threading.Thread(
        target=lambda: box.setdefault("load", steady_load(url, body, rps, duration_s))
    )
    loader.start()
    time.sleep(after_s)
    box["fault"] = fault()
    loader.join()
    return box["load"], box["fault"]


def run_scenario(
    plan: ClusterPlan, rps: float = 10, load_s: float = 20, runtime: str | None = None
) -> dict:
    """The whole scenario; the report as a dict (its figures are what the test checks).

    `runtime` overrides the model's (the test passes `torch`: no ONNX export and check at each
    replica start, so a replica comes up in half the time on a loaded 2-core machine)."""
    cluster = LocalCluster(plan)
    body = coffee_jpeg()
    head_url = f"http://127.0.0.1:{plan.serve_port}/v1/models/{MODEL}/predict"
    worker_url = f"http://127.0.0.1:{plan.worker_proxy_port}/v1/models/{MODEL}/predict"
    report: dict = {
        "rps": rps,
        "load_s": load_s,
        "base_port": plan.base_port,
        # start-up times below depend on what else the host runs: its load, for the reader
        "host_cpus": os.cpu_count(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 1),
    }
    try:
        t = time.monotonic()
        cluster.start_head()
        report["head_start_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        worker = cluster.start_worker(1)
        report["worker_join_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        config = test_variant(plan)
        if runtime:
            for model in config["applications"][0]["args"]["models"]:
                model["runtime"] = runtime
        cluster.serve_deploy(config)
        cluster.wait_running(600, min_nodes_with_replica=2)
        report["deploy_to_running_s"] = round(time.monotonic() - t, 1)
        replicas = cluster.replicas()
        head_id = cluster.head_node_id()
        report["replica_nodes"] = sorted(
            "head" if r["node_id"] == head_id else "worker" for r in replicas
        )
        report["ingress_nodes"] = sorted(
            "head" if r["node_id"] == head_id else "worker" for r in cluster.replicas("Ingress")
        )
        for port in (plan.serve_port, plan.worker_proxy_port):
            wait_answering(f"http://127.0.0.1:{port}/healthz")
        report["top1_via_head_proxy"] = top1(head_url, body)
        report["top1_via_worker_proxy"] = top1(worker_url, body)
        large = large_photo_jpeg()
        report["large_photo"] = {
            "bytes": len(large),
            "top1_via_head_proxy": top1(head_url, large),
            "top1_via_worker_proxy": top1(worker_url, large),
        }

        # The worker node lost: its replica and its proxy go; the head's answers meanwhile.
        load, killed = under_load(head_url, body, rps, load_s, worker.kill, after_s=load_s / 4)
        report["worker_kill"] = {"processes_killed": killed, **asdict(load)}
        # A replacement node, as the Ray autoscaler or KubeRay would start: the controller places
        # the pending replica on it (one per node).
        t = time.monotonic()
        cluster.start_worker(2)
        report["replacement_join_s"] = round(time.monotonic() - t, 1)
        cluster.wait_running(600, min_nodes_with_replica=2)
        report["replacement_join_to_replica_running_s"] = round(time.monotonic() - t, 1)
        report["top1_after_worker_kill"] = top1(head_url, body)

        # The head's replica lost (its process SIGKILLed): the controller starts another.
        victim = next(r for r in cluster.replicas() if r["node_id"] == head_id)

        def kill_replica() -> int:
            os.kill(victim["pid"], signal.SIGKILL)
            return victim["pid"]

        load, pid = under_load(head_url, body, rps, load_s, kill_replica, after_s=load_s / 4)
        t = time.monotonic()
        cluster.wait_running(600, min_nodes_with_replica=2)
        report["replica_kill"] = {
            "pid": pid,
            "replaced": victim["actor_id"] not in {r["actor_id"] for r in cluster.replicas()},
            **asdict(load),
        }
        report["replica_kill_to_running_s"] = round(time.monotonic() - t, 1)
        report["top1_at_end"] = top1(head_url, body)
    finally:
        cluster.close()
        report["processes_left_running"] = sum(len(n.tree.alive()) for n in cluster.nodes)
        report["node_start_attempts"] = {n.name: n.attempts for n in cluster.nodes}
        report["load_average_1m_at_end"] = round(os.getloadavg()[0], 1)
    return report


def summary(report: dict) -> str:
    lines = [
        f"head up in {report.get('head_start_s')} s, worker joined in "
        f"{report.get('worker_join_s')} s, deploy to RUNNING in "
        f"{report.get('deploy_to_running_s')} s",
        f"Recognizer replicas on: {report.get('replica_nodes')}; top-1 via head/worker proxy: "
        f"{report.get('top1_via_head_proxy')}/{report.get('top1_via_worker_proxy')} "
        f"(espresso = {ESPRESSO})",
    ]
    if "large_photo" in report:
        big = report["large_photo"]
        lines.append(
            f"a {big['bytes']}-byte photo: top-1 via head/worker proxy "
            f"{big['top1_via_head_proxy']}/{big['top1_via_worker_proxy']}"
        )
    for key, what in (("worker_kill", "worker node SIGKILLed"), ("replica_kill", "head replica")):
        if key in report:
            r = report[key]
            share = 100 * r["first_attempt_failed"] / max(r["sent"], 1)
            lines.append(
                f"{what}: {r['sent']} requests at {report['rps']}/s, first attempts failed "
                f"{r['first_attempt_failed']} ({share:.1f} %),"
                f" failed after retry {r['failed_after_retry']}; first statuses "
                f"{r['first_statuses']}"
            )
    if "replacement_join_to_replica_running_s" in report:
        lines.append(
            f"replacement node joined in {report['replacement_join_s']} s, its replica running "
            f"{report['replacement_join_to_replica_running_s']} s after its start"
        )
    lines.append(f"top-1 at the end: {report.get('top1_at_end')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-port", type=int, default=35000, help="1000 ports from here")
    parser.add_argument("--root", default="/tmp/recserve-cluster", help="temp folders, token")
    parser.add_argument("--rps", type=float, default=10)
    parser.add_argument("--load-s", type=float, default=20)
    parser.add_argument("--out", help="write the report here as JSON")
    args = parser.parse_args(argv)
    report = run_scenario(ClusterPlan(args.base_port, Path(args.root)), args.rps, args.load_s)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(summary(report))
    ok = report.get("top1_at_end") == ESPRESSO and all(
        report[k]["failed_after_retry"] == 0 for k in ("worker_kill", "replica_kill")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
