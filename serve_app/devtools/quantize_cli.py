"""`recserve quantize --model NAME`: build (or read from the cache) a model's INT8 graph and
print its size, its in-process speed beside fp32 ONNX Runtime and its agreement with fp32.

Speed: the two graphs run the same batch with the same threads, one round each in turn, the
order swapped every round; the figures are medians over rounds, which keeps a noisy shared host
from favouring one side. Agreement: top-1 agreement and top-5 overlap with the fp32 graph on crops,
flips and scales of shipped photos that calibration never saw (serving/photos.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from serve_app.config import load_config
from serve_app.paths import CONFIGS_DIR
from serve_app.serving.imaging import normalize_batch
from serve_app.serving.models import load_model
from serve_app.serving.photos import CALIBRATION_PHOTOS, EVALUATION_PHOTOS, evaluation_crops
from serve_app.serving.quantize import DEFAULT_SETTINGS, int8_path, quantize_int8
from serve_app.serving.runtimes import OnnxRuntime, Runtime, export_onnx
from serve_app.serving.shadow import compare


def agreement(fp32: Runtime, int8: Runtime, batch: np.ndarray, chunk: int = 16) -> dict:
    """Top-1 agreement and top-5 overlap of int8 with fp32 over every row of `batch`."""
    ids = []
    for rt in (fp32, int8):
        probs = np.concatenate([rt.run(batch[i : i + chunk]) for i in range(0, len(batch), chunk)])
        ids.append(np.argsort(-probs, axis=1, kind="stable")[:, :5].tolist())
    c = compare(ids[0], ids[1])
    return {
        "inputs": c.images,
        "top1_agreement": c.top1_agreements / c.images,
        "top5_overlap": c.top5_overlap / c.images,
    }


def interleaved_speed(
    runtimes: dict[str, Runtime], batch: np.ndarray, rounds: int, runs_per_round: int
) -> dict:
    """Images/s of each runtime per round, measured in turn (order swapped each round)."""
    for rt in runtimes.values():
        rt.run(batch)  # warm-up outside the timing
    per_round: dict[str, list[float]] = {name: [] for name in runtimes}
    names = list(runtimes)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            started = time.perf_counter()
            for _ in range(runs_per_round):
                runtimes[name].run(batch)
            per_round[name].append(len(batch) * runs_per_round / (time.perf_counter() - started))
    ratios = [i / f for f, i in zip(per_round["fp32"], per_round["int8"], strict=True)]
    return {
        "images_per_s_median": {n: statistics.median(v) for n, v in per_round.items()},
        "images_per_s_rounds": per_round,
        "speedup_median_of_rounds": statistics.median(ratios),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recserve quantize", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--config", default=str(CONFIGS_DIR / "serve_config.yaml"))
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads, both graphs")
    parser.add_argument("--batch", type=int, default=8, help="images per timed run")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--runs-per-round", type=int, default=4)
    parser.add_argument("--per-photo", type=int, default=40, help="evaluation crops per photo")
    parser.add_argument("--out", help="folder to write quantize.json into")
    args = parser.parse_args(argv)

    cfg = load_config(args.config).model(args.model)
    loaded = load_model(cfg)
    fp32_path = export_onnx(loaded, cfg.architecture)
    cached = int8_path(fp32_path, DEFAULT_SETTINGS).is_file()
    started = time.perf_counter()
    int8_file = quantize_int8(fp32_path, loaded.preprocess)
    quantize_s = time.perf_counter() - started
    fp32 = OnnxRuntime(fp32_path, args.threads)
    int8 = OnnxRuntime(int8_file, args.threads, "int8")
    crops = evaluation_crops(loaded.preprocess, args.per_photo)
    batch = normalize_batch(crops, loaded.preprocess)
    agree = agreement(fp32, int8, batch)
    load_before = os.getloadavg()
    speed = interleaved_speed(
        {"fp32": fp32, "int8": int8}, batch[: args.batch], args.rounds, args.runs_per_round
    )
    result = {
        "command": "recserve quantize " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": args.model,
        "settings": DEFAULT_SETTINGS.__dict__ | {"extra_excluded": []},
        "files": {
            "fp32": {"path": fp32_path.name, "mb": fp32_path.stat().st_size / 1e6},
            "int8": {"path": int8_file.name, "mb": int8_file.stat().st_size / 1e6},
        },
        "quantize_s": quantize_s,
        "quantize_cached": cached,
        "evaluation": {
            **agree,
            "distinct_photos": len(EVALUATION_PHOTOS),
            "photos": [name for _, name in EVALUATION_PHOTOS],
            "calibration_photos": [name for _, name in CALIBRATION_PHOTOS],
        },
        "speed": {
            "threads": args.threads,
            "batch": args.batch,
            "rounds": args.rounds,
            "runs_per_round": args.runs_per_round,
            **speed,
            "cpu_count": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
    }
    med, files = speed["images_per_s_median"], result["files"]
    print(f"model {args.model}: {len(crops)} inputs from {len(EVALUATION_PHOTOS)} photos")
    print(f"{'':14}{'fp32 ORT':>12}{'int8 ORT':>12}")
    print(f"{'size MB':14}{files['fp32']['mb']:>12.2f}{files['int8']['mb']:>12.2f}")
    print(f"{'images/s':14}{med['fp32']:>12.1f}{med['int8']:>12.1f}")
    print(
        f"speed-up {speed['speedup_median_of_rounds']:.2f}x (median of {args.rounds} interleaved "
        f"rounds, {args.threads} thread(s), batch {args.batch}; load average "
        f"{load_before[0]:.1f} on {os.cpu_count()} CPUs)"
    )
    print(
        f"top-1 agreement {agree['top1_agreement']:.1%}, top-5 overlap "
        f"{agree['top5_overlap']:.1%} on {agree['inputs']} inputs"
    )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "quantize.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out / 'quantize.json'}")
    return 0
