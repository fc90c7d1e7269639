"""The CUDA path of the model: runs only where torch sees a GPU (CI machines have none)."""

import numpy as np
import pytest
import torch

from serve_app.config import ModelConfig
from serve_app.serving.imaging import decode_and_crop, normalize_batch
from serve_app.serving.models import load_model
from serve_app.serving.runtimes import TorchRuntime, is_cuda_oom, run_with_oom_split, select_runtime
from tests.conftest import ESPRESSO

# Skipped, not faked: the point is to exercise real CUDA kernels, fp16 and channels_last.
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_auto_device_picks_cuda_fp16_and_agrees_with_cpu(coffee_jpeg, cat_jpeg):
    cfg = ModelConfig(name="efficientnet_lite0", device="auto", precision="fp16")
    loaded = load_model(cfg)
    choice = select_runtime(cfg, loaded)
    assert choice.runtime.device == "cuda" and choice.runtime.precision == "fp16"
    batch = normalize_batch(
        [decode_and_crop(j, loaded.preprocess) for j in (coffee_jpeg, cat_jpeg)],
        loaded.preprocess,
    )
    gpu = choice.runtime.run(batch)
    cpu = TorchRuntime(load_model(cfg).module, "cpu", "fp32", 1).run(batch)
    assert int(gpu[0].argmax()) == ESPRESSO
    assert (gpu.argmax(1) == cpu.argmax(1)).all() and np.abs(gpu - cpu).max() < 2e-2


def test_real_cuda_oom_splits_the_batch():
    free, _ = torch.cuda.mem_get_info()
    calls = []

    def run(batch):
        calls.append(len(batch))
        # Ask for more than the card has free when the batch has more than one row.
        if len(batch) > 1:
            torch.empty(int(free * 2), dtype=torch.uint8, device="cuda")
        return batch * 1.0

    out = run_with_oom_split(
        run, np.ones((4, 1), dtype=np.float32), is_cuda_oom, torch.cuda.empty_cache
    )
    assert (
        calls == [4, 2, 1, 1, 2, 1, 1]
        and len(out) == 4
        and all(not isinstance(r, BaseException) for r in out)
    )
