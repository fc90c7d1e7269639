"""The hop bench's pure parts: naming processes, CPU per request, the run order, the report."""

import os

import pytest

from serve_app.devtools import cpu_split, hop_bench
from serve_app.devtools.cpu_split import cpu_ms_per_request, process_label


@pytest.mark.parametrize(
    "cmdline, label",
    [
        ("ray::ServeReplica:recognition:Ingress", "ServeReplica:recognition:Ingress"),
        # A replica's title names the method it runs at the moment; the replica is what counts.
        (
            "ray::ServeReplica:recognition:QualityMonitor.handle_request_with_rejection",
            "ServeReplica:recognition:QualityMonitor",
        ),
        ("ray::ServeController.listen_for_change", "ServeController"),
        ("/usr/sbin/haproxy -f /tmp/x/haproxy.cfg", "haproxy"),
        ("/venv/lib/ray/core/src/ray/raylet/raylet --node_id=1", "raylet"),
        ("/venv/lib/ray/core/src/ray/gcs/gcs_server --port=0", "gcs_server"),
        ("/venv/bin/python -u /venv/ray/dashboard/agent.py --node-ip-address=1", "dashboard agent"),
        ("/venv/bin/python -u /venv/ray/dashboard/dashboard.py --host=127.0.0.1", "dashboard"),
        ("/venv/bin/python /venv/bin/serve run /tmp/c.yaml", "serve run"),
        ("/usr/bin/sleep 5", "sleep"),
    ],
)
def test_processes_are_named_by_what_they_are(cmdline, label):
    assert process_label(cmdline) == label


def test_cpu_per_request_sums_each_label_over_its_processes():
    before = {(1, "a"): 10.0, (2, "a"): 1.0, (3, "b"): 5.0}
    after = {(1, "a"): 10.5, (2, "a"): 1.5, (3, "b"): 5.1, (4, "c"): 0.2}
    # 100 requests: a spent 1.0 s (10 ms each), b 0.1 s, c (started in between) 0.2 s.
    assert cpu_ms_per_request(before, after, 100) == {"a": 10.0, "c": 2.0, "b": 1.0}


def test_cpu_per_request_leaves_out_ended_processes_and_the_negligible():
    before = {(1, "a"): 1.0, (9, "gone"): 3.0, (5, "idle"): 2.0}
    after = {(1, "a"): 2.0, (5, "idle"): 2.00001}
    assert cpu_ms_per_request(before, after, 10) == {"a": 100.0}


def test_cpu_per_request_needs_an_answered_request():
    with pytest.raises(ValueError, match="at least one"):
        cpu_ms_per_request({}, {}, 0)


def test_snapshot_sees_this_process_spend_cpu():
    first = cpu_split.snapshot()
    sum(i * i for i in range(300_000))
    second = cpu_split.snapshot()
    mine = [k for k in second if k[0] == os.getpid()]
    assert mine and mine[0][1] == cpu_split.THIS_PROCESS
    assert second[mine[0]] > first[mine[0]]


def test_the_defaults_run_first_and_last():
    assert hop_bench.run_order(["defaults", "actor_calls"]) == [
        "defaults",
        "actor_calls",
        "defaults",
    ]
    assert hop_bench.run_order(["router_on_replica_loop"]) == [
        "defaults",
        "router_on_replica_loop",
        "defaults",
    ]


def test_every_variant_changes_only_what_the_bench_resets_or_validates():
    from serve_app.config import AppConfig

    for name, env, settings, changes in hop_bench.VARIANTS:
        assert set(env) <= set(hop_bench.KNOBS), name
        config = AppConfig.model_validate({"models": [{"name": "m"}], **settings})
        for section, values in settings.items():
            validated = getattr(config, section).model_dump()
            assert validated | values == validated, name
        assert changes
    assert hop_bench.VARIANTS[0][:3] == (hop_bench.DEFAULTS, {}, {})
    # The former defaults are among the variants measured: Serve's actor calls, records every 20 ms.
    assert any(v[2] == {"ingress": {"internal_transport": "actor"}} for v in hop_bench.VARIANTS)
    assert any(v[2] == {"quality": {"record_flush_interval_s": 0.02}} for v in hop_bench.VARIANTS)


def _run(variant, ours, plain, split_ours, split_plain):
    def load(rate, split):
        return {
            "images_per_s": rate,
            "cpu_ms_per_request": split,
            "cpu_ms_per_request_total": round(sum(split.values()), 2),
        }

    return {
        "variant": variant,
        "ours_1_image_requests": load(ours, split_ours),
        "plain_ort_1_image_requests": load(plain, split_plain),
        "ours_vs_plain": round(ours / plain, 3),
        "ours_low_load": {"p50_ms": 17.0},
    }


def test_report_has_a_row_per_run_and_the_first_runs_split():
    results = {
        "command": "python -m serve_app.devtools.hop_bench --out x",
        "machine": "x86_64, 2 cores",
        "started": "2026-12-01 16:00:00",
        "replicas": 1,
        "clients": 32,
        "seconds": 12,
        "runs": [
            _run("defaults", 90.0, 120.0, {"Ingress": 4.5, "Recognizer": 10.0}, {"Naive": 7.5}),
            _run("actor_calls", 80.0, 100.0, {"Ingress": 5.0}, {"Naive": 8.0}),
        ],
    }
    text = hop_bench.render_markdown(results)
    assert "| defaults | 90.0 | 120.0 | 0.75 | 14.5 | 7.5 | 17.0 |" in text
    assert "| actor_calls | 80.0 | 100.0 | 0.8 | 5.0 | 8.0 | 17.0 |" in text
    # The split is the first run's; a process only one side has reads 0.00 on the other.
    assert "| Recognizer | 10.00 | 0.00 |" in text
    assert "| Naive | 0.00 | 7.50 |" in text
    assert "| Ingress | 4.50 | 0.00 |" in text
