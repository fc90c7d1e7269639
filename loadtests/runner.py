"""`recserve loadtest SCENARIO`: run a locust scenario against the service and write a report of
what happened.

Steps: make sure a service answers (start `serve run` if nothing does on the default port), run
locust (headless for --duration, or its web UI with --web), then read the run's series from
Prometheus and write DIR/locust_stats.csv, DIR/series.csv, DIR/loadtest.png and DIR/summary.md.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd

from loadtests import checks, collect, report
from loadtests.schedule import available_scenarios, load_plan, parse_duration
from loadtests.service import StartedService, is_ready, start_service
from serve_app.monitoring.prometheus_api import PrometheusClient, PrometheusUnavailable

DEFAULT_HOST = "http://127.0.0.1:8000"
DEFAULT_PROMETHEUS = "http://127.0.0.1:9090"
DEFAULT_MODEL = "efficientnet_lite0"
LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `recserve loadtest`."""
    parser = argparse.ArgumentParser(
        prog="recserve loadtest",
        description="Run a locust traffic scenario and report load, latency and replicas over "
        "time.",
    )
    parser.add_argument(
        "scenario",
        help=f"plan name ({', '.join(available_scenarios())}) or a plan .yaml / trace .csv",
    )
    parser.add_argument(
        "--duration", help="run time, e.g. 300, 90s, 10m (default: the plan's own length)"
    )
    parser.add_argument("--out", type=Path, help="report folder (default: out/loadtests/SCENARIO)")
    parser.add_argument(
        "--host", help=f"service URL; without it {DEFAULT_HOST} is used and started if it is down"
    )
    parser.add_argument(
        "--prometheus", default=DEFAULT_PROMETHEUS, help="Prometheus URL to read the series from"
    )
    parser.add_argument(
        "--web", action="store_true", help="open locust's web UI to drive the test by hand"
    )
    parser.add_argument(
        "--web-port", type=int, default=8089, help="port of locust's web UI (with --web)"
    )
    parser.add_argument("--model", help="model name (default: the first one GET /v1/models lists)")
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("configs/serve_config.yaml"),
        help="serve config to start when no service is running",
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=600.0, help="seconds to wait for a started service"
    )
    parser.add_argument(
        "--user-rps", type=float, default=1.0, help="requests per second each locust user sends"
    )
    parser.add_argument(
        "--oip-share", type=float, default=0.2, help="share of requests sent to the OIP v2 endpoint"
    )
    parser.add_argument(
        "--feedback-share",
        type=float,
        default=0.3,
        help="share of predictions given a feedback label",
    )
    parser.add_argument(
        "--step", type=float, default=5.0, help="seconds between points of the Prometheus series"
    )
    parser.add_argument(
        "--rate-window", default="1m", help="PromQL rate() window for rates and latency quantiles"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=30.0,
        help="seconds to wait after the run so Prometheus scrapes its last samples",
    )
    parser.add_argument(
        "--deployments", default=".*", help="regex of deployments whose replicas are reported"
    )
    return parser


def locust_command(
    args: argparse.Namespace, host: str, out: Path, run_seconds: float | None
) -> list[str]:
    """The locust command line for a headless run or the web UI."""
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--host",
        host,
        "--csv",
        str(out / "locust"),
    ]
    # Full history makes locust's per-second percentiles cover recent requests instead of the whole
    # run.
    command += ["--csv-full-history"]
    if args.web:
        command += ["--web-host", "127.0.0.1", "--web-port", str(args.web_port)]
    else:
        command += ["--headless", "--only-summary"]
    if run_seconds is not None:
        command += ["--run-time", f"{math.ceil(run_seconds)}s"]
    return command


def locust_environment(args: argparse.Namespace, model: str) -> dict[str, str]:
    """Environment for the locust process: the scenario and what each user sends."""
    env = dict(os.environ)
    # Locust must monkey-patch its process; a leftover from an importing test run would break it.
    env.pop("LOCUST_SKIP_MONKEY_PATCH", None)
    env.update(
        {
            "LOADTEST_SCENARIO": args.scenario,
            "LOADTEST_MODEL": model,
            "LOADTEST_USER_RPS": str(args.user_rps),
            "LOADTEST_OIP_SHARE": str(args.oip_share),
            "LOADTEST_FEEDBACK_SHARE": str(args.feedback_share),
        }
    )
    return env


def model_names(listing) -> list[str]:
    """Model names from a GET /v1/models body ({"models": [{"name": ...}]} or a bare list)."""
    items = listing.get("models", []) if isinstance(listing, dict) else listing
    names = []
    for item in items if isinstance(items, list) else []:
        name = item.get("name") if isinstance(item, dict) else item
        if isinstance(name, str) and name:
            names.append(name)
    return names


def discover_model(host: str) -> str:
    """The first model the service lists, or the default name when it lists none."""
    try:
        names = model_names(httpx.get(f"{host.rstrip('/')}/v1/models", timeout=5.0).json())
    except (httpx.HTTPError, ValueError):
        names = []
    return names[0] if names else DEFAULT_MODEL


