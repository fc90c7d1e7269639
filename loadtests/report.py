"""Turn a load test's locust CSVs and Prometheus series into summary.md numbers and loadtest.png
(pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from loadtests.checks import FEEDBACK_NAME, INFER_NAME, PREDICT_NAME, SHED_NAME  # noqa: E402

RECOGNITION_NAMES = (PREDICT_NAME, INFER_NAME)


@dataclass(frozen=True)
class RunInfo:
    """What was run, against what, and when (unix seconds)."""

    scenario: str
    host: str
    model: str
    start: float
    end: float
    prometheus_url: str

    @property
    def duration_s(self) -> float:
        """Seconds locust ran."""
        return self.end - self.start


@dataclass(frozen=True)
class EndpointStats:
    """Locust's numbers for one request name."""

    name: str
    requests: int
    failures: int
    p50_ms: float
    p99_ms: float
    rps: float


@dataclass(frozen=True)
class ClientSummary:
    """The load test as the clients saw it."""

    endpoints: tuple[EndpointStats, ...]
    recognition_requests: int  # answered or failed, shed excluded
    recognition_failures: int
    feedback_requests: int
    feedback_failures: int
    shed: int

    @property
    def failure_ratio(self) -> float:
        """Failed recognition requests over all that were not shed."""
        return (
            self.recognition_failures / self.recognition_requests
            if self.recognition_requests
            else math.nan
        )

    @property
    def shed_ratio(self) -> float:
        """Shed requests over everything sent for recognition or feedback."""
        sent = self.recognition_requests + self.feedback_requests + self.shed
        return self.shed / sent if sent else math.nan


@dataclass(frozen=True)
class Span:
    """Minimum and maximum of a series over the run."""

    low: float
    high: float


@dataclass(frozen=True)
class ServiceSummary:
    """The load test as Prometheus saw it; None fields mean the series was absent."""

    requests_by_status: dict[str, float]
    shed_http_503: float
    latency_p50_s: float
    latency_p99_s: float
    peak_request_rate: float
    running_replicas: dict[str, Span]
    target_replicas: dict[str, Span]
    forecast_qps: Span | None


def _number(value, cast=float):
    """Locust writes "N/A" before the first sample; treat it as missing."""
    try:
        return cast(float(value))
    except (TypeError, ValueError):
        return cast(0) if cast is int else math.nan


def read_locust_stats(path: Path) -> pd.DataFrame:
    """Locust's `<prefix>_stats.csv` as a frame."""
    return pd.read_csv(path, keep_default_na=False)


def read_locust_history(
    path: Path, run_start: float, latency_name: str = PREDICT_NAME
) -> pd.DataFrame:
    """Per-second rows of `<prefix>_stats_history.csv`: elapsed_s, users, rps, failures_per_s,
    p50_ms, p99_ms.

    Load comes from the Aggregated rows; latency from `latency_name`'s rows when locust wrote them
    (--csv-full-history, whose percentiles cover the last seconds rather than the whole run so far).
    """
    columns = ["elapsed_s", "users", "rps", "failures_per_s", "p50_ms", "p99_ms"]
    if not Path(path).is_file():
        return pd.DataFrame(columns=columns)
    raw = pd.read_csv(path, keep_default_na=False)
    for column in ("Timestamp", "User Count", "Requests/s", "Failures/s", "50%", "99%"):
        raw[column] = pd.to_numeric(raw[column], errors="coerce")
    total = raw[raw["Name"] == "Aggregated"]
    latency = raw[raw["Name"] == latency_name]
    if latency.empty:
        latency = total
    latency = latency[["Timestamp", "50%", "99%"]].drop_duplicates("Timestamp", keep="last")
    merged = total.drop(columns=["50%", "99%"]).merge(latency, on="Timestamp", how="left")
    # Locust writes 0 ms percentiles for a window without requests; a real request never takes 0 ms.
    merged[["50%", "99%"]] = merged[["50%", "99%"]].where(merged[["50%", "99%"]] > 0)
    return pd.DataFrame(
        {
            "elapsed_s": merged["Timestamp"] - run_start,
            "users": merged["User Count"],
            "rps": merged["Requests/s"],
            "failures_per_s": merged["Failures/s"],
            "p50_ms": merged["50%"],
            "p99_ms": merged["99%"],
        },
        columns=columns,
    ).reset_index(drop=True)


def summarize_client(stats: pd.DataFrame) -> ClientSummary:
    """Requests, failures and shed per kind from locust's stats table (the Aggregated row is not
    double-counted)."""
    endpoints = []
    for _, row in stats.iterrows():
        if row["Name"] == "Aggregated":
            continue
        endpoints.append(
            EndpointStats(
                name=str(row["Name"]),
                requests=_number(row["Request Count"], int),
                failures=_number(row["Failure Count"], int),
                p50_ms=_number(row["50%"]),
                p99_ms=_number(row["99%"]),
                rps=_number(row["Requests/s"]),
            )
        )

    def total(names, attribute):
        return sum(getattr(e, attribute) for e in endpoints if e.name in names)

    return ClientSummary(
        endpoints=tuple(endpoints),
        recognition_requests=total(RECOGNITION_NAMES, "requests"),
        recognition_failures=total(RECOGNITION_NAMES, "failures"),
        feedback_requests=total((FEEDBACK_NAME,), "requests"),
        feedback_failures=total((FEEDBACK_NAME,), "failures"),
        shed=total((SHED_NAME,), "requests"),
    )


