"""CUDA graphs per batch bucket: the bucketing, padding and fallback logic with a fake graph backend
(CPU everywhere), and the real capture where torch sees a GPU (`gpu` marker)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from serve_app.serving.cuda_graphs import BucketedGraphs, bucket_for, bucket_sizes


@pytest.mark.parametrize(
    "max_batch_size, expected",
    [
        (1, (1,)),
        (2, (1, 2)),
        (16, (1, 2, 4, 8, 16)),
        (20, (1, 2, 4, 8, 16, 20)),  # padding stops at the largest batch formed, not at 32
        (256, (1, 2, 4, 8, 16, 32, 64, 128, 256)),
    ],
)
def test_buckets_are_powers_of_two_up_to_the_max_batch(max_batch_size, expected):
    assert bucket_sizes(max_batch_size) == expected


@pytest.mark.parametrize(
    "n, expected", [(1, 1), (2, 2), (3, 4), (5, 8), (8, 8), (9, 16), (16, 16), (17, 20), (20, 20)]
)
def test_a_batch_pads_up_to_the_smallest_bucket_that_holds_it(n, expected):
    assert bucket_for(n, bucket_sizes(20)) == expected


def test_no_bucket_above_the_largest_and_no_empty_batch():
    assert bucket_for(21, bucket_sizes(20)) is None
    with pytest.raises(ValueError):
        bucket_for(0, bucket_sizes(20))
    with pytest.raises(ValueError):
        bucket_sizes(0)


class FakeBackend:
    """Stands in for CUDA graph capture: a bucket's "graph" answers rows tagged as replayed, eager
    runs answer rows tagged as eager, so each output says which path made it and at which size."""

    def __init__(self, fail_capture=(), fail_replay=()):
        self.fail_capture, self.fail_replay = set(fail_capture), set(fail_replay)
        self.captured: list[int] = []
        self.calls: list[tuple[str, int]] = []

    def capture(self, bucket):
        if bucket in self.fail_capture:
            raise RuntimeError(f"operation not permitted when stream is capturing ({bucket})")
        self.captured.append(bucket)

        def replay():
            self.calls.append(("graph", bucket))
            if bucket in self.fail_replay:
                raise RuntimeError(f"replay failed ({bucket})")
            return [("graph", bucket, row) for row in range(bucket)]

        return replay

    def eager(self, bucket):
        self.calls.append(("eager", bucket))
        return [("eager", bucket, row) for row in range(bucket)]


def graphs_over(backend, max_batch_size=16, enabled=True):
    graphs = BucketedGraphs(bucket_sizes(max_batch_size), backend.capture, backend.eager, enabled)
    graphs.capture_all()
    return graphs


def test_capture_runs_largest_first_and_a_batch_replays_its_bucket_padded():
    backend = FakeBackend()
    graphs = graphs_over(backend)
    # largest first: the shared memory pool is sized by the first capture
    assert backend.captured == [16, 8, 4, 2, 1] and graphs.captured == (1, 2, 4, 8, 16)
    out = graphs.run(3)
    assert out == [("graph", 4, 0), ("graph", 4, 1), ("graph", 4, 2)]  # padding row dropped
    assert backend.calls == [("graph", 4)]
    assert graphs.run(16) == [("graph", 16, r) for r in range(16)]


def test_a_failed_capture_runs_that_bucket_eagerly_at_its_padded_size(caplog):
    backend = FakeBackend(fail_capture={4})
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        graphs = graphs_over(backend)
        assert graphs.captured == (1, 2, 8, 16)
        assert graphs.run(3) == [("eager", 4, r) for r in range(3)]
        assert graphs.run(4) == [("eager", 4, r) for r in range(4)]
        assert graphs.run(5) == [("graph", 8, r) for r in range(5)]  # other buckets keep theirs
    failures = [r for r in caplog.records if "capture failed for batch bucket 4" in r.getMessage()]
    assert len(failures) == 1 and "stream is capturing" in graphs.failures[4]


def test_a_failed_replay_answers_eagerly_and_never_replays_that_bucket_again(caplog):
    backend = FakeBackend(fail_replay={8})
    graphs = graphs_over(backend)
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        first = graphs.run(6)
        second = graphs.run(7)
    assert first == [("eager", 8, r) for r in range(6)]  # the request is still answered
    assert second == [("eager", 8, r) for r in range(7)]
    assert backend.calls == [("graph", 8), ("eager", 8), ("eager", 8)]
    assert graphs.captured == (1, 2, 4, 16)
    assert sum("replay failed for batch bucket 8" in r.getMessage() for r in caplog.records) == 1


def test_disabled_graphs_capture_nothing_and_run_eagerly_on_buckets():
    backend = FakeBackend()
    graphs = graphs_over(backend, enabled=False)
    assert backend.captured == [] and graphs.captured == ()
    assert graphs.run(3) == [("eager", 4, r) for r in range(3)]


def test_a_batch_above_the_largest_bucket_is_refused():
    graphs = graphs_over(FakeBackend(), max_batch_size=4)
    with pytest.raises(ValueError):
        graphs.run(5)


# ---- the real capture, where torch sees a GPU -------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@cuda
def test_real_graphs_capture_every_bucket_and_agree_with_eager_and_cpu():
    from serve_app.config import ModelConfig
    from serve_app.serving.imaging import normalize_batch
    from serve_app.serving.models import load_model
    from serve_app.serving.runtimes import TorchRuntime, check_crops, select_runtime
    from tests.conftest import ESPRESSO

    cfg = ModelConfig(name="efficientnet_lite0", device="cuda", precision="fp16")
    loaded = load_model(cfg)
    crops = np.stack(check_crops(loaded))  # cat, espresso, rocket, motorcycle
    cpu = TorchRuntime(load_model(cfg).module, "cpu", "fp32", 1)
    cpu_probs = cpu.run(normalize_batch(list(crops), loaded.preprocess))

    choice = select_runtime(cfg, loaded)
    runtime = choice.runtime
    assert (runtime.name, runtime.device, runtime.precision) == (
        "torch-cuda-graphs",
        "cuda",
        "fp16",
    )
    assert runtime.graphs.captured == bucket_sizes(cfg.max_batch_size), runtime.graphs.failures
    assert "CUDA graphs for batch buckets 1, 2, 4, 8, 16" in choice.reason

    graph_probs = runtime.run(crops)
    assert int(graph_probs[1].argmax()) == ESPRESSO
    assert (graph_probs.argmax(1) == cpu_probs.argmax(1)).all()
    assert np.abs(graph_probs - cpu_probs).max() < 2e-2
    # 3 rows pad up to the bucket of 4: the same rows as the 4-row batch
    assert np.abs(runtime.run(crops[:3]) - graph_probs[:3]).max() < 1e-3
    # float32 NCHW input (OIP FP32, the health check) takes the same graphs
    float_probs = runtime.run(normalize_batch(list(crops), loaded.preprocess))
    assert np.abs(float_probs - graph_probs).max() < 1e-2
    # the graph computes what eager computes
    with torch.inference_mode():
        replayed = runtime.graphs.run(4).float().cpu().numpy()
        eager = runtime._eager(4).float().cpu().numpy()
    assert np.abs(replayed - eager).max() < 1e-3


@pytest.mark.gpu
@cuda
def test_runtime_torch_on_cuda_runs_eagerly_and_says_so():
    from serve_app.config import ModelConfig
    from serve_app.serving.models import load_model
    from serve_app.serving.runtimes import select_runtime

    cfg = ModelConfig(name="efficientnet_lite0", device="cuda", runtime="torch", max_batch_size=4)
    choice = select_runtime(cfg, load_model(cfg))
    assert choice.runtime.name == "torch" and choice.runtime.graphs.captured == ()
    assert "torch eager (configured" in choice.reason
