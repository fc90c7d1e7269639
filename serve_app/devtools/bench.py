"""`make bench`: where the time goes, measured side by side in one run on this machine.

1. Runtimes in-process: torch eager and ONNX Runtime at batch sizes 1/4/8/16 (images/s, medians).
2. The in-process pipeline: JPEG decode + crop + normalise + model, decode threads feeding
   inference workers, at the best batch size and at the thread budget of each replica count served
   (pipeline_bench.py): the ceiling a server of the same runtime and threads can reach.
3. Served over HTTP (real `serve run`, real proxy): our application and the naive baseline twice
   (eager torch and ONNX Runtime, naive.py) at the same replica count, each warmed up alike,
   closed-loop with 1-image requests from the same clients; latency percentiles at a fixed
   request rate; single-image latency at low load. Single-image requests over OIP gRPC too
   (tritonclient.grpc), next to HTTP in the same Serve. fairness.py names what each ratio compares.

Writes DIR/results.json and DIR/results.md, and the batch-latency curve the backtest simulator uses
(lab/profiles/cpu.csv). `--device cuda` measures the GPU runtime in-process instead (bench_gpu.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import yaml

from serve_app.devtools.fairness import attach_ratios, pipeline_for, ratios_markdown
from serve_app.devtools.grpc_load import grpc_closed_loop
from serve_app.devtools.loadgen import closed_loop, open_loop, photos_jpeg
from serve_app.devtools.pipeline_bench import bench_pipeline
from serve_app.devtools.profiles import update_simulator_profile, write_profile
from serve_app.paths import REPO_ROOT
from serve_app.processes import StartedProcess, StopStep, http_ok, start_process
from serve_app.serving.grpc_service import SERVICER_FUNCTION

BATCH_SIZES = (1, 4, 8, 16)
# Moved with the integration tests' offset, so that a bench can run beside them on one machine.
PORT_OFFSET = int(os.environ.get("RECSERVE_TEST_PORT_OFFSET", "0"))
PORT = 18100 + PORT_OFFSET
BASE_URL = f"http://127.0.0.1:{PORT}"
GRPC_PORT = 18101 + PORT_OFFSET
GRPC_TARGET = f"127.0.0.1:{GRPC_PORT}"
# Two applications run side by side here, so gRPC calls name theirs (tritonclient sends none).
GRPC_HEADERS = {"application": "recognition"}
READY_TIMEOUT_S = 300.0
# Decode threads of each served replica; the pipeline at a replica budget runs as many.
DECODE_THREADS = 2
# The naive baseline, once per runtime: (application name, runtime, route prefix).
NAIVE_APPS = (
    ("naive-torch", "torch", "/naive/torch"),
    ("naive-ort", "onnxruntime", "/naive/ort"),
)
# Ctrl-C first (serve run then shuts Serve and its local Ray down), then whatever is left of the
# process group it leads.
SERVE_STOP = (StopStep(signal.SIGINT, 60.0), StopStep(signal.SIGKILL, 10.0, whole_group=True))
# The batch-latency curve the backtest simulator replays by default.
SIMULATOR_PROFILE = REPO_ROOT / "lab" / "profiles" / "cpu.csv"


def _median_rate(fn, images_per_call: int, seconds: float, repeats: int = 3) -> float:
    """Median over `repeats` windows of images/s for calling fn() back to back."""
    fn()
    rates = []
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn()
            n += images_per_call
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def bench_runtimes(seconds: float) -> dict:
    """images/s of each runtime (1 intra-op thread, as a replica runs) at each batch size, and batch
    latency."""
    from serve_app.config import ModelConfig
    from serve_app.serving.models import load_model
    from serve_app.serving.runtimes import OnnxRuntime, TorchRuntime, export_onnx

    loaded = load_model(ModelConfig(name="efficientnet_lite0"))
    runtimes = {
        "torch_eager": TorchRuntime(loaded.module, "cpu", "fp32", 1),
        "onnxruntime": OnnxRuntime(export_onnx(loaded, "efficientnet_lite0"), 1),
    }
    rng = np.random.default_rng(0)
    out: dict = {}
    for name, rt in runtimes.items():
        out[name] = {}
        for bs in BATCH_SIZES:
            x = rng.standard_normal((bs, 3, 224, 224)).astype(np.float32)
            rate = _median_rate(partial(rt.run, x), bs, seconds)
            out[name][bs] = {
                "images_per_s": round(rate, 1),
                "batch_latency_ms": round(1000 * bs / rate, 2),
            }
            print(f"  runtime {name:12s} batch {bs:2d}: {rate:6.1f} img/s", flush=True)
    return out


# ---- served -------------------------------------------------------------------------------------


def serve_config(variant: dict) -> dict:
    """A Serve config with our application (fixed replicas) and the naive baseline on each runtime
    side by side, the naive ones at the same replica count as ours."""
    model = {
        "name": "efficientnet_lite0",
        "num_threads": 1,
        "decode_threads": DECODE_THREADS,
        "num_cpus": 0.5,
        "max_batch_size": variant["max_batch_size"],
        "batch_wait_timeout_s": variant["batch_wait_timeout_s"],
        "max_ongoing_requests": 64,
        "max_queued_requests": -1,
        "num_replicas": variant["replicas"],
    }
    return {
        "http_options": {"host": "127.0.0.1", "port": PORT},
        "grpc_options": {"port": GRPC_PORT, "grpc_servicer_functions": [SERVICER_FUNCTION]},
        "logging_config": {"encoding": "JSON", "log_level": "WARNING", "enable_access_log": False},
        "applications": [
            {
                "name": "recognition",
                "route_prefix": "/",
                "import_path": "serve_app.app:build_app",
                "args": {
                    "models": [model],
                    "ingress": {"num_replicas": variant["ingress_replicas"], "num_cpus": 0.25},
                    "quality": {"enabled": True},
                },
            },
        ]
        + [
            {
                "name": name,
                "route_prefix": prefix,
                "import_path": "serve_app.devtools.naive:build_naive",
                # Measured one deployment at a time, so an idle one only holds memory: reserving
                # no CPU lets every replica of all three fit on a 2-core machine.
                "args": {
                    "runtime": runtime,
                    "num_replicas": variant["replicas"],
                    "num_threads": 1,
                    "num_cpus": 0,
                },
            }
            for name, runtime, prefix in NAIVE_APPS
        ],
    }


class ServeProcess:
    """`serve run` on a generated config, in its own process group, stopped by PID."""

    def __init__(self, config: dict, haproxy: bool = False, env: dict[str, str] | None = None):
        self.haproxy = haproxy
        self.extra_env = env or {}
        self.dir = Path(tempfile.mkdtemp(prefix="rs-bench-"))
        self.config_path = self.dir / "serve_config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = self.dir / "serve.log"
        self.serve: StartedProcess | None = None

    def __enter__(self) -> "ServeProcess":
        env = {
            "RAY_TMPDIR": str(self.dir),
            "RAY_AUTH_MODE": "token",
            "RAY_SERVE_ENABLE_HA_PROXY": "1" if self.haproxy else "0",
            **self.extra_env,
        }
        serve_bin = Path(sys.executable).parent / "serve"
        self.serve = start_process(
            "serve run",
            [str(serve_bin), "run", str(self.config_path)],
            self.log_path,
            env=env,
            cwd=REPO_ROOT,
        )
        try:
            self.serve.wait_ready(
                both_applications_answer,
                READY_TIMEOUT_S,
                ready_check=f"{BASE_URL}/readyz and each naive baseline's /docs answering 200",
            )
        except BaseException:
            self.__exit__(*sys.exc_info())  # a failed start must not leave Serve and its Ray behind
            raise
        return self

    def __exit__(self, exc_type=None, *_) -> None:
        if self.serve is not None:
            self.serve.stop(SERVE_STOP)
        # Ray's session folder and the Serve log: only worth keeping when something went wrong.
        if exc_type is None:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print(f"kept for the failed variant's logs: {self.dir}", file=sys.stderr)


def both_applications_answer() -> bool:
    """Our application is ready and each naive baseline serves its routes."""
    return http_ok(f"{BASE_URL}/readyz") and all(
        http_ok(f"{BASE_URL}{prefix}/docs") for _, _, prefix in NAIVE_APPS
    )


def warm_up(url: str, singles: list) -> None:
    """The same warm-up for every deployment measured: 4 clients of 1-image requests for 3 s
    (connections, caches, the first runs of the model)."""
    asyncio.run(closed_loop(url, singles, 1, 4, 3, raw=True))


def bench_served(variant: dict, seconds: float, concurrency: int, fixed_rate: float) -> dict:
    """Our application and the naive baseline, over real HTTP through Serve's proxy, in one Serve
    instance."""
    jpegs = photos_jpeg()
    singles = [[j] for j in jpegs]
    fours = [[jpegs[(i + k) % len(jpegs)] for k in range(4)] for i in range(len(jpegs))]
    ours = f"{BASE_URL}/v1/models/efficientnet_lite0/predict"
    out: dict = {"variant": variant}
    with ServeProcess(serve_config(variant), haproxy=variant["proxy"] == "haproxy"):
        warm_up(ours, singles)
        out["ours_1_image_requests"] = asyncio.run(
            closed_loop(ours, singles, 1, concurrency, seconds, raw=True)
        )
        print(f"  served ours (1 img/request):  {out['ours_1_image_requests']}", flush=True)
        # OIP over gRPC, same photos and clients: its front against HTTP's in the same Serve.
        asyncio.run(grpc_closed_loop(GRPC_TARGET, singles, 1, 4, 3, GRPC_HEADERS))
        out["ours_grpc_1_image_requests"] = asyncio.run(
            grpc_closed_loop(GRPC_TARGET, singles, 1, concurrency, seconds, GRPC_HEADERS)
        )
        print(f"  served gRPC (1 img/request):  {out['ours_grpc_1_image_requests']}", flush=True)
        out["ours_4_image_requests"] = asyncio.run(
            closed_loop(ours, fours, 4, max(4, concurrency // 4), seconds, raw=False)
        )
        print(f"  served ours (4 img/request):  {out['ours_4_image_requests']}", flush=True)
        # The baseline as ours: same warm-up, same 1-image requests, same clients, same replicas.
        for name, _, prefix in NAIVE_APPS:
            key = f"{name.replace('-', '_')}_1_image_requests"
            warm_up(f"{BASE_URL}{prefix}/predict", singles)
            out[key] = asyncio.run(
                closed_loop(f"{BASE_URL}{prefix}/predict", singles, 1, concurrency, seconds, True)
            )
            print(f"  served {name} (1 img/request): {out[key]}", flush=True)
        out["ours_fixed_rate"] = asyncio.run(open_loop(ours, singles, fixed_rate, seconds))
        print(f"  fixed rate {fixed_rate}/s: {out['ours_fixed_rate']}", flush=True)
        out["ours_low_load"] = asyncio.run(closed_loop(ours, singles, 1, 1, seconds / 2, raw=True))
        print(f"  low load (1 client): {out['ours_low_load']}", flush=True)
        out["ours_grpc_low_load"] = asyncio.run(
            grpc_closed_loop(GRPC_TARGET, singles, 1, 1, seconds / 2, GRPC_HEADERS)
        )
        print(f"  gRPC low load (1 client): {out['ours_grpc_low_load']}", flush=True)
    return out


SERVED_LOADS = (
    "ours_1_image_requests",
    "ours_4_image_requests",
    "naive_torch_1_image_requests",
    "naive_ort_1_image_requests",
    "naive_1_image_requests",
    "ours_fixed_rate",
    "ours_low_load",
    "ours_grpc_1_image_requests",
    "ours_grpc_low_load",
)


def _served_markdown(served: dict, pipeline: dict | None) -> list[str]:
    """One served variant: its settings, a table of its loads and its ratios, each with what it
    compares."""
    v = served["variant"]
    lines = [
        f"Served through {v['proxy']} proxy, {v['replicas']} recognizer replica(s), "
        f"{v['ingress_replicas']} ingress replica(s), max batch {v['max_batch_size']}, "
        f"wait {v['batch_wait_timeout_s'] * 1000:.0f} ms:",
        "",
        "| load | images/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for key in (k for k in SERVED_LOADS if k in served):  # older runs lack the newer rows
        r = served[key]
        lines.append(
            f"| {key} | {r.get('images_per_s', '-')} | {r['p50_ms']} | {r['p95_ms']} "
            f"| {r['p99_ms']} | {r['errors']} |"
        )
    lines.append("")
    if pipeline is not None:
        lines += [
            f"Pipeline at this budget ({pipeline.get('inference_workers', 1)} inference worker(s) "
            f"of 1 intra-op thread, {pipeline['decode_threads']} decode threads): "
            f"{pipeline['images_per_s']} img/s. Ratios (1-image requests unless named, from "
            "the same clients, every deployment warmed up alike, at this replica count):",
            "",
        ]
    return lines + ratios_markdown(served.get("ratios", {}))


def render_markdown(results: dict) -> str:
    """The results as the Markdown of DIR/results.md."""
    lines = [
        f"Machine: {results['machine']}",
        "",
        "| runtime | " + " | ".join(f"batch {b}" for b in BATCH_SIZES) + " |",
        "|---|" + "---|" * len(BATCH_SIZES),
    ]
    for name, row in results["runtimes"].items():
        rates = " | ".join(f"{row[b]['images_per_s']} img/s" for b in BATCH_SIZES)
        lines.append(f"| {name} | {rates} |")
    p = results["pipeline"]
    lines += [
        "",
        f"In-process pipeline (decode + crop + normalise + ONNX Runtime, batch {p['batch_size']}, "
        f"{p['decode_threads']} decode threads, 1 inference thread): **{p['images_per_s']} img/s**",
        "",
    ]
    by_replicas = results.get("pipeline_by_replicas", {})
    if len(by_replicas) > 1:
        lines += [
            "At the thread budget of each replica count served:",
            "",
            "| replicas | inference workers x 1 thread | decode threads | img/s |",
            "|---|---|---|---|",
        ]
        for n, b in by_replicas.items():
            lines.append(
                f"| {n} | {b['inference_workers']} | {b['decode_threads']} | {b['images_per_s']} |"
            )
        lines.append("")
    attach_ratios(results)
    for served in results["served"]:
        lines += _served_markdown(served, pipeline_for(results, served["variant"]["replicas"]))
    return "\n".join(lines)


def run_header(module: str, argv: list[str] | None) -> dict:
    """What every results.json starts with: the command, the machine, when it started."""
    processor = platform.processor() or platform.machine()
    return {
        "command": f"python -m {module} " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{processor}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_results(out: Path, results: dict, markdown: str) -> None:
    """DIR/results.json and DIR/results.md, and the markdown on the console."""
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown + "\n")
    print(markdown)


def build_parser() -> argparse.ArgumentParser:
    """The `make bench` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.devtools.bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out", default="docs/bench", help="folder for results.json and results.md"
    )
    parser.add_argument(
        "--seconds", type=float, default=15, help="length of each served measurement"
    )
    parser.add_argument(
        "--concurrency", type=int, default=32, help="closed-loop clients for served throughput"
    )
    parser.add_argument(
        "--fixed-rate", type=float, default=20, help="requests/s of the latency-percentile run"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        nargs="+",
        default=[1, 2],
        help="recognizer replica counts to measure",
    )
    parser.add_argument(
        "--proxies",
        nargs="+",
        default=["python", "haproxy"],
        choices=["python", "haproxy"],
        help="Serve's HTTP proxy: its Python proxy, or HAProxy (RAY_SERVE_ENABLE_HA_PROXY=1)",
    )
    parser.add_argument("--skip-served", action="store_true", help="in-process measurements only")
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cuda: the GPU runtime in-process at batch 1..256 (bench_gpu.py), nothing served",
    )
    parser.add_argument(
        "--update-profile",
        action="store_true",
        help="also overwrite lab/profiles/cpu.csv (gpu.csv with --device cuda), the backtest's "
        "latency curve",
    )
    parser.add_argument(
        "--note",
        default="",
        help="words kept in results.json as `notes` (how loaded the machine was, say)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `make bench`: measure, then write DIR/results.json and DIR/results.md."""
    args = build_parser().parse_args(argv)
    if args.device == "cuda":
        from serve_app.devtools.bench_gpu import main_cuda

        return main_cuda(args, argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        **run_header("serve_app.devtools.bench", argv),
    }
    print("runtimes (in-process):", flush=True)
    results["runtimes"] = bench_runtimes(seconds=2.0)
    best_bs = max(BATCH_SIZES, key=lambda b: results["runtimes"]["onnxruntime"][b]["images_per_s"])
    print("pipeline (in-process):", flush=True)
    # One pipeline per thread budget served; `pipeline` stays the 1-replica budget.
    budgets = sorted({1, *([] if args.skip_served else args.replicas)})
    results["pipeline_by_replicas"] = {
        str(n): bench_pipeline(best_bs, seconds=4.0, replicas=n, decode_threads=DECODE_THREADS)
        for n in budgets
    }
    results["pipeline"] = results["pipeline_by_replicas"]["1"]
    write_profile(results["runtimes"], out / "cpu_profile.csv")
    # Opt-in: the backtest figures in docs/AUTOSCALING.md were made with the committed curve.
    if args.update_profile:
        results["profile"] = update_simulator_profile(results["runtimes"], SIMULATOR_PROFILE)
    if args.note:
        results["notes"] = args.note
    results["served"] = []
    if not args.skip_served:
        for proxy in args.proxies:
            for replicas in args.replicas:
                variant = {
                    "proxy": proxy,
                    "replicas": replicas,
                    "ingress_replicas": 1,
                    "max_batch_size": 16,
                    "batch_wait_timeout_s": 0.002,
                }
                print(f"served {variant}:", flush=True)
                results["served"].append(
                    bench_served(variant, args.seconds, args.concurrency, args.fixed_rate)
                )
    attach_ratios(results)
    write_results(out, results, render_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
