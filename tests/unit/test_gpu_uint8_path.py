"""The GPU runtime's data path on CPU tensors: uint8 crops normalised in torch against the numpy
path served today, and the whole runtime (staging, static buffer, buckets) with a fake graph
backend."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from serve_app.config import PreprocessSpec
from serve_app.serving.gpu_runtime import (
    STAGE_ROWS,
    CudaGraphRuntime,
    normalization_constants,
    normalize_on_device,
)
from serve_app.serving.imaging import normalize_batch, resize_and_crop
from serve_app.serving.recognizer import Recognizer
from serve_app.serving.runtimes import _Softmaxed, reference_photos

SPECS = [
    PreprocessSpec(),  # ImageNet mean/std, 224
    PreprocessSpec(resize=40, crop=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
]


@pytest.fixture(scope="module")
def photo_crops():
    spec = PreprocessSpec()
    return [resize_and_crop(Image.fromarray(p), spec) for p in reference_photos()]


def test_normalise_in_torch_is_the_numpy_path_on_real_photos(photo_crops):
    spec = PreprocessSpec()
    offset, scale = normalization_constants(spec, "cpu")
    ours = normalize_on_device(torch.from_numpy(np.stack(photo_crops)), offset, scale)
    today = normalize_batch(photo_crops, spec)
    assert ours.shape == today.shape and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.contiguous().numpy(), today, rtol=0, atol=1e-6)


@pytest.mark.parametrize("spec", SPECS)
def test_normalise_in_torch_is_the_numpy_path_on_every_pixel_value(spec):
    rng = np.random.default_rng(7)
    crops = [rng.integers(0, 256, (spec.crop, spec.crop, 3), dtype=np.uint8) for _ in range(3)]
    crops[0][:2, :2] = [[0, 255, 128], [255, 0, 1]]  # the extremes, in every channel
    offset, scale = normalization_constants(spec, "cpu")
    ours = normalize_on_device(torch.from_numpy(np.stack(crops)), offset, scale)
    np.testing.assert_allclose(
        ours.contiguous().numpy(), normalize_batch(crops, spec), rtol=0, atol=1e-6
    )
    # NCHW in shape, channels_last in memory: the device path makes no transpose copy
    assert ours.is_contiguous(memory_format=torch.channels_last)
    half = normalize_on_device(torch.from_numpy(np.stack(crops)), offset, scale, torch.float16)
    assert half.dtype == torch.float16
    np.testing.assert_allclose(half.float().numpy(), ours.numpy(), rtol=1e-3, atol=2e-3)


class TinyNet(nn.Module):
    """Conv + batch norm + pool + linear: what matters here is that each row is computed on its
    own in eval mode, as in the served models."""

    def __init__(self, classes=5):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )
        self.head = nn.Linear(8, classes)
        self.body[1].running_mean.uniform_(-0.5, 0.5)

    def forward(self, x):
        return self.head(self.body(x).flatten(1))


class RecordingGraphs:
    """A graph backend for a CPU: the "graph" is the captured function itself, counted when
    replayed."""

    def __init__(self):
        self.replays = 0

    def __call__(self, fn):
        def replay():
            self.replays += 1
            return fn()

        return replay


SMALL = SPECS[1]


def small_crops(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, SMALL.crop, SMALL.crop, 3), dtype=np.uint8)


def reference_probs(crops):
    """Today's path: numpy normalisation, then the module on the CPU in fp32."""
    with torch.inference_mode():
        x = torch.from_numpy(normalize_batch(list(crops), SMALL))
        return _Softmaxed(TinyNet()).eval()(x).numpy()


def cpu_runtime(max_batch_size=8, graphs=True):
    backend = RecordingGraphs()
    rt = CudaGraphRuntime(
        _Softmaxed(TinyNet()), SMALL, max_batch_size, "fp16", "cpu", graphs, backend
    )
    rt.prepare()
    return rt, backend


def test_uint8_crops_through_the_runtime_give_todays_probabilities():
    rt, backend = cpu_runtime()
    assert rt.precision == "fp32"  # fp16 is for CUDA only, as configured today
    assert rt.name == "torch-cuda-graphs" and rt.graphs.captured == (1, 2, 4, 8)
    crops = small_crops(5, seed=1)  # pads up to the bucket of 8
    probs = rt.run(crops)
    assert probs.shape == (5, 5) and backend.replays == 1
    np.testing.assert_allclose(probs, reference_probs(crops), rtol=0, atol=1e-5)


