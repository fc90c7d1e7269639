"""A prediction answered just before Serve stops is in the quality store after a restart (not in
CI: two starts of Serve).

One `serve run` of our application with `quality.record_flush_interval_s` far longer than a stop
takes (120 s by default) and the quality store in a fresh folder: one single-image predict, then
the stop at once (SIGINT to `serve run`, as Ctrl-C or the launcher's stop), then a second start on
the same store and its quality snapshot. Only the Ingress's destructor (`Ingress.__del__`, which
Serve awaits once the replica has drained) can have sent that prediction in time: with the
interval as long as this, the store holds it or not by that alone.

    .venv/bin/python -m tests.ingress_stop_records --proxy python \
        --out docs/reliability/ingress_stop_records/with_destructor.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import requests

from serve_app.devtools import bench
from serve_app.devtools.loadgen import photos_jpeg

PREDICT = f"{bench.BASE_URL}/v1/models/efficientnet_lite0/predict"
QUALITY = f"{bench.BASE_URL}/v1/models/efficientnet_lite0/quality"


def check(proxy: str, interval_s: float) -> dict:
    store = tempfile.mkdtemp(prefix="rs-stop-records-")
    config = bench.serve_config(
        {
            "proxy": proxy,
            "replicas": 1,
            "ingress_replicas": 1,
            "max_batch_size": 16,
            "batch_wait_timeout_s": 0.002,
        }
    )
    config["applications"][0]["args"]["quality"].update(
        {
            "store_dir": store,
            "record_flush_interval_s": interval_s,
            "feedback_grace_s": 2 * interval_s,
        }
    )
    haproxy = proxy == "haproxy"
    try:
        with bench.ServeProcess(config, haproxy=haproxy):
            answer = requests.post(
                PREDICT, data=photos_jpeg()[0], headers={"Content-Type": "image/jpeg"}, timeout=60
            )
            stop_started = time.monotonic()
        stop_s = time.monotonic() - stop_started
        with bench.ServeProcess(config, haproxy=haproxy):
            stored = requests.get(QUALITY, timeout=60).json()["store"]
    finally:
        shutil.rmtree(store, ignore_errors=True)
    return {
        "proxy": proxy,
        "record_flush_interval_s": interval_s,
        "predict_status": answer.status_code,
        "request_id": answer.json().get("request_id"),
        "stop_s": round(stop_s, 1),
        "stored_after_restart": {k: stored[k] for k in ("requests", "predictions")},
        "kept": stored["requests"] == 1,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--proxy", choices=["python", "haproxy"], default="python")
    p.add_argument("--interval-s", type=float, default=120.0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    result = {
        **bench.run_header("tests.ingress_stop_records", argv),
        **check(args.proxy, args.interval_s),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["kept"] else 1


if __name__ == "__main__":
    sys.exit(main())
