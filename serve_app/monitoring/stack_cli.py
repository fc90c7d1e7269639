"""`recserve stack up|down|status|render`: our own Prometheus + Alertmanager, from the shell."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from serve_app.monitoring.alerting.alertmanager_config import load_receiver_settings
from serve_app.monitoring.alerting.prometheus_config import DEFAULT_SCRAPE_INTERVAL, ray_sd_file
from serve_app.monitoring.stack import stack_down, stack_status, stack_up
from serve_app.monitoring.stack_config import (
    DEFAULT_STATE_DIR,
    StackConfig,
    StackError,
    render_drop_in,
)
from serve_app.paths import REPO_ROOT


def _print_status(status: dict[str, dict]) -> None:
    if not status:
        print("stack: nothing running")
    for name, info in status.items():
        if info["ready"]:
            state = "ready"
        else:
            state = "running, not ready" if info["running"] else "not running"
        print(f"  {name:<13} {state:<19} {info['url']:<28} pid {info['pid']}  log {info['log']}")


def build_parser() -> argparse.ArgumentParser:
    """The `recserve stack` argument parser."""
    parser = argparse.ArgumentParser(
        prog="recserve stack", description="Our own Prometheus + Alertmanager on loopback."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("RECSERVE_STACK_DIR", DEFAULT_STATE_DIR)),
        help="configs, data, logs and PID files (default %(default)s, or $RECSERVE_STACK_DIR)",
    )
    up = sub.add_parser("up", parents=[common], help="render the configs and start the stack")
    up.add_argument("--prometheus-port", type=int, default=9090)
    up.add_argument("--alertmanager-port", type=int, default=9093)
    up.add_argument(
        "--scrape-interval", default=DEFAULT_SCRAPE_INTERVAL, help="default %(default)s"
    )
    up.add_argument(
        "--ray-tmpdir",
        type=Path,
        default=None,
        help="Ray's temp root; discovery file is <it>/ray/prom_metrics_service_discovery.json "
        "(default $RAY_TMPDIR or /tmp)",
    )
    up.add_argument(
        "--alerts", type=Path, default=None, help="alert thresholds (default configs/alerts.yaml)"
    )
    up.add_argument(
        "--receivers",
        type=Path,
        default=None,
        help="receivers YAML (default $RECSERVE_ALERT_RECEIVERS_FILE; "
        "RECSERVE_* variables override it)",
    )
    up.add_argument(
        "--rules", type=Path, action="append", default=[], help="extra rule file (repeatable)"
    )
    up.add_argument(
        "--retention", default="15d", help="how long Prometheus keeps data (default %(default)s)"
    )
    sub.add_parser("down", parents=[common], help="stop the processes recorded in the state dir")
    sub.add_parser("status", parents=[common], help="show what runs and whether it is ready")
    render = sub.add_parser(
        "render", help="write the drop-in config files (rules from configs/alerts.yaml)"
    )
    render.add_argument(
        "--out", type=Path, default=REPO_ROOT / "configs", help="default %(default)s"
    )
    render.add_argument(
        "--alerts", type=Path, default=None, help="alert thresholds (default configs/alerts.yaml)"
    )
    return parser


def _up(args: argparse.Namespace) -> int:
    cfg = StackConfig(
        state_dir=args.state_dir,
        ray_tmpdir=args.ray_tmpdir,
        prometheus_port=args.prometheus_port,
        alertmanager_port=args.alertmanager_port,
        scrape_interval=args.scrape_interval,
        alerts_file=args.alerts,
        receivers=load_receiver_settings(args.receivers),
        extra_rule_files=args.rules,
        retention=args.retention,
    )
    _print_status(stack_up(cfg))
    channels = cfg.receivers.configured_channels() if cfg.receivers else []
    receivers = ", ".join(channels) or "none configured, alerts show in its UI"
    print(
        f"Prometheus    {cfg.prometheus_url}   "
        f"(scraping {ray_sd_file(cfg.ray_tmpdir)} every {cfg.scrape_interval})"
    )
    print(f"Alertmanager  {cfg.alertmanager_url}   (receivers: {receivers})")
    print(f"Stop with: recserve stack down --state-dir {cfg.state_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `recserve stack`."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "render":
            for path in render_drop_in(args.out, args.alerts):
                print(f"wrote {path}")
            return 0
        if args.command == "down":
            for name, outcome in stack_down(args.state_dir).items():
                print(f"  {name:<13} {outcome}")
            return 0
        if args.command == "status":
            status = stack_status(args.state_dir)
            _print_status(status)
            return 0 if status and all(i["ready"] for i in status.values()) else 1
        return _up(args)
    except (StackError, ValueError, FileNotFoundError) as exc:
        print(f"recserve stack: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
