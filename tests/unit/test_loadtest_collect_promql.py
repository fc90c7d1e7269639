"""The load test's replica queries, evaluated by promtool on series where a previous run's replicas
linger."""

from __future__ import annotations

import subprocess

import yaml
from promql_names import require

from loadtests import collect


def evaluate(
    tmp_path, query: str, input_series: list[dict], eval_time: str, expected: list[dict]
) -> subprocess.CompletedProcess:
    """`promtool test rules` with one recording rule for `query` and one expectation at
    `eval_time`."""
    (tmp_path / "rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "q", "rules": [{"record": "q", "expr": query}]}]})
    )
    (tmp_path / "test.yml").write_text(
        yaml.safe_dump(
            {
                "rule_files": ["rules.yml"],
                "evaluation_interval": "15s",
                "tests": [
                    {
                        "interval": "15s",
                        "input_series": input_series,
                        "promql_expr_test": [
                            {"expr": "q", "eval_time": eval_time, "exp_samples": expected}
                        ],
                    }
                ],
            }
        )
    )
    return subprocess.run(
        [require("promtool"), "test", "rules", "test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def spec(name: str) -> str:
    return next(s.query for s in collect.series_specs("m", "1m") if s.name == name)


# Two replicas of the previous Serve instance were last scraped at 1 min; the new instance's one
# replica is scraped from 2 min on. At 4 min Prometheus' 5 min look-back still returns the old two.
OLD_AND_NEW = [
    {
        "series": 'ray_serve_deployment_replica_healthy{deployment="Recognizer_m", replica="old1"}',
        "values": "1x4",
    },
    {
        "series": 'ray_serve_deployment_replica_healthy{deployment="Recognizer_m", replica="old2"}',
        "values": "1x4",
    },
    {
        "series": 'ray_serve_deployment_replica_healthy{deployment="Recognizer_m", replica="new"}',
        "values": "_x8 1x12",
    },
]


def test_running_replicas_count_only_series_scraped_lately(tmp_path):
    result = evaluate(
        tmp_path,
        spec("running_replicas"),
        OLD_AND_NEW,
        "4m",
        [{"labels": 'q{deployment="Recognizer_m"}', "value": 1}],
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_without_the_filter_the_lingering_replicas_would_count(tmp_path):
    plain = "sum by (deployment) (ray_serve_deployment_replica_healthy)"
    result = evaluate(
        tmp_path, plain, OLD_AND_NEW, "4m", [{"labels": 'q{deployment="Recognizer_m"}', "value": 3}]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_replica_scraped_on_schedule_counts(tmp_path):
    steady = [
        {
            "series": (
                'ray_serve_deployment_replica_healthy{deployment="Recognizer_m", replica="a"}'
            ),
            "values": "1x20",
        }
    ]
    result = evaluate(
        tmp_path,
        spec("running_replicas"),
        steady,
        "4m",
        [{"labels": 'q{deployment="Recognizer_m"}', "value": 1}],
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_targets_use_the_same_filter(tmp_path):
    targets = [
        {
            "series": 'ray_autoscaler_target_replicas{deployment="Recognizer_m", instance="old"}',
            "values": "3x4",
        },
        {
            "series": 'ray_autoscaler_target_replicas{deployment="Recognizer_m", instance="new"}',
            "values": "_x8 1x12",
        },
    ]
    result = evaluate(
        tmp_path,
        spec("target_replicas"),
        targets,
        "4m",
        [{"labels": 'q{deployment="Recognizer_m"}', "value": 1}],
    )
    assert result.returncode == 0, result.stdout + result.stderr
