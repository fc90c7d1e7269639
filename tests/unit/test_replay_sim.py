"""Replaying a recorded load test in the simulator: parsing locust's history, the config, the
comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from loadtests.checks import FEEDBACK_NAME, INFER_NAME, PREDICT_NAME, SHED_NAME
from loadtests.replay_compare import compare
from loadtests.replay_inputs import (
    ReplayOptions,
    deployment_settings,
    offered_load,
    real_replicas,
    run_start_from,
)
from loadtests.replay_sim import main, simulate_replay

CONFIG = yaml.safe_load(Path("configs/serve_config.yaml").read_text())
START = 1_800_000_000.0


def history_rows(
    counts: dict[str, list[int]], start: float = START, skip: tuple[int, ...] = ()
) -> pd.DataFrame:
    """Locust's full-history CSV rows: per name and second, the cumulative request count."""
    rows = []
    for name, per_second in counts.items():
        total = 0
        for t, sent in enumerate(per_second):
            total += sent
            if t not in skip:
                rows.append(
                    {"Timestamp": int(start) + t + 1, "Name": name, "Total Request Count": total}
                )
    for t in range(max(len(v) for v in counts.values())):
        rows.append(
            {"Timestamp": int(start) + t + 1, "Name": "Aggregated", "Total Request Count": 10_000}
        )
    return pd.DataFrame(rows)


def test_offered_load_is_recognition_requests_per_second():
    history = history_rows(
        {
            PREDICT_NAME: [3, 4, 5, 6],
            INFER_NAME: [1, 0, 1, 0],
            # Shed requests reached the service too (the policy counts them).
            SHED_NAME: [0, 0, 2, 0],
            FEEDBACK_NAME: [9, 9, 9, 9],  # feedback never reaches a model replica
        }
    )
    assert offered_load(history, START, 4).tolist() == [4, 4, 8, 6]


def test_a_second_locust_skipped_is_spread_over_the_gap():
    history = history_rows({PREDICT_NAME: [2, 4, 6, 8]}, skip=(1,))
    assert offered_load(history, START, 4).tolist() == [2, 5, 5, 8]


def test_no_recognition_rows_is_a_clear_error():
    with pytest.raises(ValueError, match="no recognition requests"):
        offered_load(history_rows({FEEDBACK_NAME: [1, 2]}), START, 2)


def test_run_start_comes_from_the_series_else_locust():
    series = pd.DataFrame({"timestamp": [START + 5, START + 10], "elapsed_s": [5.0, 10.0]})
    assert run_start_from(series, pd.DataFrame()) == START
    assert run_start_from(series.iloc[0:0], history_rows({PREDICT_NAME: [1]})) == START + 1


def test_settings_come_from_the_shipped_config():
    settings = deployment_settings(CONFIG)
    model = CONFIG["applications"][0]["args"]["models"][0]
    assert settings.deployment == "Recognizer_efficientnet_lite0"
    written = model["autoscaling_config"]["policy"]["policy_kwargs"]
    lead_time_s = CONFIG["applications"][0]["args"]["forecaster"]["lead_time_s"]
    # The YAML's kwargs as the application completes them: the model's names, the forecast's lead
    # and landing (planned steps, the forecaster's default).
    assert settings.policy_kwargs == {
        **written,
        "model_name": "efficientnet_lite0",
        "deployment": "Recognizer_efficientnet_lite0",
        "predictive": {**written["predictive"], "lead_time_s": lead_time_s, "landing": "floor"},
    }
    assert (settings.min_replicas, settings.max_replicas, settings.initial_replicas) == (1, 3, 1)
    assert settings.max_batch_size == 16 and settings.batch_wait_ms == pytest.approx(2.0)
    assert deployment_settings(CONFIG, "efficientnet_lite0") == settings
    with pytest.raises(ValueError, match="found: Recognizer_efficientnet_lite0"):
        deployment_settings(CONFIG, "resnet50")


def test_the_simulated_policy_scales_up_on_a_step_and_back_down_after_its_cooldown():
    settings = deployment_settings(CONFIG)
    # 120 s at 5 req/s, 240 s at 70 req/s, then 900 s at 2 req/s; 02:00 UTC = 10:00 in Asia/Shanghai
    # (peak-hours). A scale-down goes to the most the load needed within the 300 s down cooldown,
    # so 3 -> 1 takes two steps 300 s apart after the load falls.
    load = np.concatenate([np.full(120, 5.0), np.full(240, 70.0), np.full(900, 2.0)])
    start = pd.Timestamp("2026-06-10T02:00:00Z").timestamp()
    sim = simulate_replay(load, settings, start, ReplayOptions(startup_s=15, replica_rps=25))
    # 5 req/s on one instance is below every threshold.
    assert sim["simulated_target"].iloc[:120].eq(1).all()
    up = int(sim.index[sim["simulated_target"] > 1][0])
    # After the step, within a rate window; the queue signal may see it at once.
    assert 120 <= up < 180
    assert sim["simulated_target"].max() == 3  # step_up 2, max_replicas 3
    ready_at_3 = int(sim.index[sim["simulated_ready"] == 3][0])
    assert ready_at_3 - up == pytest.approx(15, abs=1)  # start-up time
    down = int(sim.index[(sim.index > 360) & (sim["simulated_target"] < 3)][0])
    assert down >= up + 300  # not before the 300 s down cooldown since the scale-up has passed
    assert sim["simulated_target"].iloc[-1] == 1


