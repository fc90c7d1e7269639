"""Quality data survives the QualityMonitor: its replica killed, then the deployment redeployed.

The session's quality store is a folder of its own (tests/integration/ports.py). The replica is
killed with ``ray.kill`` from a short driver process that joins the session's Ray cluster (its GCS
address read from the session folder, token auth), the way an operator's script would; Serve's
controller then starts a new
replica, which must answer the same quality snapshot and join feedback for earlier predictions.
The redeploy is a real config update through the Ray dashboard's REST API (what `serve deploy`
sends): the same application with one QualityMonitor option changed, so Serve replaces that
deployment's replica and leaves the models' replicas running.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from tests.integration.monitoring_fixtures import wait_until

MODEL = "efficientnet_lite0"
VERSION = "1"
APP = "recognition"
RESTART_TIMEOUT_S = 90  # the controller notices the dead replica, then starts and checks a new one

REPLICAS_SCRIPT = """
import json, sys
import ray
ray.init(address=sys.argv[2], log_to_driver=False, logging_level="ERROR")
names = sorted(
    a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
    if "#QualityMonitor#" in a["name"]
)
if sys.argv[1] == "kill":
    for name in names:
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
print(json.dumps(names))
"""


def gcs_address(ray_tmpdir: Path) -> str:
    """This session's GCS, named explicitly: "auto" can find another session's Ray on the host."""
    session = ray_tmpdir / "ray" / "session_latest"
    (port_file,) = session.glob("gcs_server_port_*")
    sd = json.loads((ray_tmpdir / "ray" / "prom_metrics_service_discovery.json").read_text())
    node_ip = sd[0]["targets"][0].split(":")[0]
    return f"{node_ip}:{port_file.read_text().strip()}"


def monitor_replicas(ray_tmpdir: Path, action: str = "list") -> list[str]:
    """Names of the QualityMonitor's replica actors (``kill``: and kill them)."""
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmpdir), "RAY_AUTH_MODE": "token"}
    done = subprocess.run(
        [sys.executable, "-c", REPLICAS_SCRIPT, action, gcs_address(ray_tmpdir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def snapshot(service_url: str) -> dict | None:
    """The quality endpoint's answer, or None while it cannot answer (replica restarting)."""
    try:
        answer = requests.get(f"{service_url}/v1/models/{MODEL}/quality", timeout=10)
    except requests.RequestException:
        return None
    return answer.json() if answer.status_code == 200 else None


def predict(service_url: str, image: bytes) -> tuple[str, int]:
    """(request id, top-1 class id) of one prediction."""
    answer = requests.post(
        f"{service_url}/v1/models/{MODEL}/predict",
        files={"file": ("image.jpg", image, "image/jpeg")},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return body["request_id"], body["predictions"][0]["top_k"][0]["class_id"]


def feedback(service_url: str, request_id: str, label: int) -> requests.Response:
    return requests.post(
        f"{service_url}/v1/feedback", json={"request_id": request_id, "label": label}, timeout=30
    )


def labelled(state: dict) -> int:
    return state["versions"][VERSION]["windows"]["last_100"]["labelled"]


def labelled_after_one_more(before: dict) -> int:
    """The count window's labelled count after one more label: it holds at most 100."""
    return min(labelled(before) + 1, 100)


def stored_snapshot(service_url: str, predictions: int) -> dict:
    """The snapshot once the ingress' prediction sender has delivered ``predictions`` more."""
    return wait_until(
        lambda: (
            (s := snapshot(service_url))
            and s["versions"].get(VERSION, {}).get("predictions_recorded", 0) >= predictions
            and s
        ),
        30,
        f"{predictions} predictions recorded",
    )


def back_with_the_same_state(service_url: str, before: dict, old: list[str], ray_tmpdir: Path):
    """Wait for a new replica answering, then compare its snapshot with ``before``."""
    new = wait_until(
        lambda: (names := monitor_replicas(ray_tmpdir)) and set(names).isdisjoint(old) and names,
        RESTART_TIMEOUT_S,
        "a new QualityMonitor replica",
        every=3,
    )
    after = wait_until(lambda: snapshot(service_url), RESTART_TIMEOUT_S, "the quality endpoint")
    assert len(new) == 1
    assert after["versions"] == before["versions"]  # recorded, windows, confidence, drift
    assert after["feedback"] == before["feedback"]
    assert after["store"] == before["store"]
    return after


@pytest.fixture(scope="module")
def recorded(service_url, ray_tmpdir, cat_jpeg, coffee_jpeg) -> dict:
    """Three predictions, one of them labelled; the snapshot that shows them."""
    start = snapshot(service_url) or {"versions": {}}
    already = start["versions"].get(VERSION, {}).get("predictions_recorded", 0)
    preds = [predict(service_url, img) for img in (cat_jpeg, coffee_jpeg, coffee_jpeg)]
    stored_snapshot(service_url, already + 3)
    assert feedback(service_url, preds[0][0], preds[0][1]).status_code == 200
    before = wait_until(lambda: snapshot(service_url), 30, "quality")
    # this session's service answers (its store is in the session's folder), not another on the port
    assert before["store"]["location"].startswith(str(ray_tmpdir)), before["store"]
    return {"preds": preds, "before": before}


def test_a_killed_quality_monitor_comes_back_with_its_data(service_url, ray_tmpdir, recorded):
    before = recorded["before"]
    old = monitor_replicas(ray_tmpdir, "kill")
    assert len(old) == 1
    back_with_the_same_state(service_url, before, old, ray_tmpdir)

    # feedback for a prediction made before the restart joins, with its own prediction
    request_id, predicted = recorded["preds"][1]
    assert feedback(service_url, request_id, predicted).status_code == 200
    after = snapshot(service_url)
    assert after is not None
    assert labelled(after) == labelled_after_one_more(before)
    assert after["feedback"]["joined"] == before["feedback"]["joined"] + 1


def test_a_redeployed_quality_monitor_keeps_its_data(service_url, ray_tmpdir, recorded):
    before = wait_until(lambda: snapshot(service_url), 30, "quality")
    old = monitor_replicas(ray_tmpdir)
    config = yaml.safe_load((ray_tmpdir / "serve_config.yaml").read_text())
    app = config["applications"][0]
    # one option of the QualityMonitor only: Serve replaces its replica, nothing else
    app["deployments"] = [{"name": "QualityMonitor", "ray_actor_options": {"num_cpus": 0.001}}]
    log = re.sub(r"\x1b\[[0-9;]*m", "", (ray_tmpdir / "serve_run.log").read_text(errors="replace"))
    dashboard = re.search(r"View the dashboard at (http://[\d.]+:\d+)", log)
    assert dashboard, "serve run did not print the Ray dashboard address"
    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    answer = requests.put(
        f"{dashboard.group(1)}/api/serve/applications/",
        json=config,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    back_with_the_same_state(service_url, before, old, ray_tmpdir)

    # the last unlabelled prediction from before both restarts still joins
    request_id, predicted = recorded["preds"][2]
    assert feedback(service_url, request_id, predicted).status_code == 200
    after = snapshot(service_url)
    assert after is not None and labelled(after) == labelled_after_one_more(before)
