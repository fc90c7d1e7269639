"""Request-rate forecasts with Prophet: fit on history, predict plain values, persist as JSON.

The model is fitted on log(rate): traffic varies by multiples (night vs. noon), the noise is
proportional to the level, and the exponentiated interval never goes negative. Seasonality is daily,
with separate weekday and weekend shapes once the history holds both (a weekend morning starts
later, which one daily curve cannot say), plus weekly once the history covers a full week; optional
public holidays by country. The trend is flat by default: two or three weeks of history cannot tell
a trend from a busy week, and an extrapolated trend was the largest error in walk-forward tests on
the bundled trace (docs/AUTOSCALING.md).
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Literal, Sequence

import numpy as np

from serve_app.autoscaling.planner import value_at
from serve_app.autoscaling.zones import zone_of

FORMAT = "recognition-serve-forecaster/1"
Status = Literal["ok", "insufficient_history", "error"]


@dataclass(frozen=True)
class ForecasterSettings:
    """How the Prophet model is shaped; stored with every saved model."""

    timezone: str = "UTC"
    interval_width: float = 0.8
    growth: Literal["flat", "linear"] = "flat"
    changepoint_prior_scale: float = 0.05
    daily_fourier_order: int = 10
    weekly: bool | None = None  # None: on once the history covers a full week
    # None: on once the history has both weekdays and weekend days
    weekend_daily: bool | None = None
    holidays_country: str | None = None
    min_history_s: float = 2 * 86400
    min_points: int = 48

    def __post_init__(self):
        zone_of(self.timezone)
        if not 0 < self.interval_width < 1:
            raise ValueError(
                "interval_width must be in (0, 1), e.g. 0.8 for an 80% interval, got "
                f"{self.interval_width!r}"
            )
        if self.growth not in ("flat", "linear"):
            raise ValueError(f"growth must be 'flat' or 'linear', got {self.growth!r}")
        if self.daily_fourier_order < 1:
            raise ValueError(f"daily_fourier_order must be >= 1, got {self.daily_fourier_order!r}")
        if self.min_history_s < 86400:
            raise ValueError(
                "min_history_s must be at least one day (86400) for a daily pattern, got "
                f"{self.min_history_s!r}"
            )


@dataclass(frozen=True)
class Forecast:
    """Predicted requests per second at unix timestamps, with the interval bounds."""

    timestamps: list[float]
    yhat: list[float]
    lower: list[float]
    upper: list[float]
    fitted_at: float  # unix seconds of the fit
    history_end: float  # unix seconds of the last history point the fit saw

    def at(self, when: float, bound: Literal["yhat", "lower", "upper"] = "upper") -> float | None:
        """The forecast at `when` (interpolated), None outside the forecast."""
        return value_at(self.timestamps, getattr(self, bound), when)

    def peak(self, bound: Literal["yhat", "upper"] = "upper") -> float | None:
        """Largest value over the whole forecast."""
        values = getattr(self, bound)
        return max(values) if values else None


@dataclass(frozen=True)
class FitOutcome:
    """What a fit produced: `ok`, or why there is no model (`insufficient_history`, `error`)."""

    status: Status
    message: str
    points: int = 0
    history_s: float = 0.0


def validate_history(timestamps: Sequence[float], rps: Sequence[float]) -> None:
    """Raise a precise ValueError for the first problem in a rate history (Prophet's style)."""
    if len(timestamps) != len(rps):
        raise ValueError(
            f"timestamps ({len(timestamps)}) and rps ({len(rps)}) must have the same length"
        )
    if len(timestamps) == 0:
        raise ValueError("the history is empty: give at least two days of request rates")
    ts = np.asarray(timestamps, dtype=float)
    ys = np.asarray(rps, dtype=float)
    bad_ts = np.flatnonzero(~np.isfinite(ts))
    if bad_ts.size:
        raise ValueError(
            f"timestamp at index {bad_ts[0]} is not a finite number: {timestamps[bad_ts[0]]!r}"
        )
    steps = np.diff(ts)
    if (steps <= 0).any():
        i = int(np.flatnonzero(steps <= 0)[0])
        raise ValueError(
            f"timestamps must increase strictly: index {i + 1} ({ts[i + 1]:.0f}) follows "
            f"{ts[i]:.0f}; sort them and drop duplicates"
        )
    bad = np.flatnonzero(~np.isfinite(ys))
    if bad.size:
        raise ValueError(
            f"rps at index {bad[0]} is not a finite number ({rps[bad[0]]!r}); leave gaps out "
            "instead of NaN"
        )
    negative = np.flatnonzero(ys < 0)
    if negative.size:
        raise ValueError(
            f"rps at index {negative[0]} is negative ({ys[negative[0]]:g}): "
            "a request rate cannot be"
        )


def covered_seconds(timestamps: Sequence[float]) -> float:
    """Time the history covers: first to last point plus one typical step (7 daily points cover 7
    days, not 6)."""
    if len(timestamps) < 2:
        return 0.0
    step = float(np.median(np.diff(np.asarray(timestamps, dtype=float))))
    return float(timestamps[-1] - timestamps[0]) + step


def _quiet_prophet() -> None:
    for name in ("cmdstanpy", "prophet", "prophet.plot"):
        logging.getLogger(name).setLevel(logging.WARNING)


class RateForecaster:
    """Prophet on one model's request rate: fit(history) -> FitOutcome, predict(...) -> Forecast,
    JSON persistence."""

    # Prophet needs positive values in log space; a quiet minute must not become log(0).
    FLOOR_RPS = 0.01

    def __init__(self, settings: ForecasterSettings | None = None):
        self.settings = settings or ForecasterSettings()
        self._zone = zone_of(self.settings.timezone)
        self._model = None
        self._weekly = bool(self.settings.weekly)
        self._weekend_daily = bool(self.settings.weekend_daily)
        self.fitted_at: float | None = None
        self.history_end: float | None = None

    @property
    def fitted(self) -> bool:
        """True once a fit produced a model."""
        return self._model is not None

    # ------------------------------------------------------------------ frames

    def _local_naive(self, timestamps: Sequence[float]):
        import pandas as pd

        ts = pd.to_datetime(np.asarray(timestamps, dtype=float), unit="s", utc=True)
        return ts.tz_convert(self._zone).tz_localize(None)

    def _frame(self, timestamps: Sequence[float]):
        import pandas as pd

        frame = pd.DataFrame({"ds": self._local_naive(timestamps)})
        if self._weekend_daily:
            weekend = frame["ds"].dt.day_of_week >= 5
            frame["weekend"] = weekend
            frame["weekday"] = ~weekend
        return frame

    def _choose_seasonalities(self, timestamps: Sequence[float]) -> None:
        """Resolve the automatic settings: a weekly term needs a full week, split days need both
        kinds of day."""
        s = self.settings
        span = covered_seconds(timestamps)
        self._weekly = s.weekly if s.weekly is not None else span >= 7 * 86400
        if s.weekend_daily is not None:
            self._weekend_daily = s.weekend_daily
        else:
            weekdays = set(self._local_naive(timestamps).day_of_week)
            self._weekend_daily = bool(weekdays & {5, 6}) and bool(weekdays - {5, 6})

    def _new_model(self):
        from prophet import Prophet

        s = self.settings
        model = Prophet(
            growth=s.growth,
            changepoint_prior_scale=s.changepoint_prior_scale,
            interval_width=s.interval_width,
            yearly_seasonality=False,
            weekly_seasonality=self._weekly,
            daily_seasonality=s.daily_fourier_order if not self._weekend_daily else False,
        )
        if self._weekend_daily:
            model.add_seasonality(
                "daily_weekday",
                period=1,
                fourier_order=s.daily_fourier_order,
                condition_name="weekday",
            )
            model.add_seasonality(
                "daily_weekend",
                period=1,
                fourier_order=s.daily_fourier_order,
                condition_name="weekend",
            )
        if s.holidays_country:
            model.add_country_holidays(country_name=s.holidays_country)
        return model

    # ------------------------------------------------------------------ fit / predict

    def fit(
        self, timestamps: Sequence[float], rps: Sequence[float], now: float | None = None
    ) -> FitOutcome:
        """Fit on a rate history; too little history returns `insufficient_history` and keeps no
        model."""
        validate_history(timestamps, rps)
        span = covered_seconds(timestamps)
        if span < self.settings.min_history_s or len(timestamps) < self.settings.min_points:
            self._model = None
            return FitOutcome(
                "insufficient_history",
                f"{span / 3600:.1f} h and {len(timestamps)} points of history; a forecast needs "
                f"at least {self.settings.min_history_s / 3600:.0f} h and "
                f"{self.settings.min_points} points",
                len(timestamps),
                span,
            )
        _quiet_prophet()
        self._choose_seasonalities(timestamps)
        frame = self._frame(timestamps)
        frame["y"] = np.log(np.maximum(np.asarray(rps, dtype=float), self.FLOOR_RPS))
        model = self._new_model()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(frame)
        except Exception as exc:  # Stan optimisation failures surface as several exception types
            self._model = None
            return FitOutcome(
                "error", f"Prophet fit failed: {type(exc).__name__}: {exc}", len(timestamps), span
            )
        self._model = model
        self.history_end = float(timestamps[-1])
        self.fitted_at = float(
            now if now is not None else datetime.now(dt_timezone.utc).timestamp()
        )
        return FitOutcome(
            "ok",
            f"fitted on {span / 86400:.1f} days ({len(timestamps)} points)",
            len(timestamps),
            span,
        )

    def predict(self, start: float, horizon_s: float, step_s: float) -> Forecast:
        """Forecast from `start` for `horizon_s` seconds every `step_s` seconds (requires a fitted
        model)."""
        if self._model is None:
            raise ValueError(
                "the forecaster has no model: fit() it on enough history (or load() one) before "
                "predicting"
            )
        if not (horizon_s > 0 and step_s > 0 and math.isfinite(start)):
            raise ValueError(
                f"need a finite start and positive horizon and step, got {start!r}, {horizon_s!r}, "
                f"{step_s!r}"
            )
        timestamps = [start + i * step_s for i in range(int(horizon_s // step_s) + 1)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self._model.predict(self._frame(timestamps))
        return Forecast(
            timestamps=timestamps,
            yhat=[float(v) for v in np.exp(out["yhat"].to_numpy())],
            lower=[float(v) for v in np.exp(out["yhat_lower"].to_numpy())],
            upper=[float(v) for v in np.exp(out["yhat_upper"].to_numpy())],
            fitted_at=float(self.fitted_at or 0.0),
            history_end=float(self.history_end or 0.0),
        )

    # ------------------------------------------------------------------ persistence

    def to_json(self) -> str:
        """The fitted model as JSON (prophet.serialize) with our settings and the library
        versions."""
        if self._model is None:
            raise ValueError("refusing to save an unfitted forecaster: fit() it first")
        import prophet
        from prophet.serialize import model_to_json

        return json.dumps(
            {
                "format": FORMAT,
                "prophet_version": prophet.__version__,
                "settings": asdict(self.settings),
                "fitted_at": self.fitted_at,
                "history_end": self.history_end,
                "weekly": self._weekly,
                "weekend_daily": self._weekend_daily,
                "model": model_to_json(self._model),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> "RateForecaster":
        """A forecaster restored from `to_json()` output; raises ValueError naming what is wrong."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"saved forecaster is not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"not a saved forecaster (format {found!r}, expected {FORMAT!r})")
        from prophet.serialize import model_from_json

        forecaster = cls(ForecasterSettings(**data["settings"]))
        forecaster._model = model_from_json(data["model"])
        forecaster._weekly = bool(data.get("weekly"))
        forecaster._weekend_daily = bool(data.get("weekend_daily"))
        forecaster.fitted_at = data.get("fitted_at")
        forecaster.history_end = data.get("history_end")
        return forecaster


def mape(actual: Sequence[float], predicted: Sequence[float]) -> float:
    """Mean absolute percentage error (%) over points whose actual value is positive."""
    a = np.asarray(actual, dtype=float)
    p = np.asarray(predicted, dtype=float)
    if a.shape != p.shape:
        raise ValueError(f"actual ({a.size}) and predicted ({p.size}) differ in length")
    keep = a > 0
    if not keep.any():
        raise ValueError("MAPE needs at least one positive actual value")
    return float(np.mean(np.abs(p[keep] - a[keep]) / a[keep]) * 100)
