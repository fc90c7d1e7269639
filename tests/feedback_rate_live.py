"""A key's feedback rate holds across Ingress replicas (not in CI: a Serve of its own with API
keys and two Ingress replicas behind HAProxy).

One `serve run` of our application with a keys file, `auth.feedback_rate_per_s` 0.01 (no token
comes back during the check) and `auth.feedback_burst` 5, and two Ingress replicas. One predict,
then a flood of feedback for it from the same key, each on a new connection, so HAProxy spreads
them over both replicas (its stats say how many each one got). Each replica's own bucket admits 5;
the QualityMonitor's, which every replica forwards to, admits 5 in all.

    .venv/bin/python -m tests.feedback_rate_live --out docs/security/feedback_rate_live.json
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import requests

from serve_app.api_keys_cli import add_key
from serve_app.devtools import bench
from serve_app.devtools.loadgen import photos_jpeg

PREDICT = f"{bench.BASE_URL}/v1/models/efficientnet_lite0/predict"
FEEDBACK = f"{bench.BASE_URL}/v1/feedback"
STATS_PORT = 28404
BURST = 5


def ingress_sessions() -> dict[str, int]:
    """Sessions HAProxy sent to each server of its backends (the Ingress replicas), by name."""
    text = requests.get(f"http://127.0.0.1:{STATS_PORT}/stats;csv", timeout=10).text
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return {
        f"{r['pxname']}/{r['svname']}": int(r["stot"] or 0)
        for r in rows
        if r["svname"] not in ("FRONTEND", "BACKEND")
    }


def check(sends: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="rs-feedback-rate-"))
    keys = folder / "keys.json"
    token = add_key(keys, ["predict", "feedback"], key_id="flooder")
    config = bench.serve_config(
        {
            "proxy": "haproxy",
            "replicas": 1,
            "ingress_replicas": 2,
            "max_batch_size": 16,
            "batch_wait_timeout_s": 0.002,
        }
    )
    args = config["applications"][0]["args"]
    args["quality"]["store_dir"] = str(folder / "quality")
    args["auth"] = {"keys_file": str(keys), "feedback_rate_per_s": 0.01, "feedback_burst": BURST}
    headers = {"Authorization": f"Bearer {token}"}
    env = {"RAY_SERVE_HAPROXY_STATS_PORT": str(STATS_PORT)}
    with bench.ServeProcess(config, haproxy=True, env=env):
        answer = requests.post(
            PREDICT,
            data=photos_jpeg()[0],
            headers={**headers, "Content-Type": "image/jpeg"},
            timeout=60,
        )
        answer.raise_for_status()
        request_id = answer.json()["request_id"]
        before = ingress_sessions()
        statuses = Counter()
        for _ in range(sends):
            reply = requests.post(
                FEEDBACK,
                json={"request_id": request_id, "label": 0},
                headers={**headers, "Connection": "close"},
                timeout=60,
            )
            statuses[reply.status_code] += 1
        after = ingress_sessions()
    per_server = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}
    admitted = sends - statuses[429]
    return {
        "feedback_burst": BURST,
        "feedback_rate_per_s": 0.01,
        "ingress_replicas": 2,
        "feedback_sent": sends,
        "statuses": dict(sorted(statuses.items())),
        "haproxy_sessions_per_server": per_server,
        "admitted": admitted,
        "held_across_replicas": admitted == BURST and len(per_server) >= 2,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sends", type=int, default=30)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    result = {**bench.run_header("tests.feedback_rate_live", argv), **check(args.sends)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["held_across_replicas"] else 1


if __name__ == "__main__":
    sys.exit(main())