def real_series(
    points: dict[str, list[tuple[float, float]]], deployment: str = "Recognizer_m"
) -> pd.DataFrame:
    rows = [
        {"series": name, "label": deployment, "elapsed_s": t, "value": v, "timestamp": START + t}
        for name, values in points.items()
        for t, v in values
    ]
    return pd.DataFrame(rows)


def test_real_replicas_hold_each_sample_until_the_next():
    series = real_series(
        {
            "running_replicas": [(0, 1), (5, 1), (10, 3)],
            "target_replicas": [(0, 1), (5, 3), (10, 3)],
        }
    )
    real = real_replicas(series, "Recognizer_m", 12)
    assert real["real_running"].tolist() == [1] * 10 + [3, 3]
    assert real["real_target"].tolist() == [1] * 5 + [3] * 7
    with pytest.raises(ValueError, match="no running_replicas for Recognizer_x"):
        real_replicas(series, "Recognizer_x", 12)


def test_comparison_figures_are_counted_from_both_timelines():
    real = pd.DataFrame(
        {
            "elapsed_s": range(10),
            "real_running": [1, 1, 1, 1, 3, 3, 3, 3, 2, 2],
            "real_target": [1, 1, 3, 3, 3, 3, 3, 2, 2, 2],
        }
    )
    sim = pd.DataFrame(
        {
            "elapsed_s": range(10),
            "simulated_ready": [1, 1, 1, 3, 3, 3, 3, 3, 3, 1],
            "simulated_target": [1, 3, 3, 3, 3, 3, 3, 3, 1, 1],
        }
    )
    c = compare(real, sim)
    assert (c.replica_seconds_real, c.replica_seconds_sim) == (20, 22)
    assert (c.peak_real, c.peak_sim) == (3, 3)
    assert (c.scale_events_real, c.scale_events_sim) == (2, 2)
    assert (c.first_up_real_s, c.first_up_sim_s) == (2, 1)
    assert (c.last_down_real_s, c.last_down_sim_s) == (7, 8)
    assert c.agreement == pytest.approx(0.7)  # equal at seconds 0-2 and 4-7
    assert c.within_one == pytest.approx(0.9)  # only second 3 (1 against 3) is off by more than one


def test_event_times_are_run_seconds_even_when_the_real_series_starts_late():
    # Prometheus' first replica sample comes some seconds into the run: those seconds have no real
    # figure.
    real = pd.DataFrame(
        {
            "elapsed_s": range(8),
            "real_running": [np.nan, np.nan, 1, 1, 1, 3, 3, 3],
            "real_target": [np.nan, np.nan, 1, 1, 3, 3, 3, 3],
        }
    )
    sim = pd.DataFrame(
        {
            "elapsed_s": range(8),
            "simulated_ready": [1, 1, 1, 1, 1, 1, 3, 3],
            "simulated_target": [1, 1, 1, 3, 3, 3, 3, 3],
        }
    )
    c = compare(real, sim)
    assert (c.first_up_real_s, c.first_up_sim_s) == (4, 3)
    # Over the seconds both know.
    assert c.replica_seconds_real == 12 and c.replica_seconds_sim == 10


def test_the_command_writes_its_three_files(tmp_path):
    load = [5] * 60 + [70] * 120 + [2] * 60
    history_rows({PREDICT_NAME: load}).to_csv(tmp_path / "locust_stats_history.csv", index=False)
    real_series(
        {
            "running_replicas": [(t, 1 if t < 100 else 3) for t in range(0, 240, 5)],
            "target_replicas": [(t, 1 if t < 85 else 3) for t in range(0, 240, 5)],
        },
        "Recognizer_efficientnet_lite0",
    ).to_csv(tmp_path / "series.csv", index=False)
    assert main([str(tmp_path), "--seed", "3"]) == 0
    simulated = pd.read_csv(tmp_path / "simulated.csv")
    assert len(simulated) == 240 and {"simulated_ready", "real_running"} <= set(simulated.columns)
    text = (tmp_path / "simulated.md").read_text()
    assert "| peak replicas | 3 |" in text and "Recognizer_efficientnet_lite0" in text
    assert (tmp_path / "replicas_vs_sim.png").stat().st_size > 10_000


def test_the_command_explains_a_missing_folder(tmp_path, capsys):
    assert main([str(tmp_path / "nothing")]) == 2
    assert "locust_stats_history.csv" in capsys.readouterr().err
