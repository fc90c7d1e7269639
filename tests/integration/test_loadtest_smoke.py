"""A short smoke scenario through `recserve loadtest` against the real service: requests succeed,
reports are sane."""

from __future__ import annotations

import pandas as pd
import pytest

from loadtests import runner
from loadtests.checks import FEEDBACK_NAME, INFER_NAME, PREDICT_NAME

SMOKE_SECONDS = 15
# Nothing listens on the discard port: without the session's Prometheus the report must say the
# series are missing.
NO_PROMETHEUS = "http://127.0.0.1:9"


@pytest.fixture
def session_prometheus(request) -> str | None:
    """URL of the session's Prometheus scraping this service (the monitoring_stack fixture), when
    there is one."""
    try:
        return request.getfixturevalue("monitoring_stack").prometheus_url
    except pytest.FixtureLookupError:
        return None


@pytest.mark.timeout(240)
def test_smoke_scenario_succeeds_and_reports(service_url, session_prometheus, tmp_path):
    out = tmp_path / "smoke"
    code = runner.main(
        [
            # efficientnet_lite0 by name: the side-by-side model is reserved for tests that count
            # its metrics.
            "smoke",
            "--duration",
            str(SMOKE_SECONDS),
            "--out",
            str(out),
            "--host",
            service_url,
            "--model",
            "efficientnet_lite0",
            "--prometheus",
            session_prometheus or NO_PROMETHEUS,
            "--oip-share",
            "0.3",
            "--feedback-share",
            "0.5",
            "--settle",
            "15",
            "--step",
            "5",
        ]
    )
    log = (out / "locust.log").read_text() if (out / "locust.log").is_file() else "(no locust.log)"
    assert code == 0, f"locust reported failures or errors:\n{log[-3000:]}"

    stats = pd.read_csv(out / "locust_stats.csv", keep_default_na=False).set_index("Name")
    for name in (PREDICT_NAME, INFER_NAME, FEEDBACK_NAME):
        assert name in stats.index, f"no {name} requests were made:\n{stats}"
        assert stats.loc[name, "Request Count"] > 0
        assert stats.loc[name, "Failure Count"] == 0, (out / "locust_failures.csv").read_text()
    # 2-4 users at 1 request/s for SMOKE_SECONDS (the plan's stages scaled to the duration):
    # dozens of recognition requests even on a slow machine
    recognition = int(
        stats.loc[PREDICT_NAME, "Request Count"] + stats.loc[INFER_NAME, "Request Count"]
    )
    assert recognition >= SMOKE_SECONDS
    assert stats.loc[PREDICT_NAME, "50%"] > 0

    summary = (out / "summary.md").read_text()
    assert f"recognition requests: {recognition}, failures: 0 (0.0%)" in summary
    assert (out / "loadtest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    series = pd.read_csv(out / "series.csv")
    assert list(series.columns) == ["timestamp", "elapsed_s", "series", "label", "value"]

    if session_prometheus is None:
        assert "Series missing: Prometheus at http://127.0.0.1:9 did not answer" in summary
        assert series.empty
        return
    # The service's own counter saw the traffic, and at least one recognizer replica ran throughout.
    assert "Series missing" not in summary, summary
    assert series[series["series"] == "request_rate"]["value"].max() > 0
    assert series[series["series"] == "running_replicas"]["value"].max() >= 1
    assert "success: 0" not in summary and "none recorded" not in summary