def run_locust(command: list[str], env: dict[str, str], log_path: Path, web: bool) -> int:
    """Run locust to completion; its output goes to the log (or the terminal for the web UI)."""
    if web:
        process = subprocess.Popen(command, env=env)
        try:
            return process.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached locust too (same terminal); let it write its CSVs and exit.
            return process.wait()
    with open(log_path, "wb") as log:
        return subprocess.run(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        ).returncode


def write_report(
    out: Path,
    run: report.RunInfo,
    args: argparse.Namespace,
    prometheus: PrometheusClient | None = None,
) -> tuple[str, bool]:
    """Collect the series (if Prometheus answers) and write series.csv, loadtest.png and
    summary.md."""
    stats_path = out / "locust_stats.csv"
    history = report.read_locust_history(out / "locust_stats_history.csv", run.start)
    if stats_path.is_file():
        client = report.summarize_client(report.read_locust_stats(stats_path))
    else:
        client = report.summarize_client(
            pd.DataFrame(
                columns=["Name", "Request Count", "Failure Count", "50%", "99%", "Requests/s"]
            )
        )

    prometheus = prometheus or PrometheusClient(args.prometheus)
    series = pd.DataFrame(columns=collect.SERIES_COLUMNS)
    service, missing = None, ""
    try:
        if not prometheus.ready():
            missing = f"Prometheus at {args.prometheus} did not answer"
        else:
            # Ray exports metrics every few seconds and Prometheus scrapes on its own interval.
            time.sleep(max(0.0, run.end + args.settle - time.time()))
            specs = collect.series_specs(run.model, args.rate_window, args.deployments)
            series = collect.collect_series(
                prometheus, specs, run.start, run.end + args.settle, args.step, run.start
            )
            totals = collect.collect_totals(
                prometheus, collect.total_queries(run.model, run.duration_s), run.end
            )
            service = report.summarize_service(series, totals, run)
    except PrometheusUnavailable as exc:
        missing, service = str(exc), None
    finally:
        prometheus.close()

    series.to_csv(out / "series.csv", index=False)
    report.plot_loadtest(series, history, run, out / "loadtest.png")
    summary = report.render_summary(run, client, service, missing)
    if not stats_path.is_file():
        summary += f"\nlocust wrote no {stats_path.name}; see {out / 'locust.log'}.\n"
    (out / "summary.md").write_text(summary)
    return summary, service is not None


def main(argv: list[str] | None = None) -> int:
    """Entry point of `recserve loadtest`; returns locust's exit code (non-zero when requests
    failed)."""
    args = build_parser().parse_args(argv)
    try:
        plan = load_plan(args.scenario)
        run_seconds = parse_duration(args.duration)
        problems = checks.settings_problems(args.oip_share, args.feedback_share, args.user_rps)
        if problems:
            raise ValueError("; ".join(problems))
    except (ValueError, FileNotFoundError) as exc:
        print(f"recserve loadtest: {exc}", file=sys.stderr)
        return 2
    if run_seconds is None and not args.web:
        run_seconds = plan.duration
    out = args.out or Path("out/loadtests") / Path(args.scenario).stem
    out.mkdir(parents=True, exist_ok=True)

    host = (args.host or DEFAULT_HOST).rstrip("/")
    started: StartedService | None = None
    if not is_ready(host):
        if args.host:
            print(
                f"recserve loadtest: nothing answers {host}/readyz; "
                "start the service or fix --host",
                file=sys.stderr,
            )
            return 2
        prometheus_running = PrometheusClient(args.prometheus).ready()
        print(
            f"No service answers {host}/readyz: "
            f"starting `recserve up --config {args.config}` (serve run"
            + (")" if prometheus_running else f" + Prometheus/Alertmanager on {args.prometheus})")
            + f", log {out / 'serve.log'} ..."
        )
        try:
            started = start_service(
                args.config,
                host,
                out / "serve.log",
                args.prometheus,
                prometheus_running,
                args.ready_timeout,
            )
        except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
            print(f"recserve loadtest: {exc}", file=sys.stderr)
            return 2
        print(
            f"Service ready (recserve up, PID {started.pid}); it will be stopped after the report."
        )

    try:
        model = args.model or discover_model(host)
        command = locust_command(args, host, out, run_seconds)
        if args.web:
            print(
                f"Locust web UI: http://127.0.0.1:{args.web_port} (scenario {args.scenario}); "
                "Ctrl-C here ends it."
            )
        else:
            print(
                f"Running scenario {args.scenario} for {run_seconds:.0f} s against {host} "
                f"(model {model}) ..."
            )
        start = time.time()
        code = run_locust(command, locust_environment(args, model), out / "locust.log", args.web)
        end = time.time()
        run = report.RunInfo(args.scenario, host, model, start, end, args.prometheus)
        summary, has_series = write_report(out, run, args)
    finally:
        if started is not None:
            print(f"Stopping the service this run started (PID {started.pid}) ...")
            started.stop()
    print(summary)
    print(
        f"Report: {out}/summary.md, {out}/loadtest.png, {out}/series.csv, {out}/locust_stats.csv"
        + ("" if has_series else " (no Prometheus series)")
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
