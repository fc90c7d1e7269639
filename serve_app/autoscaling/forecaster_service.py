"""The Forecaster deployment: refits Prophet on each model's request-rate history and publishes the
forecast.

One replica. On a schedule it pulls history from Prometheus (serve_app.autoscaling.rate_history),
refits in a worker thread (the event loop and the autoscaling policy never wait for Prophet), saves
the model JSON, and keeps these gauges current for the policy to read through Prometheus:

- forecast_qps{model_name, bound}: the forecast at now + lead time (bound: yhat | upper),
  re-published every `publish_interval_s` because "now + lead" moves; with
  `plan_changes_per_day` the upper bound is the planned step held from now to now + lead;
- forecast_peak_qps{model_name, bound}: the largest value over the rest of the horizon;
- forecaster_last_fit_timestamp_seconds{model_name}: when the model in use was fitted (the policy
  ignores forecasts older than its max_forecast_age_s, so a forecaster that stops fitting fades out
  by itself);
- forecaster_status{model_name, status}: 1 for the current status (ok | insufficient_history |
  error);
- forecast_mape_percent, forecast_interval_coverage_ratio, forecast_under_forecast_minutes and
  forecast_accuracy_points{model_name}: how the forecasts it published over the last
  `accuracy_window_h` compare with the actual request rate
  (serve_app.autoscaling.forecast_accuracy), re-scored every `accuracy_interval_s` in the worker
  thread.

Planned events (an announced promotion, a launch) come from `planned_events_file`, a YAML or JSON
list of `{name, start, end, qps}` re-read at every publish, so operators edit it while the service
runs. The published forecast at any time is the larger of Prophet's forecast and the qps of an event
covering that time; with too little history for Prophet the events alone are published
(`forecast_source: planned_only`).

`status()` (also answered on GET when the deployment is routed) returns the same figures as a dict.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from serve_app.autoscaling.cover import held_upper, planned_forecast
from serve_app.autoscaling.forecast_accuracy import (
    NO_POINTS,
    Accuracy,
    PublishedLog,
    PublishedPoint,
    accuracy,
    score,
)
from serve_app.autoscaling.forecast_metrics import (
    FORECAST_INTERVAL_COVERAGE,
    FORECAST_MAPE,
    FORECAST_PEAK_QPS,
    FORECAST_QPS,
    FORECAST_SCORED_POINTS,
    FORECAST_UNDER_MINUTES,
    FORECASTER_LAST_FIT,
    FORECASTER_STATUS,
)
from serve_app.autoscaling.forecaster import Forecast, RateForecaster
from serve_app.autoscaling.forecaster_config import ForecasterConfig
from serve_app.autoscaling.planned_events import (
    PlannedEvent,
    PlannedEventsFile,
    merge_forecast,
    planned_qps,
)
from serve_app.autoscaling.rate_history import RateHistory, prometheus_rate_history
from serve_app.config import HEALTH_CHECK_PERIOD_S
from serve_app.monitoring.metric_backends import default_backend

logger = logging.getLogger("ray.serve")
# status() is an API reply: it names files and kinds of error; folders, URLs and exception texts
# go to the log, where the operator reads them.
SEE_LOG = " (details in the forecaster's log)"

STATUSES = ("ok", "insufficient_history", "error")


# (model, start, end, step) -> history
HistorySource = Callable[[str, float, float, float], RateHistory]


def prometheus_history(address: str | None) -> HistorySource:
    """History from Prometheus at `address` (or RAY_PROMETHEUS_HOST)."""

    def read(model: str, start: float, end: float, step: float) -> RateHistory:
        resolved = address or os.environ.get("RAY_PROMETHEUS_HOST")
        if not resolved:
            raise ValueError(
                "no Prometheus address: set forecaster.prometheus_address or RAY_PROMETHEUS_HOST"
            )
        return prometheus_rate_history(resolved, model, start, end, step)

    return read


@dataclass
class ModelState:
    """What the forecaster knows about one model."""

    status: str = "insufficient_history"
    message: str = "not fitted yet"
    forecast: Forecast | None = None
    next_refit: float = 0.0
    model_path: Path | None = None
    # the gauges carry a planned-only value that must be cleared when it ends
    planned_published: bool = False
    # the forecasts published, kept to score against the actual rate (bounded by the window)
    published_log: PublishedLog | None = None
    accuracy: Accuracy = NO_POINTS
    accuracy_message: str = "nothing scored yet"
    next_accuracy: float = 0.0
    # forecaster.plan_changes_per_day: the steps of `planned_for`, the forecast they were made of
    planned: Forecast | None = None
    planned_for: Forecast | None = None


@dataclass
class ForecastPublisher:
    """The forecaster's work without Ray: refit (blocking), publish (cheap), status. The deployment
    schedules it."""

    config: ForecasterConfig
    history: HistorySource
    backend: Any = None
    clock: Callable[[], float] = time.time
    models: dict[str, ModelState] = field(default_factory=dict)
    planned: PlannedEventsFile = field(init=False)

    def __post_init__(self):
        self.backend = self.backend or default_backend()
        self.planned = PlannedEventsFile(self.config.planned_events_file)
        self.models = {
            name: ModelState(
                published_log=PublishedLog(
                    self.config.accuracy_step_s, self.config.accuracy_window_h * 3600
                )
            )
            for name in self.config.models
        }
        Path(self.config.model_dir).mkdir(parents=True, exist_ok=True)

    def _path(self, model: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in model)
        return Path(self.config.model_dir) / f"{safe}.json"

    def _planned(self, state: "ModelState", forecast: Forecast) -> Forecast:
        """The forecast's planned steps, made once per forecast (the plan must not move between
        publishes)."""
        if state.planned_for is not forecast:
            state.planned = planned_forecast(forecast, self.config.plan_changes_per_day)
            state.planned_for = forecast
        return state.planned

    def _horizon_s(self) -> float:
        return self.config.horizon_h * 3600 + self.config.lead_time_s

    def load_saved(self) -> None:
        """Use models saved by an earlier run (a restarted forecaster publishes at once); bad files
        are reported."""
        now = self.clock()
        for name, state in self.models.items():
            path = self._path(name)
            if not path.is_file():
                continue
            try:
                forecaster = RateForecaster.from_json(path.read_text())
                state.forecast = forecaster.predict(
                    now, self._horizon_s(), self.config.forecast_step_s
                )
            except Exception as exc:  # a corrupt or foreign file must not stop the forecaster
                logger.warning("forecaster: saved model %s unusable: %s", path, exc)
                state.status, state.message = (
                    "error",
                    (f"saved model {path.name} unusable: {type(exc).__name__}{SEE_LOG}"),
                )
                continue
            state.status, state.model_path = "ok", path
            state.message = f"loaded the saved model {path.name}"
            fitted_at = forecaster.fitted_at or 0.0
            state.next_refit = fitted_at + self.config.refit_interval_s

    def due(self) -> list[str]:
        """Models whose refit time has come."""
        now = self.clock()
        return [name for name, state in self.models.items() if now >= state.next_refit]

    def refit(self, model: str) -> ModelState:
        """Read history, fit, save, forecast the horizon. Blocking (seconds): call it from a worker
        thread."""
        state = self.models[model]
        now = self.clock()
        try:
            history = self.history(
                model, now - self.config.history_days * 86400, now, self.config.history_step_s
            )
            forecaster = RateForecaster(self.config.settings())
            if len(history) == 0:
                state.status, state.message = (
                    "insufficient_history",
                    "no request-rate history in Prometheus yet",
                )
            else:
                outcome = forecaster.fit(history.timestamps, history.rps, now=now)
                if outcome.status == "ok":
                    # The forecast before the status: `status()` runs on the event loop while this
                    # thread predicts (seconds), and must never see "ok" without the forecast.
                    state.forecast = forecaster.predict(
                        now, self._horizon_s(), self.config.forecast_step_s
                    )
                    path = self._path(model)
                    tmp = path.with_suffix(".json.tmp")
                    tmp.write_text(forecaster.to_json())
                    tmp.replace(path)  # readers never see half a file
                    state.model_path = path
                state.status, state.message = outcome.status, outcome.message
        except Exception as exc:
            # Prometheus down, Prophet failing: keep the last good forecast, say why
            logger.warning("forecaster: %s refit failed: %s: %s", model, type(exc).__name__, exc)
            state.status, state.message = "error", f"refit failed: {type(exc).__name__}{SEE_LOG}"
        ok = state.status == "ok"
        state.next_refit = now + (
            self.config.refit_interval_s if ok else self.config.retry_interval_s
        )
        log = logger.info if ok else logger.warning
        log("forecaster: %s %s: %s", model, state.status, state.message)
        return state

    def published(self, model: str, events: list[PlannedEvent] | None = None) -> dict[str, Any]:
        """The figures the gauges carry for one model right now: Prophet's forecast merged with
        planned events."""
        state = self.models[model]
        events = self.planned.events if events is None else events
        now = self.clock()
        at = now + self.config.lead_time_s
        values: dict[str, Any] = {
            "status": state.status,
            "message": state.message,
            "forecast_source": None,
            "forecast_qps": None,
            # the planned events' figure at now + lead time, part of forecast_qps
            "planned_qps": None,
            "forecast_peak_qps": None,
            "forecast_lower_qps": None,
            "last_fit_timestamp": None,
            "last_fit_age_s": None,
            "next_refit_in_s": round(max(0.0, state.next_refit - now), 1),
            "model_file": state.model_path.name if state.model_path else None,
            "planned_events": [
                {
                    "name": e.name,
                    "start": e.start.isoformat(),
                    "end": e.end.isoformat(),
                    "qps": e.qps,
                    "active": e.covers(now),
                    "covers_lead_time": e.covers(at),
                }
                for e in events
                if e.applies_to(model) and e.end.timestamp() > now
            ],
        }
        f = state.forecast
        yhat = upper = lower = None
        if f is not None:
            yhat, upper, lower = f.at(at, "yhat"), f.at(at, "upper"), f.at(at, "lower")
            if self.config.plan_changes_per_day is not None and upper is not None:
                upper = held_upper(self._planned(state, f), now, at)
            values["last_fit_timestamp"] = f.fitted_at
        planned = planned_qps(events, model, at)
        values["planned_qps"] = planned
        if (yhat is not None and upper is not None) or planned is not None:
            values["forecast_qps"] = {
                "yhat": round(merge_forecast(yhat, planned), 3),
                "upper": round(merge_forecast(upper, planned), 3),
            }
            values["forecast_lower_qps"] = round(merge_forecast(lower, planned), 3)
        if planned is not None and (upper is None or planned > upper):
            # The published figure is the plan, current as of this read: its age is zero, not the
            # last fit's.
            values["last_fit_timestamp"] = now
        values["forecast_source"] = (
            "prophet"
            if f is not None and not self.planned.path
            else "prophet+planned"
            if f is not None
            else "planned_only"
            if self.planned.path
            else None
        )
        if f is None and self.planned.path:
            values["message"] = f"{state.message}; publishing planned events only"
        peaks = {"yhat": [], "upper": []}
        if f is not None:
            rest = [i for i, t in enumerate(f.timestamps) if t >= now]
            for bound in peaks:
                peaks[bound] += [getattr(f, bound)[i] for i in rest]
        horizon_end = now + self._horizon_s()
        for e in events:
            if (
                e.applies_to(model)
                and e.end.timestamp() > now
                and e.start.timestamp() < horizon_end
            ):
                peaks["yhat"].append(e.qps)
                peaks["upper"].append(e.qps)
        if peaks["upper"]:
            values["forecast_peak_qps"] = {bound: round(max(v), 3) for bound, v in peaks.items()}
        if values["last_fit_timestamp"] is not None:
            values["last_fit_age_s"] = round(now - values["last_fit_timestamp"], 1)
        values["accuracy"] = {
            **state.accuracy.as_dict(),
            "window_h": self.config.accuracy_window_h,
            "kept_forecasts": len(state.published_log.points),
            "message": state.accuracy_message,
        }
        return values

    def _keep_published(self, model: str, values: dict[str, Any]) -> None:
        """Keep the forecast just published, for the time it is for (now + lead time)."""
        forecast = values["forecast_qps"]
        if forecast is None or values["forecast_lower_qps"] is None:
            return
        self.models[model].published_log.record(
            PublishedPoint(
                target_s=self.clock() + self.config.lead_time_s,
                yhat=forecast["yhat"],
                lower=values["forecast_lower_qps"],
                upper=forecast["upper"],
            )
        )

    def accuracy_due(self) -> list[str]:
        """Models whose kept forecasts are due for scoring."""
        now = self.clock()
        return [
            name
            for name, state in self.models.items()
            if now >= state.next_accuracy and state.published_log.due(now)
        ]

    def score_accuracy(self, model: str) -> Accuracy:
        """Score the kept forecasts against the actual rate read from the history source.
        Blocking (one range query): call it from a worker thread."""
        state = self.models[model]
        now = self.clock()
        step = self.config.accuracy_step_s
        state.next_accuracy = now + self.config.accuracy_interval_s
        due = state.published_log.due(now)
        try:
            actual = self.history(model, due[0].target_s - step, now, step) if due else None
        except Exception as exc:  # Prometheus down: keep the last figures, say why
            logger.warning("forecaster: %s accuracy: actual rate unavailable: %s", model, exc)
            state.accuracy_message = f"actual rate unavailable: {type(exc).__name__}{SEE_LOG}"
            return state.accuracy
        if actual is not None:
            # the actual rate of a step is keyed by the step's end; half a step either way is it
            state.accuracy = accuracy(score(due, actual.timestamps, actual.rps, step / 2), step)
            state.accuracy_message = (
                f"{state.accuracy.points} of {len(due)} kept forecasts scored against the "
                "actual rate"
            )
        return state.accuracy

    def publish(self) -> None:
        """Re-read the planned events, then set every gauge from the merged forecasts."""
        events = self.planned.read()
        for model in self.models:
            values = self.published(model, events)
            state = self.models[model]
            for status in STATUSES:
                self.backend.get(FORECASTER_STATUS).set(
                    1.0 if values["status"] == status else 0.0,
                    tags={"model_name": model, "status": status},
                )
            if values["forecast_qps"] is None and state.planned_published:
                # The event it published has passed and nothing replaces it: gauges keep their last
                # value, so say "no forecast" explicitly (fit time 0 is older than any
                # max_forecast_age_s).
                self.backend.get(FORECASTER_LAST_FIT).set(0.0, tags={"model_name": model})
                for spec in (FORECAST_QPS, FORECAST_PEAK_QPS):
                    for bound in ("yhat", "upper"):
                        self.backend.get(spec).set(0.0, tags={"model_name": model, "bound": bound})
            elif values["last_fit_timestamp"] is not None:
                self.backend.get(FORECASTER_LAST_FIT).set(
                    values["last_fit_timestamp"], tags={"model_name": model}
                )
            state.planned_published = values["planned_qps"] is not None
            self._keep_published(model, values)
            self._publish_accuracy(model, state.accuracy)
            for spec, key in (
                (FORECAST_QPS, "forecast_qps"),
                (FORECAST_PEAK_QPS, "forecast_peak_qps"),
            ):
                if values[key] is not None:
                    for bound in ("yhat", "upper"):
                        self.backend.get(spec).set(
                            values[key][bound], tags={"model_name": model, "bound": bound}
                        )

    def _publish_accuracy(self, model: str, figures: Accuracy) -> None:
        if figures.points == 0:
            return  # nothing scored: no gauge rather than a zero that reads as "perfect"
        tags = {"model_name": model}
        self.backend.get(FORECAST_SCORED_POINTS).set(float(figures.points), tags=tags)
        self.backend.get(FORECAST_MAPE).set(figures.mape_pct, tags=tags)
        self.backend.get(FORECAST_INTERVAL_COVERAGE).set(figures.coverage, tags=tags)
        self.backend.get(FORECAST_UNDER_MINUTES).set(figures.under_forecast_minutes, tags=tags)

    def status(self) -> dict[str, Any]:
        """Every model's figures plus the schedule, as plain JSON-able values; files by name."""
        path, error = self.planned.path, self.planned.error
        return {
            "models": {model: self.published(model) for model in self.models},
            "refit_interval_s": self.config.refit_interval_s,
            "lead_time_s": self.config.lead_time_s,
            "horizon_h": self.config.horizon_h,
            "planned_events_file": path.name if path else None,
            "planned_events_error": error.replace(str(path), path.name) if error else None,
        }