def _in_run(series: pd.DataFrame, name: str, run: RunInfo) -> pd.DataFrame:
    selected = series[
        (series["series"] == name)
        & (series["elapsed_s"] >= 0)
        & (series["elapsed_s"] <= run.duration_s)
    ]
    return selected.dropna(subset=["value"])


def _spans(frame: pd.DataFrame) -> dict[str, Span]:
    return {
        str(label): Span(group["value"].min(), group["value"].max())
        for label, group in frame.groupby("label")
    }


def summarize_service(series: pd.DataFrame, totals: dict, run: RunInfo) -> ServiceSummary:
    """Whole-run numbers and the min/max of each replica and forecast series within the run."""
    request_rate = _in_run(series, "request_rate", run)["value"]
    forecast = _in_run(series, "forecast_qps", run)
    forecast = (
        forecast[forecast["label"] == "yhat"] if "yhat" in set(forecast["label"]) else forecast
    )
    return ServiceSummary(
        requests_by_status=dict(totals.get("requests_by_status") or {}),
        shed_http_503=totals.get("shed_http_503", math.nan),
        latency_p50_s=totals.get("latency_p50_s", math.nan),
        latency_p99_s=totals.get("latency_p99_s", math.nan),
        peak_request_rate=request_rate.max() if len(request_rate) else math.nan,
        running_replicas=_spans(_in_run(series, "running_replicas", run)),
        target_replicas=_spans(
            _in_run(series, "target_replicas", run)
            if len(_in_run(series, "target_replicas", run))
            else _in_run(series, "serve_target_replicas", run)
        ),
        forecast_qps=Span(forecast["value"].min(), forecast["value"].max())
        if len(forecast)
        else None,
    )


