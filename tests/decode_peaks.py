"""Peak resident memory of decoding each hostile image, measured in this process.

`.venv/bin/python -m tests.decode_peaks --out docs/reliability/decode_peaks.json` decodes the
corpus and each mode at the largest size the default limits let through, and writes the outcome and
peak of each (the figures docs/RELIABILITY.md quotes). The unit tests use `peak_rss_added` too.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
from pathlib import Path

import numpy as np
from PIL import Image

from serve_app.config import LimitsConfig
from serve_app.errors import ServiceError
from tests.hostile_images import CROP, at_the_limits, corpus


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def peak_rss_added(fn) -> tuple[object, int]:
    """fn()'s result (or the exception it raised) and the peak resident bytes it added to this
    process: freed memory is handed back first (malloc_trim), then the kernel's high-water mark is
    reset (clear_refs 5) and read after the call (VmHWM). Linux only."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    try:
        result = fn()
    except Exception as exc:  # the caller judges it
        result = exc
    return result, max(0, _status_kb("VmHWM") - before) * 1024


def outcome(result) -> object:
    """CROP for a crop, the status of a ServiceError, else the unexpected result itself."""
    if isinstance(result, np.ndarray):
        return CROP
    if isinstance(result, ServiceError):
        return result.status
    return result


def main() -> None:
    """Decode every case with the default limits: write the outcome and peak of each."""
    from serve_app.serving.imaging import decode_and_crop
    from serve_app.serving.models import LITE_PREPROCESS

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    limits, spec = LimitsConfig(), LITE_PREPROCESS
    rows = []
    for case in corpus(limits, spec) + at_the_limits(limits, spec):
        result, peak = peak_rss_added(lambda c=case: decode_and_crop(c.data, spec, limits))
        rows.append(
            {
                "case": case.name,
                "bytes": len(case.data),
                "outcome": str(outcome(result)),
                "peak_rss_added_bytes": peak,
            }
        )
    worst = max(rows, key=lambda r: r["peak_rss_added_bytes"])
    report = {
        "command": "python -m tests.decode_peaks --out " + str(args.out),
        "python": platform.python_version(),
        "pillow": Image.__version__,
        "limits": limits.model_dump(
            include={
                "max_image_pixels",
                "max_aspect_ratio",
                "max_decoded_bytes",
                "max_request_decoded_bytes",
            }
        ),
        "worst_case": worst,
        "cases": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    peak_mib = worst["peak_rss_added_bytes"] / 2**20
    print(f"{len(rows)} cases; worst peak {peak_mib:.1f} MiB ({worst['case']})")


if __name__ == "__main__":
    main()
