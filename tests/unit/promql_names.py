"""Test helpers: which metric names a PromQL expression reads, which names exist, and promtool
checks."""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
RULES_DIR = REPO / "configs" / "prometheus"

PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
    "atan2",
    "start",
    "end",
}

# Declared outside serve_app.monitoring.metrics (autoscaling policy, forecaster): the metric
# contract, docs/METRICS.md.
CONTRACT_EXTRA = {
    "autoscaler_target_replicas": "gauge",
    "autoscaler_decision_total": "counter",
    "autoscaler_signal_available": "gauge",
    "forecast_qps": "gauge",
    "forecast_peak_qps": "gauge",
    "forecaster_last_fit_timestamp_seconds": "gauge",
    "forecaster_status": "gauge",
}


def require(tool: str) -> str:
    """Path of a system tool the monitoring tests need, or a failure that says how to install it."""
    path = shutil.which(tool)
    if path is None:
        raise AssertionError(
            f"{tool} is not installed: "
            "apt-get install -y prometheus prometheus-alertmanager (make deps)"
        )
    return path


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (no functions, keywords, labels, durations, strings)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text
    )  # label lists
    text = re.sub(r"\boffset\s+-?[0-9a-z]+", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def _exported(name: str, kind: str) -> set[str]:
    base = f"ray_{name}"
    if kind == "histogram":
        return {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    if kind == "counter" and not name.endswith("_total"):
        return {f"{base}_total"}
    return {base}


@lru_cache(maxsize=1)
def contract_metric_names() -> frozenset[str]:
    """Names our code exports, as Prometheus sees them (ray_ prefix, histogram and counter
    suffixes)."""
    from serve_app.monitoring.metrics import ALL_METRICS

    names: set[str] = set()
    for spec in ALL_METRICS:
        names |= _exported(spec.name, spec.kind)
    for name, kind in CONTRACT_EXTRA.items():
        names |= _exported(name, kind)
    return frozenset(names)


@lru_cache(maxsize=1)
def ray_serve_metric_bases() -> frozenset[str]:
    """Metric names Ray Serve declares in its source (string literals), without ray_ or suffixes."""
    import ray.serve

    root = Path(ray.serve.__file__).parent
    found: set[str] = set()
    for path in root.rglob("*.py"):
        found |= set(re.findall(r'"(serve_[a-z0-9_]+)"', path.read_text(errors="replace")))
    return frozenset(found)


def is_ray_serve_metric(name: str) -> bool:
    """`name` (as scraped) is one Ray Serve declares: ray_<declared>[_total|_bucket|_sum|_count]."""
    if not name.startswith("ray_serve_"):
        return False
    base = name[len("ray_") :]
    candidates = {base} | {
        base[: -len(s)] for s in ("_total", "_bucket", "_sum", "_count") if base.endswith(s)
    }
    return bool(candidates & ray_serve_metric_bases())


def recording_rule_names() -> set[str]:
    """Names the committed recording rules record."""
    doc = yaml.safe_load((RULES_DIR / "recording_rules.yml").read_text())
    return {rule["record"] for group in doc["groups"] for rule in group["rules"]}


def unknown_metrics(expr: str) -> set[str]:
    """Names in `expr` that no contract metric, recording rule or Ray Serve metric explains."""
    known = contract_metric_names() | recording_rule_names()
    return {n for n in metric_names(expr) if n not in known and not is_ray_serve_metric(n)}


def promtool_check_exprs(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """Run `promtool check rules` on a rule file recording each expression: PromQL parse check,
    offline."""
    rules = [{"record": f"check:expr_{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path = tmp_path / "exprs.yml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "exprs", "rules": rules}]}, sort_keys=False)
    )
    return subprocess.run(
        [require("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