def test_padding_holds_an_earlier_batch_and_changes_no_row():
    rt, _ = cpu_runtime()
    rt.run(small_crops(8, seed=2))  # fills every row of the static input
    crops = small_crops(3, seed=3)
    np.testing.assert_allclose(rt.run(crops), reference_probs(crops), rtol=0, atol=1e-5)


def test_float32_batches_and_batches_above_the_largest_bucket():
    rt, _ = cpu_runtime(max_batch_size=4)
    crops = small_crops(10, seed=4)  # 4 + 4 + 2 rows
    expected = reference_probs(crops)
    np.testing.assert_allclose(rt.run(crops), expected, rtol=0, atol=1e-5)
    as_float = normalize_batch(list(crops), SMALL)  # OIP FP32 input and the health check
    np.testing.assert_allclose(rt.run(as_float), expected, rtol=0, atol=1e-5)


def test_a_batch_staged_in_several_chunks_keeps_every_row_in_place():
    rt, _ = cpu_runtime(max_batch_size=2 * STAGE_ROWS + 8)
    crops = small_crops(2 * STAGE_ROWS + 5, seed=8)  # two full staging chunks and a part
    np.testing.assert_allclose(rt.run(crops), reference_probs(crops), rtol=0, atol=1e-5)


def test_graphs_off_is_eager_and_named_so():
    rt, backend = cpu_runtime(graphs=False)
    crops = small_crops(2, seed=5)
    np.testing.assert_allclose(rt.run(crops), reference_probs(crops), rtol=0, atol=1e-5)
    assert backend.replays == 0 and rt.name == "torch"
    assert rt.describe().startswith("torch eager (configured `runtime: torch`)")


def test_the_recognizer_hands_uint8_crops_to_a_runtime_that_takes_them():
    crops = list(small_crops(3, seed=6))
    takes = SimpleNamespace(
        runtime=SimpleNamespace(accepts_uint8=True), loaded=SimpleNamespace(preprocess=SMALL)
    )
    plain = SimpleNamespace(runtime=SimpleNamespace(), loaded=SimpleNamespace(preprocess=SMALL))
    to_input = Recognizer.func_or_class._to_model_input
    raw = to_input(takes, crops)
    assert raw.dtype == np.uint8 and raw.shape == (3, SMALL.crop, SMALL.crop, 3)
    np.testing.assert_array_equal(raw, np.stack(crops))
    np.testing.assert_array_equal(to_input(plain, crops), normalize_batch(crops, SMALL))
    # a mixed batch (an OIP FP32 image among crops) is normalised on the host for any runtime
    mixed = crops[:2] + [normalize_batch(crops[2:], SMALL)[0]]
    np.testing.assert_allclose(to_input(takes, mixed), normalize_batch(crops, SMALL), atol=1e-6)


@pytest.fixture(scope="module")
def lite0_loader():
    from serve_app.config import ModelConfig
    from serve_app.serving.models import load_model

    cfg = ModelConfig(name="efficientnet_lite0", max_batch_size=4)
    return cfg, lambda: load_model(cfg)


def test_the_cuda_choice_checks_top1_on_reference_photos_and_says_what_runs(lite0_loader, caplog):
    from serve_app.serving.runtimes import cuda_runtime

    cfg, load = lite0_loader
    backend = RecordingGraphs()
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        choice = cuda_runtime(cfg, load(), "cpu", backend)
    assert choice.runtime.name == "torch-cuda-graphs" and backend.replays == 1  # the check ran
    assert choice.reason.startswith("CUDA graphs for batch buckets 1, 2, 4 (padded up)")
    assert choice.reason.endswith("top-1 as CPU fp32 on 4 reference photos")
    assert any(choice.reason in r.getMessage() for r in caplog.records)


def test_the_cuda_choice_refuses_a_runtime_whose_top1_differs(lite0_loader):
    from serve_app.serving.runtimes import cuda_runtime

    cfg, load = lite0_loader

    def rows_shifted(fn):  # a broken graph: each row answers for its neighbour
        return lambda: fn().roll(1, dims=0)

    with pytest.raises(RuntimeError, match="disagrees with the CPU fp32 top-1 on 4 of 4"):
        cuda_runtime(cfg, load(), "cpu", rows_shifted)
