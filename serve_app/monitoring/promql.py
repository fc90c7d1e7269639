"""PromQL for the service's own series, written once: the autoscaling policy, the forecaster's
history, alert and recording rules, the dashboards and the load-test collector build their queries
here, so a renamed metric or label changes one file.

Names are the exported ones: Ray prefixes every application metric with `ray_`.
"""

from __future__ import annotations

from collections.abc import Iterable

from serve_app.monitoring import metrics as m

RAY_PREFIX = "ray_"


def exported(spec: m.MetricSpec, suffix: str = "") -> str:
    """The series Prometheus stores for a declared metric (with `_bucket`, `_sum`, `_count`)."""
    return RAY_PREFIX + spec.name + suffix


REQUESTS = exported(m.REQUEST_TOTAL)
LATENCY_BUCKETS = exported(m.LATENCY_SECONDS, "_bucket")
STAGE_BUCKETS = exported(m.STAGE_SECONDS, "_bucket")


def quote_label(value: str) -> str:
    """A PromQL string literal for a label value."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def matchers(**labels: str | None) -> str:
    """`{a="x",b=~"y|z"}` from keyword labels: a value starting `~` is a regex, None is skipped."""
    parts = []
    for name, value in labels.items():
        if value is None:
            continue
        if value.startswith("~"):
            parts.append(f"{name}=~{quote_label(value[1:])}")
        else:
            parts.append(f"{name}={quote_label(value)}")
    return "{" + ",".join(parts) + "}" if parts else ""


def _by(labels: Iterable[str]) -> str:
    labels = list(labels)
    return f" by ({', '.join(labels)})" if labels else ""


def summed_rate(
    series: str,
    window: str = "1m",
    by: Iterable[str] = (),
    offset: str | None = None,
    **labels: str | None,
) -> str:
    """`sum [by (...)] (rate(series{...}[window] [offset d]))`: per-second rate over replicas."""
    shift = f" offset {offset}" if offset else ""
    return f"sum{_by(by)} (rate({series}{matchers(**labels)}[{window}]{shift}))"


def request_rate(window: str = "1m", by: Iterable[str] = (), **labels: str | None) -> str:
    """Requests per second answered by the ingress: `sum [by (...)] (rate(requests[window]))`."""
    return summed_rate(REQUESTS, window, by, **labels)


def bucket_quantile(
    quantile: float | str,
    buckets: str,
    window: str = "1m",
    by: Iterable[str] = (),
    **labels: str | None,
) -> str:
    """A quantile of a histogram's `_bucket` series, summed over replicas; a str quantile is kept
    as written (`"0.50"`)."""
    phi = quantile if isinstance(quantile, str) else f"{quantile:g}"
    groups = ", ".join([*by, "le"])
    return (
        f"histogram_quantile({phi}, sum by ({groups}) "
        f"(rate({buckets}{matchers(**labels)}[{window}])))"
    )


def latency_quantile(
    quantile: float, window: str = "1m", by: Iterable[str] = (), **labels: str | None
) -> str:
    """End-to-end latency quantile in seconds from the histogram, summed over replicas."""
    return bucket_quantile(quantile, LATENCY_BUCKETS, window, by, **labels)
