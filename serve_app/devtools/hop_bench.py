"""The hop from the Ingress to the Recognizer, measured under each way of making it.

A single-image request through our service costs one hop more than a plain deployment that
decodes and infers in its own HTTP handler. Each variant here starts its own `serve run`, with
either the Ingress's `internal_transport` or one of Ray Serve 2.60's environment knobs for the
hop changed (knobs are set for `serve run`, so every replica inherits them; results.json records
the values read back from the Ingress replica's environment), and measures in that one Serve:

- our service and the plain ONNX Runtime deployment (naive.py), 1-image requests, the same closed
  loop, warm-up and replica count: `ours_vs_plain` is the ratio inside one Serve, so the host's
  drift between variants cancels;
- the CPU each process spends per answered request (cpu_split.py);
- our single-image latency at low load (1 client).

The defaults run first and again last, so that the spread between two runs of the same variant is
in the results beside the differences between variants.

    python -m serve_app.devtools.hop_bench --out docs/bench/hops-2026-12-01
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from serve_app.devtools import bench
from serve_app.devtools.cpu_split import cpu_ms_per_request, environment_of, snapshot
from serve_app.devtools.loadgen import closed_loop, photos_jpeg

DEFAULTS = "defaults"
# (name, environment for `serve run`, settings by section of the application's args, what it
# changes).
VARIANTS = (
    (
        DEFAULTS,
        {},
        {},
        "the project's defaults: calls under 3 MiB by value over Serve's gRPC transport",
    ),
    (
        "actor_calls",
        {},
        {"ingress": {"internal_transport": "actor"}},
        "every call from the Ingress a Ray actor call (Serve's default transport)",
    ),
    (
        "records_every_20ms",
        {},
        {"quality": {"record_flush_interval_s": 0.02}},
        "prediction records sent to the quality monitor every 20 ms (the default until 2026-12-01)",
    ),
    (
        "records_every_250ms",
        {},
        {"quality": {"record_flush_interval_s": 0.25}},
        "prediction records sent to the quality monitor every 250 ms",
    ),
    (
        "user_code_on_replica_loop",
        {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"},
        {},
        "our handlers on the replica's own event loop, not a separate thread's",
    ),
    (
        "router_on_replica_loop",
        {"RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"},
        {},
        "the handle's router on the replica's event loop, not its own thread's",
    ),
    (
        "both_on_replica_loop",
        {
            "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
            "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
        },
        {},
        "both of the above",
    ),
)
# Serve's defaults for every knob a variant sets, so that none leaks in from the caller.
KNOB_DEFAULTS = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "0",
}
KNOBS = tuple(sorted(KNOB_DEFAULTS))
INGRESS_LABEL = "ServeReplica:recognition:Ingress"
OURS = f"{bench.BASE_URL}/v1/models/efficientnet_lite0/predict"
PLAIN = f"{bench.BASE_URL}/naive/ort/predict"


def run_order(names: list[str]) -> list[str]:
    """The variants in the order run: the defaults first and once more at the end."""
    rest = [n for n in names if n != DEFAULTS]
    return [DEFAULTS, *rest, DEFAULTS]


def measured_load(url: str, singles: list, clients: int, seconds: float) -> dict:
    """A closed loop of 1-image requests, with the CPU each process spent per answered request."""
    before = snapshot()
    load = asyncio.run(closed_loop(url, singles, 1, clients, seconds, raw=True))
    after = snapshot()
    if load["n"] == 0:
        return {**load, "cpu_ms_per_request": {}, "cpu_ms_per_request_total": None}
    split = cpu_ms_per_request(before, after, load["n"])
    return {
        **load,
        "cpu_ms_per_request": split,
        "cpu_ms_per_request_total": round(sum(split.values()), 2),
    }


def bench_variant(name: str, replicas: int, seconds: float, clients: int) -> dict:
    """One variant in its own Serve: ours and the plain deployment, side by side."""
    env, settings, changes = next((e, a, c) for n, e, a, c in VARIANTS if n == name)
    singles = [[j] for j in photos_jpeg()]
    variant = {
        "proxy": "haproxy",
        "replicas": replicas,
        "ingress_replicas": 1,
        "max_batch_size": 16,
        "batch_wait_timeout_s": 0.002,
    }
    config = bench.serve_config(variant)
    args = config["applications"][0]["args"]
    for section, values in settings.items():
        args[section].update(values)
    out: dict = {
        "variant": name,
        "changes": changes,
        "env": {**KNOB_DEFAULTS, **env},
        "ingress": args["ingress"],
        "quality": args["quality"],
    }
    started = time.perf_counter()
    with bench.ServeProcess(config, haproxy=True, env=out["env"]):
        out["env_in_ingress_replica"] = environment_of(INGRESS_LABEL, KNOBS)
        bench.warm_up(OURS, singles)
        out["ours_1_image_requests"] = measured_load(OURS, singles, clients, seconds)
        bench.warm_up(PLAIN, singles)
        out["plain_ort_1_image_requests"] = measured_load(PLAIN, singles, clients, seconds)
        out["ours_low_load"] = asyncio.run(closed_loop(OURS, singles, 1, 1, seconds / 2, raw=True))
    ours = out["ours_1_image_requests"]["images_per_s"]
    plain = out["plain_ort_1_image_requests"]["images_per_s"]
    out["ours_vs_plain"] = round(ours / plain, 3) if plain else None
    out["wall_s"] = round(time.perf_counter() - started, 1)
    return out


def _cpu_cell(load: dict, label: str) -> str:
    return f"{load['cpu_ms_per_request'].get(label, 0.0):.2f}"


def render_markdown(results: dict) -> str:
    """The variants as a table, then where the CPU of one request goes in the first run."""
    lines = [
        f"`{results['command']}` ({results['machine']}, started {results['started']}), "
        f"{results['replicas']} Recognizer replica(s), HAProxy, {results['clients']} clients of "
        f"1-image requests for {results['seconds']:g} s per load.",
        "",
        "| variant | ours images/s | plain images/s | ours / plain | ours CPU ms per request "
        "| plain CPU ms per request | ours low-load p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in results["runs"]:
        ours, plain = run["ours_1_image_requests"], run["plain_ort_1_image_requests"]
        lines.append(
            f"| {run['variant']} | {ours['images_per_s']} | {plain['images_per_s']} "
            f"| {run['ours_vs_plain']} | {ours['cpu_ms_per_request_total']} "
            f"| {plain['cpu_ms_per_request_total']} | {run['ours_low_load']['p50_ms']} |"
        )
    first = results["runs"][0]
    ours, plain = first["ours_1_image_requests"], first["plain_ort_1_image_requests"]
    labels = list(dict.fromkeys([*ours["cpu_ms_per_request"], *plain["cpu_ms_per_request"]]))
    lines += [
        "",
        f"CPU ms per request by process, first run ({first['variant']}):",
        "",
        "| process | ours | plain |",
        "|---|---:|---:|",
    ]
    lines += [f"| {lb} | {_cpu_cell(ours, lb)} | {_cpu_cell(plain, lb)} |" for lb in labels]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m serve_app.devtools.hop_bench", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", required=True, help="folder for results.json and results.md")
    p.add_argument("--seconds", type=float, default=12, help="length of each measured load")
    p.add_argument("--clients", type=int, default=32, help="closed-loop clients")
    p.add_argument("--replicas", type=int, default=1, help="Recognizer (and plain) replicas")
    p.add_argument(
        "--variants",
        nargs="+",
        choices=[v[0] for v in VARIANTS],
        default=[v[0] for v in VARIANTS],
        help="which variants (the defaults always run first and last)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        **bench.run_header("serve_app.devtools.hop_bench", argv),
        "replicas": args.replicas,
        "clients": args.clients,
        "seconds": args.seconds,
        "runs": [],
    }
    for name in run_order(args.variants):
        print(f"{name}:", flush=True)
        run = bench_variant(name, args.replicas, args.seconds, args.clients)
        print(
            f"  ours {run['ours_1_image_requests']['images_per_s']} images/s, plain "
            f"{run['plain_ort_1_image_requests']['images_per_s']}, ours/plain "
            f"{run['ours_vs_plain']} ({run['wall_s']} s)",
            flush=True,
        )
        results["runs"].append(run)
        # Kept after each variant, so that a run stopped half way leaves what it measured.
        (out / "results.json").write_text(json.dumps(results, indent=2))
    bench.write_results(out, results, render_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