def _deployment_class():
    """The Serve deployment, built on first use so this module imports without starting anything."""
    from ray import serve

    @serve.deployment(
        num_replicas=1,
        max_ongoing_requests=8,
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
    )
    class Forecaster:
        """Refits on a schedule and publishes forecasts; one replica."""

        def __init__(self, config: dict[str, Any]):
            self.config = ForecasterConfig.from_dict(config)
            self.publisher = ForecastPublisher(
                self.config, prometheus_history(self.config.prometheus_address)
            )
            self.publisher.load_saved()
            self._loop_task: asyncio.Task | None = None
            self._fitting = False

        def _ensure_loop(self) -> None:
            if self._loop_task is None or self._loop_task.done():
                if self._loop_task is not None and self._loop_task.exception():
                    logger.error(
                        "forecaster loop stopped, restarting", exc_info=self._loop_task.exception()
                    )
                self._loop_task = asyncio.get_running_loop().create_task(self._run())

        async def _run(self) -> None:
            while True:
                try:
                    self.publisher.publish()
                    for model in self.publisher.due():
                        # Prophet takes seconds of CPU: a worker thread keeps requests and health
                        # checks answered.
                        self._fitting = True
                        try:
                            await asyncio.to_thread(self.publisher.refit, model)
                        finally:
                            self._fitting = False
                        self.publisher.publish()
                    for model in self.publisher.accuracy_due():
                        await asyncio.to_thread(self.publisher.score_accuracy, model)
                except Exception:
                    logger.exception("forecaster: publishing failed; retrying next interval")
                await asyncio.sleep(self.config.publish_interval_s)

        async def check_health(self) -> None:
            # Serve calls this every few seconds on the replica's loop: a good place to (re)start
            # the schedule.
            self._ensure_loop()

        async def status(self) -> dict[str, Any]:
            """Forecasts, fit ages and statuses per model."""
            self._ensure_loop()
            return {**self.publisher.status(), "fitting": self._fitting}

        async def __call__(self, request: Any = None) -> dict[str, Any]:
            return await self.status()

    return Forecaster


def build_forecaster(config: dict[str, Any] | None):
    """The bound Forecaster deployment for `serve_app.app` to include (validates the config
    first)."""
    validated = ForecasterConfig.from_dict(
        config
    )  # fail at `serve run`, with the bad key named, not in a replica
    return (
        _deployment_class()
        .options(name="Forecaster", ray_actor_options={"num_cpus": validated.num_cpus})
        .bind(config or {})
    )
