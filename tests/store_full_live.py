"""A full disk under the quality store of a running service, checked from outside (not in CI).

Needs a service whose `quality.store_dir` lies on a small file system of its own (a tmpfs, say:
`mount -t tmpfs -o size=16m tmpfs <fs>`, then `store_dir: <fs>/quality`), and fills that file
system with a file: predictions must still be answered 200, feedback 503 with Retry-After and the
problem named, and once the file is removed, feedback joins again and, RECOVER_AFTER_S later, the
quality snapshot reports the store writable.

`.venv/bin/python -m tests.store_full_live --url http://127.0.0.1:8200 --fs <fs> --out <file.json>`
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import requests

from serve_app.devtools.loadgen import photos_jpeg
from serve_app.quality.store_health import RECOVER_AFTER_S

MODEL = "efficientnet_lite0"
TIMEOUT_S = 60


def run(url: str, fs: Path, predictions: int = 30) -> dict:
    """Predict and give feedback before, while and after the file system is full."""
    photo = photos_jpeg()[0]

    def predict() -> tuple[int, str | None]:
        r = requests.post(
            f"{url}/v1/models/{MODEL}/predict",
            data=photo,
            headers={"Content-Type": "image/jpeg"},
            timeout=TIMEOUT_S,
        )
        return r.status_code, r.json().get("request_id")

    def feedback(body: dict) -> dict:
        r = requests.post(f"{url}/v1/feedback", json=body, timeout=TIMEOUT_S)
        retry_after = r.headers.get("Retry-After")
        return {"http": r.status_code, "retry_after": retry_after, "body": r.json()}

    def store() -> dict:
        return requests.get(f"{url}/v1/models/{MODEL}/quality", timeout=TIMEOUT_S).json()["store"]

    out: dict = {}
    status, rid = predict()
    time.sleep(1)  # predictions reach the store after the answer
    out["before"] = {"predict": status, "feedback": feedback({"request_id": rid, "label": 281})}
    filler = fs / "filler"
    with filler.open("wb") as f:  # until the file system refuses
        try:
            while True:
                f.write(bytes(1 << 16))
                f.flush()
        except OSError:
            pass
    answers = [predict() for _ in range(predictions)]
    time.sleep(1)
    items = [{"request_id": r, "label": 281} for _, r in answers]
    out["full"] = {
        "free_bytes": shutil.disk_usage(fs).free,
        "predict": [s for s, _ in answers],
        "feedback": feedback(items[0]),
        "batch_feedback": feedback({"items": items}),
        "store": store(),
    }
    filler.unlink()
    status, rid = predict()
    time.sleep(1)
    out["freed"] = {
        "predict": status,
        "feedback": feedback({"request_id": rid, "label": 281}),
        "store": store(),
    }
    time.sleep(RECOVER_AFTER_S + 1)
    status, rid = predict()
    time.sleep(1)
    out["freed_later"] = {
        "predict": status,
        "feedback": feedback({"request_id": rid, "label": 281}),
        "store": store(),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--fs", type=Path, required=True, help="the store's own file system")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    report = run(args.url.rstrip("/"), args.fs)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
