"""The matrix's verdicts (lab/suite.py `goals_of`) and its table (lab/suite_report.py): each goal
fails when its figure crosses the line, and the yardsticks shown beside the goals are the ones
named."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from lab import tracegen
from lab.suite import GOALS, TRACES, Cell, SuiteOptions, cells_of, goals_of, matrix_row
from lab.suite_report import write_markdown


def row(strategy: str, slo: float, hours: float, events: int = 0, under: float = 0.0) -> dict:
    return {
        "strategy": strategy,
        "slo_attainment": slo,
        "replica_hours": hours,
        "scale_events": events,
        "underprovisioned_minutes": under,
    }


def rows_of(**predictive) -> dict[str, dict]:
    """Two replayed days where predictive meets every goal unless told otherwise."""
    mine = {"slo": 0.995, "hours": 120.0, "events": 60, "under": 2.0, **predictive}
    return {
        "predictive": row("predictive", **mine),
        "oracle": row("oracle", 0.9901, 100.0, 400, 300.0),
        "oracle_budget": row("oracle_budget", 0.9902, 102.0, 90, 280.0),
        "oracle_matched": row("oracle_matched", 0.995, 108.0, 380, 90.0),
        "fixed_headroom": row("fixed_headroom", 1.0, 200.0),
        "reactive": row("reactive", 0.993, 130.0, 70, 5.0),
        "static_peak": row("static_peak", 1.0, 180.0),
    }


def test_every_goal_is_met_by_the_baseline_rows():
    assert goals_of(rows_of(), 2.0, 0.99) == dict.fromkeys(GOALS, True)


@pytest.mark.parametrize(
    "change, goal",
    [
        ({"slo": 0.9899}, "in_slo"),
        ({"events": 97}, "events"),
        ({"hours": 125.1}, "vs_oracle"),
        ({"under": 5.1}, "under_vs_reactive"),
    ],
)
def test_each_goal_fails_past_its_line(change, goal):
    verdicts = goals_of(rows_of(**change), 2.0, 0.99)
    assert verdicts[goal] is False
    assert all(met for name, met in verdicts.items() if name != goal)


def test_fixed_fleet_goal_fails_past_its_line():
    rows = rows_of()
    rows["fixed_headroom"]["replica_hours"] = 140.0  # 120 / 140 = 0.857 > 0.85
    verdicts = goals_of(rows, 2.0, 0.99)
    assert verdicts["vs_fixed"] is False


def test_matrix_row_and_table_show_the_matched_oracle_apart_from_the_goal(tmp_path):
    rows = rows_of(hours=130.0)  # 1.3x the oracle: the goal fails
    spec = TRACES[0]
    cell = Cell(spec, tmp_path / "t.csv", SimpleNamespace(replica_rps=10.0, slo_target=0.99))
    result = SimpleNamespace(
        window=slice(0, 2 * 86400),
        rate=np.full(2 * 86400, 100.0),
        static_replicas=18,
        headroom_replicas=24,
        mape_overall=7.5,
    )
    line = matrix_row(cell, rows, result, 12.0)
    assert line["over_oracle"] == 1.3
    assert line["over_oracle_matched"] == pytest.approx(130 / 108, abs=1e-3)
    assert line["oracle_matched_slo"] == 0.995
    assert line["goal_vs_oracle"] is False
    assert line["goals_met"] == len(GOALS) - 1

    text = write_markdown(tmp_path / "matrix.md", [line], "recserve backtest-suite").read_text()
    table = [t for t in text.splitlines() if t.startswith(f"| {spec.name} |")]
    assert len(table) == 1
    cells = [c.strip() for c in table[0].strip("|").split("|")]
    heading = next(t for t in text.splitlines() if t.startswith("| trace |"))
    header = [h.strip() for h in heading.strip("|").split("|")]
    assert len(cells) == len(header)
    assert cells[header.index("x oracle_matched")] == "1.20"
    assert cells[header.index("replica-h: predictive / oracle (x)")] == "130 / 100 (1.30) **no**"


# --- `--forecast expected`: the generator's expected rate as the forecast ------------------------


def test_expected_forecast_cells_plan_with_each_generated_traces_expected_rate(tmp_path):
    options = SuiteOptions(
        out=tmp_path, sets=("training",), capacities=(10.0,), forecast="expected"
    )
    cells = cells_of(options)
    assert [c.trace.name for c in cells] == ["diurnal_2w", "diurnal_seed7"]
    for cell in cells:
        assert cell.options.forecast == "given"
        assert cell.options.forecast_file == tmp_path / "traces" / f"{cell.trace.name}.expected.csv"
        assert cell.options.forecast_file.is_file()
        # Noise sd 6% and day wobble 3%, the forecaster's 80% interval.
        assert cell.options.forecast_upper_factor == pytest.approx(1.0878, abs=1e-4)


def test_a_trace_no_generator_made_has_no_expected_rate(tmp_path):
    taylor = next(spec for spec in TRACES if spec.name == "taylor_demand")
    assert taylor.write_expected(tmp_path) is None
    assert not list(tmp_path.iterdir())


def test_the_expected_rate_and_its_upper_bound_fit_the_generated_trace():
    settings = {"days": 28, "seed": 3, "noise_sd": 0.12, "spikes": []}
    actual = np.array([r for _, r in tracegen.diurnal(**settings)])
    expected = np.array([r for _, r in tracegen.diurnal(**settings, expected=True)])
    ratio = actual / expected
    assert 0.97 < float(np.median(ratio)) < 1.03
    # The upper end of a central 80% interval: about a tenth of the steps lie above it.
    upper = tracegen.expected_upper_factor(0.12, 0.8)
    assert 0.06 < float(np.mean(ratio > upper)) < 0.14
    assert float(np.mean(ratio > 1.0)) > 0.3  # the bound is not the rate itself


def test_an_unknown_suite_forecast_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--forecast must be one of prophet, exact, expected"):
        SuiteOptions(out=tmp_path, forecast="given")
