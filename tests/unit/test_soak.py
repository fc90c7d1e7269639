"""`recserve soak`: the verdict from samples (tables), the duration syntax, the files it writes."""

from __future__ import annotations

import asyncio
import csv
import json

import pytest

from serve_app.devtools.soak import (
    ReplicaGrowth,
    RssSample,
    Traffic,
    failure_reason,
    main,
    parse_duration,
    replica_growth,
    verdict,
    write_results,
)

MIB = 2**20


def series(replica: str, pid: int, values_mib: list[float], every_s: float = 10.0):
    return [RssSample(i * every_s, replica, pid, int(v * MIB)) for i, v in enumerate(values_mib)]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("90s", 90), ("1h", 3600), ("600", 600), ("2.5m", 150)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30 min", "-5m", "1d"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError, match="write it like"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("values", "warmup_s", "first", "last"),
    [
        # 20 samples, window 10% = 2 each end: median(100, 100) = 100, median(109, 109) = 109
        ([100] * 2 + [105] * 16 + [109] * 2, 0, 100, 109),
        # warm-up 20 s drops t=0 and t=10 (the 300 MiB start-up peak): first = median(100, 100)
        ([300, 300] + [100] * 18 + [112, 112], 20, 100, 112),
        # 5 samples: window = max(1, int(0.5)) = 1 sample each end
        ([100, 130, 90, 120, 104], 0, 100, 104),
        # a single GC peak at the end is outvoted by the median: (100, 180, 100, 100) sorted -> 100
        ([100] * 36 + [100, 180, 100, 100], 0, 100, 100),
    ],
)
def test_replica_growth_ends(values, warmup_s, first, last):
    (g,) = replica_growth(series("r1", 7, values), warmup_s)
    assert (g.first_bytes / MIB, g.last_bytes / MIB) == (first, last)


def test_a_restarted_replica_counts_apart_and_one_sample_is_not_judged():
    samples = series("r1", 7, [100, 101, 102]) + series("r1", 8, [200])
    growth = replica_growth(samples, 0)
    assert [(g.replica, g.pid, g.samples) for g in growth] == [("r1", 7, 3)]


def grown(pct: float) -> ReplicaGrowth:
    return ReplicaGrowth("r1", 7, 100 * MIB, (100 + pct) * MIB, 20)


@pytest.mark.parametrize(
    ("ok", "total", "growth_pct", "passed"),
    [
        # 9990 / 10000 = 99.90 % >= 99.9 %, RSS +9.9 % < 10 %: passes
        (9990, 10000, 9.9, True),
        # 9989 / 10000 = 99.89 % < 99.9 %: fails
        (9989, 10000, 0.0, False),
        # RSS +10 % = the limit: fails (>= 10 %)
        (10000, 10000, 10.0, False),
        # RSS shrank 5 %: passes
        (10000, 10000, -5.0, True),
        # nothing sent: fails, a soak without load proves nothing
        (0, 0, 0.0, False),
    ],
)
def test_verdict(ok, total, growth_pct, passed):
    result, reasons = verdict(ok, total, [grown(growth_pct)])
    assert result is passed
    assert bool(reasons) is not passed


def test_verdict_names_the_replica_and_the_figures():
    passed, reasons = verdict(100, 100, [grown(25)])
    assert not passed
    assert reasons == ["r1 (PID 7) RSS grew 25.0% (100 -> 125 MiB), the limit is 10%"]


def test_verdict_without_replica_samples_fails():
    passed, reasons = verdict(100, 100, [])
    assert not passed and "RSS not checked" in reasons[0]


def test_write_results(tmp_path):
    rss = series("r1", 7, [100] * 10) + series("r2", 9, [100] * 5 + [150] * 5)
    traffic = [Traffic(0.0, sent=100, ok=100), Traffic(10.0, sent=100, ok=97)]
    for reason in ("503", "timeout", "503"):
        traffic[1].fail(reason)
    summary = write_results(tmp_path, {"duration_s": 100}, rss, traffic, warmup_s=0)
    assert summary["requests"] == 200 and summary["ok"] == 197
    assert not summary["passed"]  # 197/200 = 98.5 %, and r2 grew 50 %
    assert len(summary["reasons"]) == 2
    assert summary["failures_by_reason"] == {"503": 2, "timeout": 1}
    assert json.loads((tmp_path / "soak.json").read_text()) == summary
    with (tmp_path / "rss.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 20
    with (tmp_path / "traffic.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [json.loads(r["reasons"]) for r in rows] == [{}, {"503": 2, "timeout": 1}]
    assert rows[1]["failed"] == "3"
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_goes_to_loopback_only(capsys):
    code = main(["--url", "http://10.0.0.1:8000", "--capacity-rps", "10"])
    assert code == 2
    assert "127.0.0.1 only" in capsys.readouterr().err


def test_failure_reason():
    assert failure_reason(503) == "503"
    assert failure_reason(error=asyncio.TimeoutError()) == "timeout"
    assert failure_reason(error=ConnectionResetError()) == "ConnectionResetError"
