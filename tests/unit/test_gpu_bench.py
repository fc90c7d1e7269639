"""`bench --device cuda` where there is no GPU, and the GPU profile written from a run's results."""

from __future__ import annotations

import json

import pytest
import torch

from serve_app.devtools import bench, bench_gpu
from serve_app.devtools.profiles import CPU_PROFILE_NOTE, write_profile


def test_without_cuda_the_gpu_bench_says_so_and_exits_2_writing_nothing(
    tmp_path, monkeypatch, capsys
):
    # The boundary itself: the test must hold on a GPU machine too.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu-run"
    assert bench.main(["--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "sees no CUDA device" in err and "--device cuda" in err
    assert not out.exists()


def gpu_results(command="python -m serve_app.devtools.bench --device cuda --out docs/bench/gpu"):
    # As json.dump leaves it: batch sizes as strings, in the order measured.
    row = {
        "1": {"batch_latency_ms": 0.9, "images_per_s": 1111.1},
        "256": {"batch_latency_ms": 13.5, "images_per_s": 18963.0},
        "16": {"batch_latency_ms": 1.6, "images_per_s": 10000.0},
    }
    return {
        "command": command,
        "machine": "NVIDIA H200, torch 2.11.0, CUDA 13.0",
        "runtimes": {"cuda_graphs_fp16": row, "cuda_eager_fp16": {"1": {"batch_latency_ms": 5}}},
    }


def test_the_gpu_profile_is_written_from_a_runs_results(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(gpu_results()))
    profile = tmp_path / "gpu.csv"
    profile.write_text("# ESTIMATE\nbatch_size,latency_ms\n1,3.5\n")
    assert bench_gpu.main(["--profile-from", str(results), "--to", str(profile)]) == 0
    lines = profile.read_text().splitlines()
    assert lines[1:] == ["batch_size,latency_ms", "1,0.9", "16,1.6", "256,13.5"]
    # the comment says which run made it, so the estimate label is gone for a reason
    assert lines[0].startswith("# Measured by `python -m serve_app.devtools.bench --device cuda")
    assert str(results) in lines[0] and "NVIDIA H200" in lines[0] and "ESTIMATE" not in lines[0]


def test_a_results_file_without_the_graph_runtime_is_refused(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"command": "x", "machine": "y", "runtimes": {}}))
    profile = tmp_path / "gpu.csv"
    assert bench_gpu.main(["--profile-from", str(results), "--to", str(profile)]) == 1
    assert not profile.exists()


def test_the_cpu_profile_is_written_as_before(tmp_path):
    runtimes = {"onnxruntime": {b: {"batch_latency_ms": b * 10.0} for b in (1, 4, 8, 16)}}
    write_profile(runtimes, tmp_path / "cpu.csv")
    assert (tmp_path / "cpu.csv").read_text() == (
        f"# {CPU_PROFILE_NOTE}\nbatch_size,latency_ms\n1,10.0\n4,40.0\n8,80.0\n16,160.0\n"
    )


@pytest.mark.parametrize(
    "graphs_256, fp32_16, expected",
    [
        (19000.0, 9000.0, {"batch256_at_least_18k_img_s": True, "fp16": True}),
        (17000.0, 11000.0, {"batch256_at_least_18k_img_s": False, "fp16": False}),
    ],
)
def test_the_goals_are_read_from_the_run(graphs_256, fp32_16, expected):
    runtimes = {
        "cuda_graphs_fp16": {
            1: {"batch_latency_ms": 1.2, "images_per_s": 833.3},
            16: {"batch_latency_ms": 1.6, "images_per_s": 10000.0},
            256: {"batch_latency_ms": 13.0, "images_per_s": graphs_256},
        },
        "cuda_graphs_fp32": {16: {"batch_latency_ms": 1.7, "images_per_s": fp32_16}},
        "cuda_graphs_fp16_model_only": {256: {"images_per_s": 20000.0}},
    }
    goals = bench_gpu.goals(runtimes)
    assert goals["batch1_ms_at_most_1_5"] is True
    assert goals["batch256_at_least_18k_img_s"] is expected["batch256_at_least_18k_img_s"]
    assert goals["batch256_share_of_model_only"] == round(graphs_256 / 20000.0, 3)
    assert goals["fp16_at_least_fp32_everywhere"] is expected["fp16"]
