"""Backfilling history: counters rebuilt from rates, the OpenMetrics text, the whole-day shift, and
real TSDB blocks from promtool."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from serve_app.autoscaling.history_backfill import backfill_trace, main, shift_to_recent
from serve_app.autoscaling.rate_history import RateHistory, counter_increases
from serve_app.monitoring import metrics as m
from serve_app.monitoring.backfill import (
    BackfillError,
    CounterSeries,
    backfill,
    counter_samples,
    openmetrics_text,
    request_counter_labels,
)
from serve_app.monitoring.stack_config import StackConfig
from serve_app.paths import CONFIGS_DIR

DAY = 86400.0


@pytest.mark.parametrize(
    "timestamps, rps, interval, expected",
    [
        # 2 QPS for 60 s, then 4 QPS for the last row's step (60 s): 0, 30 s * 2 = 60, 120,
        # 120 + 30 * 4 = 240, 360 at the end (t = 120).
        ([0, 60], [2, 4], 30, [0, 60, 120, 240, 360]),
        # Zero traffic keeps the counter flat: 0, 0, then 1 QPS * 10 s = 10 at t = 20.
        ([0, 10], [0, 1], 10, [0, 0, 10]),
        # A sample inside a row: 5 QPS * 25 s = 125; 5 * 50 = 250; then 250 + 1 * 25 = 275, ...
        ([0, 50, 100], [5, 1, 1], 25, [0, 125, 250, 275, 300, 325, 350]),
    ],
)
def test_counter_samples(timestamps, rps, interval, expected):
    grid, values = counter_samples(timestamps, rps, interval)
    assert list(values) == pytest.approx(expected)
    assert list(grid) == [timestamps[0] + i * interval for i in range(len(expected))]


def test_the_forecasters_reading_of_the_counters_gives_back_the_rates():
    """The round trip: a trace -> backfilled counter samples -> rates_from_counters' increases."""
    ts = np.arange(0, 3600, 300.0)
    rps = np.linspace(1, 12, len(ts))
    grid, values = counter_samples(ts, rps, 15)
    # what the Forecaster reads at its 300 s step: the counter at each step
    at_steps = values[:: int(300 / 15)]
    increases = counter_increases(grid[::20], at_steps, 300, 1500)
    rates = [increases[t] / 300 for t in sorted(increases)]
    # the last row's rate holds for one step too, so every row comes back
    assert rates == pytest.approx(list(rps))


@pytest.mark.parametrize(
    "timestamps, rps, problem",
    [
        ([0], [1], "fewer than two rows"),
        ([0, 60, 60], [1, 1, 1], "increasing timestamps"),
        ([0, 60], [1, -1], "non-negative"),
    ],
)
def test_counter_samples_refuses_bad_traces(timestamps, rps, problem):
    with pytest.raises(ValueError, match=problem):
        counter_samples(timestamps, rps, 15)


def test_labels_are_the_services_own():
    labels = request_counter_labels("m", "3", "recognition", "Ingress")
    assert set(m.REQUEST_TOTAL.tag_keys) <= set(labels)
    assert labels["status"] == "success" and labels["model_version"] == "3"


def test_openmetrics_text_is_one_counter_family():
    series = CounterSeries(
        {"model_name": 'a"b', "status": "success"}, np.array([1.0, 2.0]), np.array([0.0, 5.5])
    )
    text = openmetrics_text([series])
    assert text.splitlines() == [
        f"# HELP ray_model_request {m.REQUEST_TOTAL.description}",
        "# TYPE ray_model_request counter",
        'ray_model_request_total{model_name="a\\"b",status="success"} 0.000000 1.000',
        'ray_model_request_total{model_name="a\\"b",status="success"} 5.500000 2.000',
        "# EOF",
    ]


@pytest.mark.parametrize(
    "last, now, expected_end",
    [
        # The trace ends (last row 1000 + step 100 = 1100) 10 days before now = 10 * DAY + 1100:
        # moved by 10 days, it ends exactly at now.
        (1000.0, 10 * DAY + 1100, 10 * DAY + 1100),
        # Ending 2.5 days before now: moved by floor(2.5) = 2 days, half a day before now.
        (1000.0, 2.5 * DAY + 1100, 2 * DAY + 1100),
        # Ending in the future (0.3 days after now): moved back one day, 0.7 days before now.
        (1000.0, 1100 - 0.3 * DAY, 1100 - DAY),
    ],
)
def test_shift_to_recent_moves_by_whole_days(last, now, expected_end):
    history = RateHistory(np.array([last - 200, last - 100, last]), np.array([1.0, 2, 3]))
    shifted = shift_to_recent(history, now)
    assert shifted.timestamps[-1] + 100 == pytest.approx(expected_end)
    assert ((shifted.timestamps - history.timestamps) % DAY == 0).all()  # time of day kept
    assert list(shifted.rps) == [1.0, 2, 3]


def test_nothing_to_backfill_is_an_error(tmp_path):
    with pytest.raises(BackfillError, match="nothing to backfill"):
        backfill([], tmp_path / "data")


needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (make system-deps)"
)


def write_trace(path: Path, start: float, rows: int, step: float, rps: float) -> Path:
    lines = ["timestamp,rps"] + [f"{start + i * step:.0f},{rps}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


@needs_promtool
def test_backfill_trace_writes_blocks_with_every_sample(tmp_path):
    """Two days at 2 QPS, 5-minute rows, sampled every 15 s, for every model the test config's
    Forecaster forecasts: promtool's blocks hold every sample."""
    now = 1_800_000_000.0
    trace = write_trace(tmp_path / "t.csv", now - 30 * DAY, 576, 300, 2.0)
    data = tmp_path / "stack" / "prometheus" / "data"
    result = backfill_trace(trace, data, CONFIGS_DIR / "serve_config.test.yaml", now=now)
    # moved by 28 days: ends within the day before now
    assert now - DAY < result.end <= now
    # 576 rows * 300 s = 48 h at one sample per 15 s, plus the closing sample: 11521 per series
    per_series = 576 * 300 // 15 + 1
    assert result.samples == per_series * result.series
    metas = [json.loads((b / "meta.json").read_text()) for b in result.blocks]
    assert all(b.parent == data for b in result.blocks)
    assert sum(meta["stats"]["numSamples"] for meta in metas) == result.samples
    assert min(meta["minTime"] for meta in metas) == pytest.approx(result.start * 1000, abs=1)


@needs_promtool
def test_recserve_backfill_command(tmp_path, capsys):
    trace = write_trace(tmp_path / "t.csv", 1_700_000_000, 30, 60, 1.5)
    state = tmp_path / "stack"
    code = main(
        [
            str(trace),
            "--config",
            str(CONFIGS_DIR / "serve_config.test.yaml"),
            "--model",
            "lite0_canary",
            "--state-dir",
            str(state),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "backfilled 1 series, 121 samples" in capsys.readouterr().out
    assert any(StackConfig(state_dir=state).prometheus_data_dir.iterdir())


def test_recserve_backfill_names_a_bad_trace(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("time,qps\n1,2\n")
    assert main([str(bad), "--state-dir", str(tmp_path)]) == 2
    assert "the first line must be the header `timestamp,rps`" in capsys.readouterr().err


def test_unknown_models_are_named(tmp_path):
    trace = write_trace(tmp_path / "t.csv", 1_700_000_000, 30, 60, 1.5)
    with pytest.raises(ValueError, match=r"models \['nope'\] are not in the config"):
        backfill_trace(trace, tmp_path / "d", CONFIGS_DIR / "serve_config.test.yaml", ["nope"])
