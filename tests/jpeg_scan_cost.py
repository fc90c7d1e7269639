"""What a JPEG's scans cost to decode, and what counting them costs, measured in this process.

`.venv/bin/python -m tests.jpeg_scan_cost --out docs/reliability/jpeg_scans.json` builds progressive
JPEGs of one flat 4096 x 4096 image with more and more scans (tests/hostile_images.jpeg_with_scans),
and writes for each: its bytes, the outcome under the default limits (`read_header`), the CPU time
of that check, and the CPU time Pillow takes to decode it with no scan limit (what the limit saves).
The figures docs/RELIABILITY.md quotes ("Hostile images") come from that file.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from pathlib import Path

from PIL import Image

from serve_app.config import LimitsConfig
from serve_app.errors import ServiceError
from serve_app.serving.imaging import read_header
from serve_app.serving.models import LITE_PREPROCESS as SPEC
from tests.hostile_images import jpeg_with_scans

SIDE = 4096
SCANS = (10, 64, 65, 500, 2000)


def _cpu_s(fn) -> tuple[object, float]:
    start = time.process_time()
    try:
        result = fn()
    except ServiceError as err:
        result = err
    return result, time.process_time() - start


def _decode(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (SPEC.resize, SPEC.resize))  # as the service decodes
        img.load()


def measure() -> dict:
    """One row per scan count (see the module docstring)."""
    limits = LimitsConfig()
    flat = Image.new("RGB", (SIDE, SIDE), (90, 40, 160))
    rows = []
    for scans in SCANS:
        data = jpeg_with_scans(flat, scans)
        checked, check_s = _cpu_s(lambda data=data: read_header(data, SPEC, limits))
        _, decode_s = _cpu_s(lambda data=data: _decode(data))
        rows.append(
            {
                "scans": scans,
                "bytes": len(data),
                "outcome": checked.status if isinstance(checked, ServiceError) else "accepted",
                "check_cpu_ms": round(check_s * 1000, 2),
                "decode_cpu_s_without_limit": round(decode_s, 3),
            }
        )
        print(rows[-1], flush=True)
    return {
        "image": f"{SIDE}x{SIDE} RGB, flat colour, progressive 4:2:0 (Pillow), last scan repeated",
        "max_jpeg_scans": limits.max_jpeg_scans,
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    report = measure()
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
