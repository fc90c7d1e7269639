"""One signal compared with its thresholds (`Reading`), and the words the policy's reasons use for
it: "QPS=132 > 100", "p99=640ms > 500ms", "3 instances"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from serve_app.autoscaling.rules import Threshold


@dataclass(frozen=True)
class Reading:
    """One signal compared with its thresholds."""

    name: str
    value: float  # the compared value (per instance for qps and ongoing_per_replica)
    total: float  # the deployment-wide value
    threshold: Threshold
    status: Literal["above", "below", "within"]
    need: int | None  # instances this signal says the load needs, when it can say

    def describe(self, instances: int) -> str:
        """'QPS=132 > 100' in the users' words; the comparison follows the status."""
        sign = {"above": ">", "below": "<", "within": "within"}[self.status]
        bound = {"above": self.threshold.up, "below": self.threshold.down}.get(self.status)
        label, shown, unit = _SIGNAL_LABELS[self.name](self.total, self.value, instances)
        if bound is None:
            low = _fmt(self.threshold.down, unit) if self.threshold.down is not None else "-"
            high = _fmt(self.threshold.up, unit) if self.threshold.up is not None else "-"
            return f"{label}={shown} within {low}..{high}"
        return f"{label}={shown} {sign} {_fmt(bound, unit)}"


def _fmt(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value * 100:.0f}%"
    return f"{value:.0f}{unit}" if abs(value) >= 10 or value == int(value) else f"{value:.1f}{unit}"


_SIGNAL_LABELS = {
    "qps": lambda total, each, n: (
        "QPS",
        f"{total:.0f}" if n <= 1 else f"{total:.0f} ({each:.0f} per instance)",
        "",
    ),
    "ongoing_per_replica": lambda total, each, n: (
        "ongoing requests per instance",
        f"{each:.1f}",
        "",
    ),
    "p99_ms": lambda total, each, n: ("p99", f"{total:.0f}ms", "ms"),
    "gpu_utilization": lambda total, each, n: ("GPU utilization", f"{total * 100:.0f}%", "%"),
}


def instances_phrase(n: int) -> str:
    """The count with its noun, as reasons say it: 1 instance, 3 instances."""
    return f"{n} instance" if n == 1 else f"{n} instances"
