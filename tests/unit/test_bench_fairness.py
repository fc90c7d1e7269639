"""What `make bench` compares with what: the thread budget of the pipeline, the ratios and what
each holds equal, the naive baseline on each runtime at the served replica count, the report."""

from __future__ import annotations

import pytest

from serve_app.devtools import bench
from serve_app.devtools.fairness import (
    attach_ratios,
    pipeline_budget,
    pipeline_for,
    served_ratios,
)
from serve_app.devtools.naive import naive_options


def load(images_per_s: float) -> dict:
    return {
        "images_per_s": images_per_s,
        "requests_per_s": images_per_s,
        "errors": 0,
        "p50_ms": 10.0,
        "p95_ms": 20.0,
        "p99_ms": 30.0,
        "n": 100,
    }


def variant(replicas: int) -> dict:
    return {
        "proxy": "haproxy",
        "replicas": replicas,
        "ingress_replicas": 1,
        "max_batch_size": 16,
        "batch_wait_timeout_s": 0.002,
    }


def served(replicas: int, ours: float, four: float, torch: float, ort: float) -> dict:
    return {
        "variant": variant(replicas),
        "ours_1_image_requests": load(ours),
        "ours_4_image_requests": load(four),
        "naive_torch_1_image_requests": load(torch),
        "naive_ort_1_image_requests": load(ort),
        "ours_low_load": load(50.0),
    }


def pipeline(replicas: int, rate: float) -> dict:
    return {"batch_size": 4, **pipeline_budget(replicas, 2), "images_per_s": rate}


def test_the_pipeline_budget_is_the_threads_of_the_served_replicas():
    assert pipeline_budget(1, 2) == {
        "inference_workers": 1,
        "intra_op_threads": 1,
        "decode_threads": 2,
    }
    assert pipeline_budget(2, 2) == {
        "inference_workers": 2,
        "intra_op_threads": 1,
        "decode_threads": 4,
    }
    with pytest.raises(ValueError):
        pipeline_budget(0, 2)


def test_runtime_choice_and_serving_design_are_separate_ratios():
    ratios = served_ratios(served(2, ours=120.0, four=160.0, torch=40.0, ort=100.0), None)
    assert ratios["runtime_choice"]["value"] == 2.5  # naive ORT / naive torch
    assert ratios["runtime_choice"]["numerator"]["load"] == "naive_ort_1_image_requests"
    assert ratios["runtime_choice"]["denominator"]["load"] == "naive_torch_1_image_requests"
    assert ratios["serving_design"]["value"] == 1.2  # ours / naive ORT: the same runtime
    assert ratios["serving_design"]["denominator"]["load"] == "naive_ort_1_image_requests"
    assert ratios["ours_vs_naive_torch"]["value"] == 3.0
    assert "runtime" in ratios["runtime_choice"]["compares"]
    assert "same runtime" in ratios["serving_design"]["compares"]
    # No pipeline given: no ratio against it.
    assert "served_1_image_vs_pipeline" not in ratios


def test_ratios_whose_side_was_not_measured_are_left_out():
    old = served(1, ours=100.0, four=130.0, torch=40.0, ort=90.0)
    del old["naive_ort_1_image_requests"]
    ratios = served_ratios(old, pipeline(1, 200.0))
    assert "runtime_choice" not in ratios and "serving_design" not in ratios
    assert ratios["ours_vs_naive_torch"]["value"] == 2.5
    zero = served_ratios(served(1, ours=100.0, four=130.0, torch=0.0, ort=90.0), None)
    assert "runtime_choice" not in zero and "ours_vs_naive_torch" not in zero


def test_each_variant_is_compared_with_the_pipeline_of_its_own_budget():
    results = {
        "pipeline": pipeline(1, 150.0),
        "pipeline_by_replicas": {"1": pipeline(1, 150.0), "2": pipeline(2, 200.0)},
        "served": [
            served(1, ours=90.0, four=120.0, torch=40.0, ort=80.0),
            served(2, ours=180.0, four=190.0, torch=60.0, ort=120.0),
        ],
    }
    attach_ratios(results)
    one, two = (s["ratios"] for s in results["served"])
    assert one["served_1_image_vs_pipeline"]["value"] == 0.6  # 90 / 150
    assert two["served_1_image_vs_pipeline"]["value"] == 0.9  # 180 / 200, not / 150
    assert two["served_4_image_vs_pipeline"]["value"] == 0.95
    assert two["served_1_image_vs_pipeline"]["denominator"]["images_per_s"] == 200.0


def test_runs_before_the_budgets_compare_only_one_replica_with_their_pipeline():
    results = {"pipeline": pipeline(1, 150.0)}
    assert pipeline_for(results, 1) == results["pipeline"]
    assert pipeline_for(results, 2) is None


def test_the_naive_baseline_runs_on_each_runtime_at_the_served_replica_count():
    config = bench.serve_config(variant(2))
    apps = {a["name"]: a for a in config["applications"]}
    naive = [a for a in apps.values() if a["import_path"].endswith(":build_naive")]
    assert sorted(a["args"]["runtime"] for a in naive) == ["onnxruntime", "torch"]
    assert all(a["args"]["num_replicas"] == 2 for a in naive)
    assert all(a["args"]["num_threads"] == 1 for a in naive)
    assert len({a["route_prefix"] for a in config["applications"]}) == len(apps)
    ours = apps["recognition"]["args"]["models"][0]
    assert ours["num_replicas"] == 2 and ours["num_threads"] == 1
    assert ours["decode_threads"] == bench.DECODE_THREADS


def test_naive_options_name_the_replicas_and_refuse_an_unknown_runtime():
    opts = naive_options({"runtime": "onnxruntime", "num_replicas": 2, "num_cpus": 0})
    assert opts["num_replicas"] == 2
    assert opts["ray_actor_options"] == {"num_cpus": 0.0}
    assert opts["name"] != naive_options({"runtime": "torch"})["name"]
    assert naive_options({})["num_replicas"] == 1
    with pytest.raises(ValueError, match="runtime"):
        naive_options({"runtime": "tensorrt"})


def test_the_report_shows_each_ratio_with_what_it_compares_and_the_budget_table():
    results = {
        "machine": "x86_64, 2 cores",
        "runtimes": {
            name: {b: {"images_per_s": 1.0, "batch_latency_ms": 1.0} for b in bench.BATCH_SIZES}
            for name in ("torch_eager", "onnxruntime")
        },
        "pipeline": pipeline(1, 150.0),
        "pipeline_by_replicas": {"1": pipeline(1, 150.0), "2": pipeline(2, 200.0)},
        "served": [served(2, ours=180.0, four=190.0, torch=60.0, ort=120.0)],
    }
    md = bench.render_markdown(results)
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines()}
    assert "**1.50**" in rows["serving_design"] and "same runtime" in rows["serving_design"]
    assert "**2.00**" in rows["runtime_choice"]
    assert "**0.90**" in rows["served_1_image_vs_pipeline"]
    assert "| 2 | 2 | 4 | 200.0 |" in md  # the 2-replica budget: 2 workers, 4 decode threads
    assert "**150.0 img/s**" in md  # `pipeline` stays the 1-replica budget
    # The keys the goals read are still there.
    assert results["pipeline"]["images_per_s"] == 150.0
    assert results["served"][0]["ours_1_image_requests"]["images_per_s"] == 180.0
    assert results["served"][0]["ours_low_load"]["p50_ms"] == 10.0
