"""Seeded generators of request-rate traces (`timestamp,rps` CSV) for backtests.

The bundled traces in lab/traces/ come from `regenerate()` (`recserve gen-traces`), so they can be
reproduced bit for bit and their shape is documented here rather than guessed from a plot:

- `diurnal_2w.csv`: 14 days at 5-minute steps starting Monday 2024-06-03 00:00 Asia/Shanghai.
  Weekdays sleep at about 10% of the peak around 04:00, ramp up from 07:00, peak in the late
  morning and the afternoon with a lunch dip, have a second evening bump around 20:30 and fall off
  toward midnight. Weekends are lower (about 60%) and start later. On top: a slow 3%/week growth, a
  day-to-day level wobble (sd 3%), autocorrelated multiplicative noise (sd about 6%), and three
  unannounced spikes (1.7-2.4x the current rate for 15-40 minutes with a 5-minute rise) that no
  forecast can know about.
- `step.csv`: 6 hours at 1-minute steps, flat at 200 rps, a step to 900 rps at 02:00, back down at
  04:00.
- `spike.csv`: 3 hours at 1-minute steps, 300 rps with a spike to 1500 rps at 01:30 for 10 minutes.
"""

from __future__ import annotations

import csv
import math
from datetime import datetime, timedelta
from pathlib import Path
from statistics import NormalDist
from zoneinfo import ZoneInfo

import numpy as np

TRACES_DIR = Path(__file__).parent / "traces"
ZONE = ZoneInfo("Asia/Shanghai")

# (hour of day, height as a share of the peak, width in hours): the bumps of a weekday and a weekend
# day.
WEEKDAY_BUMPS = [
    (10.5, 0.55, 1.6),
    (15.0, 0.60, 1.9),
    (12.8, 0.18, 1.0),
    (20.5, 0.45, 1.4),
    (17.5, 0.20, 1.0),
]
WEEKEND_BUMPS = [(12.0, 0.35, 2.2), (16.0, 0.30, 2.0), (20.5, 0.35, 1.6)]
NIGHT_FLOOR = 0.10
WEEKEND_SCALE = 1.0  # the weekend bumps are already lower; kept as a knob for other traces


def daily_shape(
    hour: np.ndarray,
    weekend: np.ndarray,
    weekday_bumps: list[tuple[float, float, float]] = WEEKDAY_BUMPS,
    weekend_bumps: list[tuple[float, float, float]] = WEEKEND_BUMPS,
) -> np.ndarray:
    """Share of the weekday peak at each local hour (0..24), weekdays and weekends differing."""

    def bumps(spec):
        total = np.zeros_like(hour)
        for centre, height, width in spec:
            # Distance on the 24-hour circle so late-evening bumps fade smoothly past midnight.
            d = np.minimum(np.abs(hour - centre), 24 - np.abs(hour - centre))
            total += height * np.exp(-0.5 * (d / width) ** 2)
        return total

    weekday = NIGHT_FLOOR + bumps(weekday_bumps)
    weekend_day = NIGHT_FLOOR + WEEKEND_SCALE * bumps(weekend_bumps)
    shape = np.where(weekend, weekend_day, weekday)
    return shape / (NIGHT_FLOOR + _peak_of(weekday_bumps))


def _peak_of(spec) -> float:
    hours = np.linspace(0, 24, 24 * 60, endpoint=False)
    total = np.zeros_like(hours)
    for centre, height, width in spec:
        d = np.minimum(np.abs(hours - centre), 24 - np.abs(hours - centre))
        total += height * np.exp(-0.5 * (d / width) ** 2)
    return float(total.max())


# The generator's day-to-day level wobble and its default step-to-step noise (log space).
DAY_WOBBLE_SD = 0.03
NOISE_SD = 0.06


def diurnal(
    days: int = 14,
    step_s: int = 300,
    peak_rps: float = 1500.0,
    seed: int = 20240603,
    start: datetime = datetime(2024, 6, 3, tzinfo=ZONE),
    spikes: list[tuple[float, float, float]] | None = None,
    noise_sd: float = NOISE_SD,
    weekday_bumps: list[tuple[float, float, float]] = WEEKDAY_BUMPS,
    weekend_bumps: list[tuple[float, float, float]] = WEEKEND_BUMPS,
    expected: bool = False,
) -> list[tuple[datetime, float]]:
    """A diurnal trace with a weekly pattern, growth, noise and unannounced spikes (day offset,
    multiplier, minutes); the bumps are (hour, share of the peak, width in hours).

    expected: the same trace's deterministic part alone (weekly pattern and growth), without the
    day wobble, the noise and the spikes, none of which its history can tell a day ahead: the best
    day-ahead forecast of the trace anyone could make (`--forecast expected` of the suite).
    """
    rng = np.random.default_rng(seed)
    n = days * 86400 // step_s
    times = [start + timedelta(seconds=i * step_s) for i in range(n)]
    hour = np.array([t.hour + t.minute / 60 + t.second / 3600 for t in times])
    weekend = np.array([t.weekday() >= 5 for t in times])
    day_index = np.arange(n) * step_s // 86400

    level = daily_shape(hour, weekend, weekday_bumps, weekend_bumps)
    growth = 1 + 0.03 * (np.arange(n) * step_s / (7 * 86400))
    if expected:
        rate = peak_rps * level * growth
        return [(t, round(float(r), 2)) for t, r in zip(times, rate, strict=True)]
    day_wobble = rng.normal(1.0, DAY_WOBBLE_SD, size=days)[day_index]
    # AR(1) noise in log space: neighbouring steps move together, as real traffic does.
    phi, sd = 0.7, noise_sd
    eps = rng.normal(0, sd * math.sqrt(1 - phi**2), size=n)
    noise = np.empty(n)
    noise[0] = rng.normal(0, sd)
    for i in range(1, n):
        noise[i] = phi * noise[i - 1] + eps[i]
    rate = peak_rps * level * growth * day_wobble * np.exp(noise - sd**2 / 2)

    spikes = spikes if spikes is not None else [(4.62, 1.8, 30), (9.45, 1.7, 40), (11.83, 2.4, 15)]
    t_days = np.arange(n) * step_s / 86400
    for day_offset, multiplier, minutes in spikes:
        rise = 5 / 1440
        into = t_days - day_offset
        ramp = np.clip(into / rise, 0, 1) * (into < minutes / 1440)
        rate *= 1 + (multiplier - 1) * ramp
    return [(t, round(float(r), 2)) for t, r in zip(times, rate, strict=True)]


