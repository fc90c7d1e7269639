"""`python -m serve_app.devtools.bench --device cuda`: the GPU runtime in-process, batch 1..256.

Each runtime gets the reference photos' crops, tiled to the batch size, through `Runtime.run` (host
batch in, probabilities back on the host: what a replica's inference thread does), timed per call
after warm-up. Side by side in one run:

- `cuda_graphs_fp16` / `cuda_graphs_fp32`: gpu_runtime.py as `runtime: auto` serves it, uint8 crops;
- `cuda_eager_fp16`: the same without graphs (`runtime: torch`);
- `host_float32_fp16`: runtimes.TorchRuntime on CUDA with a float32 batch normalised on the host,
  the path the first H200 measurement timed;
- `cuda_graphs_fp16_model_only`: the fp16 graph replay alone, no copies: the limit the runtime is
  held against.

Writes DIR/results.json, DIR/results.md and DIR/gpu_profile.csv; `--update-profile` also rewrites
lab/profiles/gpu.csv. `python -m serve_app.devtools.bench_gpu --profile-from DIR/results.json`
writes that profile later, from a committed run, on any machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from serve_app.devtools.profiles import update_simulator_profile, write_profile
from serve_app.paths import REPO_ROOT

GPU_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GPU_PROFILE = REPO_ROOT / "lab" / "profiles" / "gpu.csv"
PROFILE_RUNTIME = "cuda_graphs_fp16"
WARMUP_CALLS = 5
# The goals on an H200-class GPU, checked in results.json (not in tests: speed is measured).
GOAL_BATCH1_MS = 1.5
GOAL_BATCH256_IMAGES_PER_S = 18_000
GOAL_SHARE_OF_MODEL_ONLY = 0.85
NO_CUDA_EXIT = 2


def calls_for(batch_size: int) -> int:
    """Timed calls per batch size: ~1500 images, at least 10 calls."""
    return max(10, 1500 // batch_size)


def time_calls(fn: Callable[[], object], calls: int, warmup: int = WARMUP_CALLS) -> list[float]:
    """Seconds of each of `calls` calls of fn() after `warmup` untimed ones; fn must wait for the
    device itself."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summarise(times: list[float], batch_size: int) -> dict:
    mean = statistics.fmean(times)
    return {
        "batch_latency_ms": round(1000 * mean, 3),
        "p50_ms": round(1000 * statistics.median(times), 3),
        "images_per_s": round(batch_size / mean, 1),
        "calls": len(times),
    }


def goals(runtimes: dict) -> dict:
    """The issue's goals against this run; absent batch sizes are left out."""
    graphs, out = runtimes.get(PROFILE_RUNTIME, {}), {}
    if 1 in graphs:
        out["batch1_ms_at_most_1_5"] = graphs[1]["batch_latency_ms"] <= GOAL_BATCH1_MS
    if 256 in graphs:
        out["batch256_at_least_18k_img_s"] = (
            graphs[256]["images_per_s"] >= GOAL_BATCH256_IMAGES_PER_S
        )
        limit = runtimes.get(f"{PROFILE_RUNTIME}_model_only", {}).get(256)
        if limit:
            share = graphs[256]["images_per_s"] / limit["images_per_s"]
            out["batch256_share_of_model_only"] = round(share, 3)
    fp32 = runtimes.get("cuda_graphs_fp32", {})
    shared = [bs for bs in graphs if bs in fp32]
    if shared:
        out["fp16_at_least_fp32_everywhere"] = all(
            graphs[bs]["images_per_s"] >= fp32[bs]["images_per_s"] for bs in shared
        )
    return out


