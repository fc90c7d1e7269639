"""`recserve`: one command for the service, the monitoring stack, forecasting and load tests.

Each subcommand lives in the module that owns its work; this file only dispatches to it.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "up": (
        "serve_app.launcher:main",
        "start the monitoring stack and `serve run` the application",
    ),
    "keys": (
        "serve_app.api_keys_cli:main",
        "make, list and revoke the API keys the ingress accepts (docs/SECURITY.md)",
    ),
    "stack": (
        "serve_app.monitoring.stack_cli:main",
        "start/stop/status of the local Prometheus + Alertmanager",
    ),
    "backfill": (
        "serve_app.autoscaling.history_backfill:main",
        "write a request-rate trace into the stack's Prometheus as history for the forecaster",
    ),
    "capacity": (
        "serve_app.devtools.capacity:main",
        "measure sustainable per-replica throughput on the running service",
    ),
    "soak": ("serve_app.devtools.soak:main", "long steady load: replica memory and success ratio"),
    "quantize": (
        "serve_app.devtools.quantize_cli:main",
        "build a model's INT8 graph; print its size, speed and agreement with fp32",
    ),
    "promote": (
        "serve_app.devtools.promote:main",
        "write the config in which a model serves its shadow candidate (serve deploy it)",
    ),
    "config-doc": (
        "serve_app.devtools.config_doc:main",
        "print docs/CONFIG.md generated from the config models",
    ),
    "fit": ("lab.commands:main_fit", "fit the Prophet forecaster on request-rate history"),
    "forecast": ("lab.commands:main_forecast", "forecast request rate with a fitted model"),
    "backtest": (
        "lab.commands:main_backtest",
        "replay a traffic trace against every scaling strategy",
    ),
    "backtest-suite": (
        "lab.suite_cli:main_backtest_suite",
        "the autoscaling robustness matrix: every trace x every per-replica capacity",
    ),
    "plot": ("lab.commands:main_plot", "redraw a backtest's plot from its directory"),
    "gen-traces": ("lab.commands:main_gen_traces", "regenerate the bundled traffic traces"),
    "loadtest": ("loadtests.runner:main", "run a locust scenario and write a report"),
    "loadtest-sim": (
        "loadtests.replay_sim:main",
        "replay a recorded load test in the simulator, real vs simulated replicas",
    ),
}


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: recserve COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch `recserve COMMAND ...` to the owning module's main(argv)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"recserve: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name = SUBCOMMANDS[name][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