def _fmt(value: float, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"


def _span(span: Span | None) -> str:
    if span is None:
        return "n/a"
    return (
        f"{_fmt(span.low, 0)} – {_fmt(span.high, 0)}"
        if span.low != span.high
        else _fmt(span.low, 0)
    )


def render_summary(
    run: RunInfo, client: ClientSummary, service: ServiceSummary | None, missing_reason: str = ""
) -> str:
    """summary.md: the client-side table, the service-side numbers, or why those are missing."""
    lines = [
        f"# Load test `{run.scenario}`",
        "",
        f"- target: {run.host}, model `{run.model}`",
        f"- ran {run.duration_s:.0f} s, "
        f"from {pd.Timestamp(run.start, unit='s'):%Y-%m-%d %H:%M:%S} UTC",
        "",
        "## Client side (locust)",
        "",
        f"- recognition requests: {client.recognition_requests}, "
        f"failures: {client.recognition_failures} ({_pct(client.failure_ratio)})",
        f"- shed (503): {client.shed} ({_pct(client.shed_ratio)} of all requests sent)",
        f"- feedback labels: {client.feedback_requests}, failures: {client.feedback_failures}",
        "",
        "| request | requests | failures | p50 ms | p99 ms | req/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for e in client.endpoints:
        lines.append(
            f"| {e.name} | {e.requests} | {e.failures} | {_fmt(e.p50_ms, 0)} "
            f"| {_fmt(e.p99_ms, 0)} | {_fmt(e.rps, 2)} |"
        )
    lines += ["", "## Service side (Prometheus)", ""]
    if service is None:
        lines += [
            f"Series missing: {missing_reason or 'Prometheus was not queried'}.",
            "series.csv holds only its header and loadtest.png shows the locust side only;",
            f"start Prometheus ({run.prometheus_url}) and run again to get latency, replicas "
            "and forecast.",
        ]
        return "\n".join(lines) + "\n"
    statuses = ", ".join(
        f"{status}: {count:.0f}" for status, count in sorted(service.requests_by_status.items())
    )
    lines += [
        f"- requests by status (model_request_total): {statuses or 'none recorded'}",
        '- shed by the service (HTTP 503, model_request_total{status="rejected"}): '
        f"{_fmt(service.shed_http_503, 0)}",
        "- latency over the run (model_latency_seconds): "
        f"p50 {_fmt(1000 * service.latency_p50_s, 0)} ms, "
        f"p99 {_fmt(1000 * service.latency_p99_s, 0)} ms",
        f"- peak request rate: {_fmt(service.peak_request_rate, 2)} req/s",
        f"- forecast QPS (yhat) over the run: {_span(service.forecast_qps)}",
        "",
        "| deployment | running replicas (min – max) | target replicas (min – max) |",
        "|---|---:|---:|",
    ]
    for deployment in sorted(set(service.running_replicas) | set(service.target_replicas)):
        lines.append(
            f"| {deployment} | {_span(service.running_replicas.get(deployment))} |"
            f" {_span(service.target_replicas.get(deployment))} |"
        )
    if not service.running_replicas and not service.target_replicas:
        lines.append("| (no replica series) | n/a | n/a |")
    return "\n".join(lines) + "\n"


def deployments_to_plot(series: pd.DataFrame, limit: int = 4) -> list[str]:
    """Deployments worth a line: those the autoscaler targets, else those whose replica count moved,
    else all."""
    targeted = sorted(set(series.loc[series["series"] == "target_replicas", "label"]))
    if targeted:
        return targeted[:limit]
    running = series[series["series"] == "running_replicas"]
    moved = sorted(
        label for label, group in running.groupby("label") if group["value"].nunique() > 1
    )
    return (moved or sorted(set(running["label"])))[:limit]


def _legend(axis, loc: str = "upper left") -> None:
    if axis.get_legend_handles_labels()[0]:
        axis.legend(loc=loc, fontsize=8)


def plot_loadtest(series: pd.DataFrame, history: pd.DataFrame, run: RunInfo, path: Path) -> Path:
    """Three stacked panels over run time: load, latency, replicas."""
    fig, (load, latency, replicas) = plt.subplots(
        3, 1, figsize=(11, 9), sharex=True, constrained_layout=True
    )
    fig.suptitle(f"Load test '{run.scenario}' — {run.model} at {run.host}")

    def lines(name: str):
        frame = series[series["series"] == name]
        return [(label, group.sort_values("elapsed_s")) for label, group in frame.groupby("label")]

    if len(history):
        load.plot(
            history["elapsed_s"],
            history["rps"],
            color="0.55",
            lw=1,
            label="sent by locust (all requests)",
        )
    for _, frame in lines("request_rate"):
        load.plot(
            frame["elapsed_s"],
            frame["value"],
            color="C0",
            lw=2,
            label="served (model_request_total)",
        )
    for _, frame in lines("shed_rate"):
        load.plot(frame["elapsed_s"], frame["value"], color="C3", lw=1.5, label="shed (503)")
    for _, frame in lines("error_rate"):
        load.plot(frame["elapsed_s"], frame["value"], color="C1", lw=1.5, label="errors")
    for bound, frame in lines("forecast_qps"):
        load.plot(
            frame["elapsed_s"],
            frame["value"],
            color="C2",
            ls="--" if bound == "yhat" else ":",
            label=f"forecast ({bound})",
        )
    load.set_ylabel("requests / s")
    if len(history):
        users = load.twinx()
        users.plot(
            history["elapsed_s"], history["users"], color="0.3", ls="-.", lw=1, label="locust users"
        )
        users.set_ylabel("users")
        users.set_ylim(bottom=0)
        _legend(users, "upper right")
    load.set_ylim(bottom=0)
    _legend(load)

    for name, label, color in (
        ("latency_p50_s", "p50 (service)", "C0"),
        ("latency_p99_s", "p99 (service)", "C3"),
    ):
        for _, frame in lines(name):
            latency.plot(frame["elapsed_s"], 1000 * frame["value"], color=color, lw=2, label=label)
    if len(history):
        latency.plot(
            history["elapsed_s"],
            history["p50_ms"],
            color="C0",
            ls=":",
            label="p50 (locust, predict)",
        )
        latency.plot(
            history["elapsed_s"],
            history["p99_ms"],
            color="C3",
            ls=":",
            label="p99 (locust, predict)",
        )
    latency.set_ylabel("latency ms")
    latency.set_ylim(bottom=0)
    _legend(latency)

    plotted = deployments_to_plot(series)
    for number, deployment in enumerate(plotted):
        color = f"C{number}"
        # Running underneath, wide and pale; target on top, thin and dashed, so both stay visible
        # when equal.
        for name, style, width, alpha in (
            ("running_replicas", "-", 4, 0.45),
            ("target_replicas", "--", 1.5, 1.0),
        ):
            for label, frame in lines(name):
                if label == deployment:
                    replicas.step(
                        frame["elapsed_s"],
                        frame["value"],
                        where="post",
                        color=color,
                        ls=style,
                        lw=width,
                        alpha=alpha,
                        label=f"{deployment} {name.split('_')[0]}",
                    )
    if not plotted:
        replicas.text(
            0.5,
            0.5,
            "no replica series from Prometheus",
            ha="center",
            va="center",
            transform=replicas.transAxes,
            color="0.4",
        )
    else:
        _legend(replicas)
    replicas.set_ylabel("replicas")
    replicas.set_ylim(bottom=0, top=max(2.0, replicas.get_ylim()[1] + 0.5))
    replicas.yaxis.get_major_locator().set_params(integer=True)
    replicas.set_xlabel("seconds since the load test started")
    for axis in (load, latency, replicas):
        axis.axvspan(0, run.duration_s, color="0.95", zorder=-1)
        axis.grid(alpha=0.3)
    replicas.set_xlim(left=min(0.0, replicas.get_xlim()[0]))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
