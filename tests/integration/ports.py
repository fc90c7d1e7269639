"""Ports of the integration session, moved as one by RECSERVE_TEST_PORT_OFFSET.

The defaults keep every fixed port off a `make run` on the same machine; an offset lets a second
integration session (another checkout, a fault test run by hand) run beside the first.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

OFFSET = int(os.environ.get("RECSERVE_TEST_PORT_OFFSET", "0"))

SERVE_PORT = 18000 + OFFSET
GRPC_PORT = 18001 + OFFSET
PROMETHEUS_PORT = 19090 + OFFSET
ALERTMANAGER_PORT = 19093 + OFFSET
HAPROXY_STATS_PORT = 18404 + OFFSET
HAPROXY_METRICS_PORT = 19101 + OFFSET
DINGTALK_PROMETHEUS_PORT = 19190 + OFFSET
DINGTALK_ALERTMANAGER_PORT = 19193 + OFFSET
DINGTALK_BRIDGE_PORT = 19195 + OFFSET

SERVICE_URL = f"http://127.0.0.1:{SERVE_PORT}"
GRPC_TARGET = f"127.0.0.1:{GRPC_PORT}"
PROMETHEUS_URL = f"http://127.0.0.1:{PROMETHEUS_PORT}"


# A session that needs some of the test config's models only (names, comma-separated): the
# overload module's, whose Serve then starts 1 Recognizer instead of 7.
ONLY_MODELS = [m for m in os.environ.get("RECSERVE_TEST_MODELS", "").split(",") if m]


def keep_models(doc: dict, names: list[str]) -> None:
    """Leave only these models in the config, and nothing that names another: a shadow, the
    Forecaster's list."""
    args = doc["applications"][0]["args"]
    args["models"] = [m for m in args["models"] if m["name"] in names]
    for model in args["models"]:
        if model.get("shadow", {}).get("model") not in names:
            model.pop("shadow", None)
    forecaster = args.get("forecaster")
    if forecaster:
        forecaster["models"] = [m for m in forecaster["models"] if m in names]
        if not forecaster["models"]:  # nothing left to forecast: no Forecaster
            del args["forecaster"]


def config_with_ports(source: Path, target: Path) -> Path:
    """A copy of the test config with Serve's port and every Prometheus address moved (and only
    the models of RECSERVE_TEST_MODELS, when it names some)."""
    doc = yaml.safe_load(source.read_text())
    if ONLY_MODELS:
        keep_models(doc, ONLY_MODELS)
    doc["http_options"]["port"] = SERVE_PORT
    doc["grpc_options"]["port"] = GRPC_PORT
    # each session its own quality store: none sees another's predictions or an earlier session's
    doc["applications"][0]["args"]["quality"]["store_dir"] = str(target.parent / "quality-store")
    text = yaml.safe_dump(doc, sort_keys=False)
    target.write_text(text.replace("http://127.0.0.1:19090", PROMETHEUS_URL))
    return target
