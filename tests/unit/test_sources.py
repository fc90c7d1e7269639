"""Request-rate history: CSV parsing, counters with resets, restarts and gaps, Prometheus range
queries over HTTP."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from serve_app.autoscaling.rate_history import (
    RateHistory,
    counter_increases,
    prometheus_rate_history,
    rates_from_counters,
    read_csv,
    trace_utc_offset,
    write_csv,
)
from serve_app.monitoring import prometheus_api
from serve_app.monitoring.prometheus_api import PrometheusUnavailable

# 2024-06-03T00:00:00+08:00
T0 = 1717344000.0


def write(tmp_path, text):
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


def test_csv_reads_iso_with_offsets_unix_and_naive(tmp_path):
    path = write(
        tmp_path,
        "timestamp,rps\n2024-06-03T00:00:00+08:00,10\n1717344300,20\n2024-06-03T00:10:00,30\n",
    )
    history = read_csv(path, timezone="Asia/Shanghai")  # the naive time is Shanghai local time
    assert history.timestamps.tolist() == [T0, T0 + 300, T0 + 600]
    assert history.rps.tolist() == [10.0, 20.0, 30.0]


def test_csv_rows_are_sorted_by_time(tmp_path):
    history = read_csv(write(tmp_path, "timestamp,rps\n600,2\n0,1\n"))
    assert history.timestamps.tolist() == [0.0, 600.0] and history.rps.tolist() == [1.0, 2.0]


@pytest.mark.parametrize(
    "text, message",
    [
        ("time,value\n0,1\n", "the first line must be the header `timestamp,rps`"),
        ("timestamp,rps\n", "no rows after the header"),
        (
            "timestamp,rps\n0,1\nyesterday,2\n",
            "trace.csv:3: timestamp 'yesterday' is neither unix seconds nor ISO 8601",
        ),
        ("timestamp,rps\n0,1\n60,-4\n", "trace.csv:3: rps must be a non-negative number, got '-4'"),
        ("timestamp,rps\n0,1\n60,nan\n", "trace.csv:3: rps must be a non-negative number"),
        ("timestamp,rps\n0,1\n60\n", "trace.csv:3: expected `timestamp,rps`"),
        ("timestamp,rps\n0,1\n0,2\n", "appears more than once"),
    ],
)
def test_csv_errors_name_the_line(tmp_path, text, message):
    with pytest.raises(ValueError) as info:
        read_csv(write(tmp_path, text))
    assert message in str(info.value)


def test_missing_file():
    with pytest.raises(ValueError, match="does not exist"):
        read_csv("/nonexistent/trace.csv")


def test_regular_step_and_gap_message():
    regular = RateHistory(np.array([0.0, 300.0, 600.0]), np.ones(3))
    assert regular.require_regular() == 300.0
    gappy = RateHistory(np.array([0.0, 300.0, 600.0, 1500.0, 1800.0]), np.ones(5))
    with pytest.raises(ValueError, match="rows 4 and 5 are 900s apart; fill the gap"):
        gappy.require_regular()


def test_write_then_read_round_trips_and_keeps_the_offset(tmp_path):
    history = RateHistory(np.array([T0, T0 + 60]), np.array([1.5, 2.25]))
    path = write_csv(tmp_path / "out.csv", history, timezone="Asia/Shanghai")
    assert trace_utc_offset(path) == "+08:00"
    again = read_csv(path)
    assert again.timestamps.tolist() == history.timestamps.tolist()
    assert again.rps.tolist() == history.rps.tolist()


def test_bundled_trace_offset():
    assert trace_utc_offset("lab/traces/diurnal_2w.csv") == "+08:00"


# ------------------------------------------------------------------------------------------
# counters


@pytest.mark.parametrize(
    "timestamps, values, expected",
    [
        # Steady counting: +60 each minute.
        ([0, 60, 120], [100, 160, 220], {60: 60, 120: 60}),
        # Reset (the replica restarted): 160 -> 30 counts 30, not -130.
        ([0, 60, 120], [100, 160, 30], {60: 60, 120: 30}),
        # One sample missing (within max_gap 300): 120 over two steps -> 60 each.
        ([0, 60, 180], [0, 60, 180], {60: 60, 120: 60, 180: 60}),
        # A gap longer than max_gap: nothing is attributed across it.
        ([0, 60, 600, 660], [0, 60, 500, 560], {60: 60, 660: 60}),
    ],
)
def test_counter_increases(timestamps, values, expected):
    assert counter_increases(timestamps, values, step_s=60, max_gap_s=300) == pytest.approx(
        expected
    )


def test_rates_sum_series_and_survive_restarts():
    # Replica A serves until t=120 and disappears; replica B appears at t=120 (a restart under a new
    # worker id).
    a = ([0, 60, 120], [0, 600, 1200])  # 10/s
    b = ([120, 180, 240], [0, 300, 600])  # 5/s from its second sample on
    history = rates_from_counters([a, b], step_s=60, max_gap_s=300)
    assert history.timestamps.tolist() == [60, 120, 180, 240]
    assert history.rps.tolist() == pytest.approx([10.0, 10.0, 5.0, 5.0])


# ------------------------------------------------------------------------------------------
# Prometheus over HTTP


class RangeQueries(BaseHTTPRequestHandler):
    """A real HTTP server answering /api/v1/query_range with a counter per series, as Prometheus
    does."""

    series: list[tuple[dict, callable]] = []
    requests: list[dict] = []
    refuse = False

    def _send(self, payload: dict, status: int = 200):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlparse(self.path)
        params = {k: v[0] for k, v in parse_qs(url.query).items()}
        RangeQueries.requests.append(params)
        if self.refuse:
            self._send(
                {"status": "error", "errorType": "bad_data", "error": "bad_data: parse error"}, 200
            )
            return
        if url.path != "/api/v1/query_range":
            self.send_response(404)
            self.end_headers()
            return
        start, end, step = float(params["start"]), float(params["end"]), float(params["step"])
        result = []
        for labels, value_at in self.series:
            values = []
            t = start
            while t <= end:
                v = value_at(t)
                if v is not None:
                    values.append([t, str(v)])
                t += step
            if values:
                result.append({"metric": labels, "values": values})
        self._send({"status": "success", "data": {"resultType": "matrix", "result": result}})

    def log_message(self, *args):
        pass


@pytest.fixture
def prometheus():
    server = ThreadingHTTPServer(("127.0.0.1", 0), RangeQueries)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    RangeQueries.requests = []
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_prometheus_history_with_reset_restart_and_outage(prometheus, monkeypatch):
    # success counter of replica A: 2/s, reset at t=570 (the process restarted under the same
    # labels); error counter: 1/s throughout; Prometheus saw nothing between 1200 and 1800 (an
    # outage).
    def success(t):
        if 1200 < t < 1800:
            return None
        return 2 * t if t < 570 else 2 * (t - 570)

    def errors(t):
        return None if 1200 < t < 1800 else t

    RangeQueries.series = [
        ({"model_name": "m", "status": "success", "replica": "a"}, success),
        ({"model_name": "m", "status": "server_error", "replica": "a"}, errors),
    ]
    # force several chunked requests
    monkeypatch.setattr(prometheus_api, "MAX_POINTS_PER_QUERY", 10)
    history = prometheus_rate_history(prometheus, "m", 0, 2400, step_s=60)
    assert len(RangeQueries.requests) == 5  # 41 points in chunks of 10
    assert 'ray_model_request_total{model_name="m"}' == RangeQueries.requests[0]["query"]
    by_time = dict(zip(history.timestamps.tolist(), history.rps.tolist(), strict=True))
    assert by_time[60] == pytest.approx(3.0)  # 2 + 1 per second
    # The reset minute: success went 1080 -> 60; the 60 counted since the restart are kept (the 60
    # before it are lost, as with Prometheus's rate()): (60 + 60 errors) / 60 s = 2/s, never a
    # negative rate.
    assert by_time[600] == pytest.approx(2.0)
    assert by_time[660] == pytest.approx(3.0)
    # The outage is a gap, not zero traffic: no point between 1200 and 1800 (max gap is 5 steps =
    # 300 s).
    assert not any(1200 < t < 1860 for t in by_time)
    assert by_time[1860] == pytest.approx(3.0)


def test_unreachable_prometheus_is_a_clear_error():
    with pytest.raises(
        PrometheusUnavailable, match="Prometheus at http://127.0.0.1:9 did not answer"
    ):
        prometheus_rate_history("127.0.0.1:9", "m", 0, 600, step_s=60, timeout_s=2)


def test_refused_query_is_reported(prometheus, monkeypatch):
    monkeypatch.setattr(RangeQueries, "refuse", True)
    with pytest.raises(PrometheusUnavailable, match="refused .*: bad_data: parse error"):
        prometheus_rate_history(prometheus, "m", 0, 600)


def test_range_must_be_forward():
    with pytest.raises(ValueError, match="end .* must be after start"):
        prometheus_rate_history("127.0.0.1:9", "m", 600, 0)
