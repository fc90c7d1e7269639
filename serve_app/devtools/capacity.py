"""`recserve capacity`: the sustainable request rate of one replica at the latency SLO, measured.

Steps an open-loop load (requests started on a fixed schedule, whatever the answers) up against the
running service; the capacity is the highest step whose p99 stays within the SLO with no errors,
divided by the number of Recognizer replicas serving it. The result is what the planner's
`replica_capacity_qps` (policy_kwargs) and the backtest's `--replica-rps` expect.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from serve_app.devtools.loadgen import open_loop, photos_jpeg


def capacity_from_steps(steps: list[dict], slo_ms: float, replicas: int) -> float | None:
    """Per-replica capacity: the highest rate whose p99 met the SLO without errors, over replicas.

    Steps past the first failing one are ignored: a lucky step above a failure is not capacity.
    """
    best = None
    for step in sorted(steps, key=lambda s: s["rate_rps"]):
        ok = step["errors"] == 0 and step["p99_ms"] is not None and step["p99_ms"] <= slo_ms
        if not ok:
            break
        best = step["rate_rps"]
    return None if best is None else best / replicas


def main(argv: list[str] | None = None) -> int:
    """Entry point of `recserve capacity`: step the load up until the SLO breaks; print results."""
    parser = argparse.ArgumentParser(prog="recserve capacity", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the running service")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument(
        "--replicas",
        type=int,
        required=True,
        help="Recognizer replicas serving the model during the test (pin them: num_replicas)",
    )
    parser.add_argument(
        "--slo-ms",
        type=float,
        default=500.0,
        help="p99 latency objective (default 500, the users' alert)",
    )
    parser.add_argument("--start-rps", type=float, default=5.0)
    parser.add_argument("--step-rps", type=float, default=5.0)
    parser.add_argument("--max-rps", type=float, default=200.0)
    parser.add_argument("--step-seconds", type=float, default=15.0)
    args = parser.parse_args(argv)

    url = f"{args.url.rstrip('/')}/v1/models/{args.model}/predict"
    payloads = [[j] for j in photos_jpeg()]
    steps = []
    rate = args.start_rps
    while rate <= args.max_rps:
        step = asyncio.run(open_loop(url, payloads, rate, args.step_seconds))
        steps.append(step)
        print(
            f"  {rate:6.1f} req/s: p50 {step['p50_ms']} ms, p99 {step['p99_ms']} ms, "
            f"errors {step['errors']}",
            flush=True,
        )
        if step["errors"] or step["p99_ms"] is None or step["p99_ms"] > args.slo_ms:
            break
        rate += args.step_rps
    capacity = capacity_from_steps(steps, args.slo_ms, args.replicas)
    print(
        json.dumps(
            {
                "model": args.model,
                "slo_ms": args.slo_ms,
                "replicas": args.replicas,
                "replica_capacity_qps": capacity,
                "steps": steps,
            },
            indent=2,
        )
    )
    if capacity is None:
        print(f"even {args.start_rps} req/s missed the SLO: lower --start-rps", file=sys.stderr)
        return 1
    print(
        f"\nper-replica capacity at p99 <= {args.slo_ms:.0f} ms: {capacity:.1f} req/s\n"
        f"set policy_kwargs.predictive.replica_capacity_qps: {capacity:.1f} "
        "(and --replica-rps for backtests)"
    )
    return 0