def bench_cuda(batch_sizes: tuple[int, ...]) -> dict:
    """Every runtime at every batch size, and their top-1 against the CPU fp32 path."""
    import torch

    from serve_app.config import ModelConfig
    from serve_app.serving.gpu_runtime import CudaGraphRuntime
    from serve_app.serving.imaging import normalize_batch
    from serve_app.serving.models import load_model
    from serve_app.serving.runtimes import TorchRuntime, _Softmaxed, check_crops, cpu_fp32_probs

    loaded = load_model(ModelConfig(name="efficientnet_lite0", device="cpu"))
    spec, largest = loaded.preprocess, max(batch_sizes)
    crops = np.stack(check_crops(loaded))
    cpu_probs = cpu_fp32_probs(loaded.module, normalize_batch(list(crops), spec))

    def graph_runtime(precision: str, graphs: bool) -> CudaGraphRuntime:
        model = _Softmaxed(copy.deepcopy(loaded.module))
        rt = CudaGraphRuntime(model, spec, largest, precision, graphs=graphs)
        rt.prepare()
        return rt

    runtimes = {
        "cuda_graphs_fp16": graph_runtime("fp16", True),
        "cuda_graphs_fp32": graph_runtime("fp32", True),
        "cuda_eager_fp16": graph_runtime("fp16", False),
        "host_float32_fp16": TorchRuntime(copy.deepcopy(loaded.module), "cuda", "fp16", 1),
    }
    out: dict = {"runtimes": {}, "agreement": {}, "captured": {}}
    for name, rt in runtimes.items():
        uint8 = getattr(rt, "accepts_uint8", False)
        probs = rt.run(crops if uint8 else normalize_batch(list(crops), spec))
        out["agreement"][name] = {
            "top1_as_cpu_fp32": bool((probs.argmax(1) == cpu_probs.argmax(1)).all()),
            "max_prob_diff": round(float(np.abs(probs - cpu_probs).max()), 5),
        }
        if uint8:
            out["captured"][name] = list(rt.graphs.captured)
        out["runtimes"][name] = {}
        for bs in batch_sizes:
            batch = crops[np.arange(bs) % len(crops)]
            if not uint8:
                batch = normalize_batch(list(batch), spec)
            times = time_calls(lambda b=batch, r=rt: r.run(b), calls_for(bs))
            out["runtimes"][name][bs] = summarise(times, bs)
            print(f"  {name:20s} batch {bs:3d}: {out['runtimes'][name][bs]}", flush=True)
    graphs = runtimes[PROFILE_RUNTIME]
    limit = out["runtimes"][f"{PROFILE_RUNTIME}_model_only"] = {}
    for bs in batch_sizes:

        def replay(b=bs):
            with torch.inference_mode():  # a bucket whose capture failed runs eagerly here
                graphs.graphs.run(b)
            torch.cuda.synchronize()

        limit[bs] = summarise(time_calls(replay, calls_for(bs)), bs)
    out["goals"] = goals(out["runtimes"])
    return out


def gpu_profile_note(results: dict, source: str) -> str:
    return (
        f"Measured by `{results['command']}` ({source}): {PROFILE_RUNTIME} (CUDA graphs, fp16, "
        f"uint8 crops in), EfficientNet-Lite0, {results['machine']}."
    )


def render_markdown(results: dict) -> str:
    sizes = sorted({int(bs) for row in results["runtimes"].values() for bs in row})
    lines = [
        f"Machine: {results['machine']}",
        "",
        "| runtime | " + " | ".join(f"batch {b}" for b in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for name, row in results["runtimes"].items():
        by_size = {int(bs): v for bs, v in row.items()}
        cells = [
            f"{by_size[b]['batch_latency_ms']} ms, {by_size[b]['images_per_s']} img/s"
            if b in by_size
            else "-"
            for b in sizes
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Top-1 against CPU fp32 on the reference photos: {results['agreement']}"]
    lines += ["", f"Goals: {results['goals']}", ""]
    return "\n".join(lines)


def main_cuda(args: argparse.Namespace, argv: list[str]) -> int:
    """`bench --device cuda`: exit 2, writing nothing, where torch sees no CUDA device."""
    import torch

    if not torch.cuda.is_available():
        print(
            f"bench --device cuda: torch {torch.__version__} sees no CUDA device on this "
            "machine; run it where `python -c 'import torch; print(torch.cuda.is_available())'` "
            "prints True (docs/PERFORMANCE.md, GPU)",
            file=sys.stderr,
        )
        return NO_CUDA_EXIT
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "command": "python -m serve_app.devtools.bench " + " ".join(argv),
        "machine": f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, Python {platform.python_version()}",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    results |= bench_cuda(GPU_BATCH_SIZES)
    if args.note:
        results["notes"] = args.note
    note = gpu_profile_note(results, f"{out}/results.json")
    write_profile(results["runtimes"], out / "gpu_profile.csv", PROFILE_RUNTIME, note)
    if args.update_profile:
        results["profile"] = update_simulator_profile(
            results["runtimes"], GPU_PROFILE, runtime=PROFILE_RUNTIME, note=note
        )
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(render_markdown(results))
    print(render_markdown(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Rewrite lab/profiles/gpu.csv (or --to) from the results.json of a `--device cuda` run."""
    parser = argparse.ArgumentParser(prog="python -m serve_app.devtools.bench_gpu")
    parser.add_argument("--profile-from", required=True, type=Path, help="a run's results.json")
    parser.add_argument("--to", type=Path, default=GPU_PROFILE, help="the profile to rewrite")
    args = parser.parse_args(argv)
    results = json.loads(args.profile_from.read_text())
    if PROFILE_RUNTIME not in results.get("runtimes", {}):
        print(f"{args.profile_from}: no {PROFILE_RUNTIME} runs in it", file=sys.stderr)
        return 1
    note = gpu_profile_note(results, str(args.profile_from))
    update_simulator_profile(results["runtimes"], args.to, runtime=PROFILE_RUNTIME, note=note)
    print(f"wrote {args.to} from {args.profile_from}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