def expected_upper_factor(noise_sd: float, interval_width: float) -> float:
    """The upper bound of a central `interval_width` interval of `diurnal`'s rate, as a multiple of
    its expected part: the rate is that part x day wobble x exp(noise - sd^2 / 2), taken as
    log-normal with a log-sd of hypot(noise sd, wobble sd)."""
    z = NormalDist().inv_cdf((1 + interval_width) / 2)
    return math.exp(z * math.hypot(noise_sd, DAY_WOBBLE_SD) - noise_sd**2 / 2)


def step(
    hours: int = 6, step_s: int = 60, low: float = 200.0, high: float = 900.0
) -> list[tuple[datetime, float]]:
    """Flat `low`, a step to `high` at 02:00, back to `low` at 04:00."""
    start = datetime(2024, 6, 3, tzinfo=ZONE)
    rows = []
    for i in range(hours * 3600 // step_s):
        t = i * step_s
        rows.append((start + timedelta(seconds=t), high if 2 * 3600 <= t < 4 * 3600 else low))
    return rows


def spike(
    hours: int = 3, step_s: int = 60, base: float = 300.0, peak: float = 1500.0
) -> list[tuple[datetime, float]]:
    """`base` rps with a 10-minute spike to `peak` at 01:30."""
    start = datetime(2024, 6, 3, tzinfo=ZONE)
    rows = []
    for i in range(hours * 3600 // step_s):
        t = i * step_s
        rows.append((start + timedelta(seconds=t), peak if 5400 <= t < 6000 else base))
    return rows


def taylor_demand(days: int | None = None, low_rps: float = 10.0, high_rps: float = 100.0):
    """A real half-hourly demand trace: electricity demand in England and Wales from Monday 5 June
    2000 (Taylor 2003), as the `pmdarima` package ships it, mapped linearly onto low..high req/s.

    The numbers are read from the installed package's source without importing it (its import
    pulls in scikit-learn and statsmodels); nothing is downloaded. Raises ValueError with the
    install command when the package is missing.
    """
    import ast
    import importlib.util

    spec = importlib.util.find_spec("pmdarima")
    source = (
        Path(next(iter(spec.submodule_search_locations))) / "datasets" / "taylor.py"
        if spec and spec.submodule_search_locations
        else None
    )
    if source is None or not source.is_file():
        raise ValueError(
            "the real demand trace comes from the pmdarima package: "
            "`.venv/bin/pip install --no-deps pmdarima==2.1.1`"
        )
    tree = ast.parse(source.read_text())
    lists = [
        node for node in ast.walk(tree) if isinstance(node, ast.List) and len(node.elts) > 1000
    ]
    demand = np.array(ast.literal_eval(lists[0]), dtype=float)
    if days is not None:
        demand = demand[: days * 48]
    scaled = low_rps + (high_rps - low_rps) * (demand - demand.min()) / (
        demand.max() - demand.min()
    )
    start = datetime(2000, 6, 5, tzinfo=ZoneInfo("Europe/London"))
    return [(start + timedelta(minutes=30 * i), round(float(r), 2)) for i, r in enumerate(scaled)]


def write_csv(path: Path, rows: list[tuple[datetime, float]]) -> Path:
    """Write `timestamp,rps` with ISO 8601 timestamps carrying their UTC offset."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["timestamp", "rps"])
        for t, r in rows:
            writer.writerow([t.isoformat(), f"{r:g}"])
    return path


def regenerate(directory: Path = TRACES_DIR) -> list[Path]:
    """Write the bundled traces (deterministic: same seed, same bytes)."""
    return [
        write_csv(directory / "diurnal_2w.csv", diurnal()),
        write_csv(directory / "step.csv", step()),
        write_csv(directory / "spike.csv", spike()),
    ]


if __name__ == "__main__":
    for written in regenerate():
        print(written)
