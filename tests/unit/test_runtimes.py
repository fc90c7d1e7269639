import numpy as np
import pytest

from serve_app.config import ModelConfig
from serve_app.serving.models import load_model
from serve_app.serving.recognizer import top_k
from serve_app.serving.runtimes import (
    OnnxRuntime,
    TorchRuntime,
    agreement,
    check_batch,
    export_onnx,
    run_with_oom_split,
    select_runtime,
)


class FakeOOM(Exception):
    """Stands in for torch.cuda.OutOfMemoryError, which needs a GPU to raise for real."""


def runs_up_to(limit):
    """A run function that fails with OOM above `limit` rows and else returns each row's first
    value."""
    calls = []

    def run(batch):
        calls.append(len(batch))
        if len(batch) > limit:
            raise FakeOOM(f"{len(batch)} rows")
        return batch[:, :1] * 1.0

    return run, calls


@pytest.mark.parametrize(
    "n, limit, expected_calls",
    [
        (8, 8, [8]),  # fits: one call
        (8, 4, [8, 4, 4]),  # 8 fails, halves of 4 fit
        (8, 2, [8, 4, 2, 2, 4, 2, 2]),  # 8 -> 4 -> 2 on both sides
        (5, 2, [5, 2, 3, 1, 2]),  # 5 -> 2 + 3; 3 -> 1 + 2
    ],
)
def test_oom_splits_the_batch_until_it_fits(tmp_path, n, limit, expected_calls):
    run, calls = runs_up_to(limit)
    batch = np.arange(n, dtype=np.float32).reshape(n, 1)
    out = run_with_oom_split(run, batch, lambda e: isinstance(e, FakeOOM))
    assert calls == expected_calls
    assert [float(r[0]) for r in out] == list(range(n))  # order kept


def test_rows_that_fail_alone_get_the_error_others_succeed():
    def run(batch):
        if (batch == 3).any():  # image 3 is too big even alone
            raise FakeOOM("image 3")
        return batch * 1.0

    out = run_with_oom_split(
        run, np.arange(4, dtype=np.float32).reshape(4, 1), lambda e: isinstance(e, FakeOOM)
    )
    assert isinstance(out[3], FakeOOM)
    assert [float(r[0]) for r in out[:3]] == [0.0, 1.0, 2.0]


def test_other_errors_are_not_swallowed():
    def run(batch):
        raise ValueError("bug")

    with pytest.raises(ValueError):
        run_with_oom_split(run, np.zeros((2, 1)), lambda e: isinstance(e, FakeOOM))


def test_top_k_orders_scores():
    probs = np.array([0.1, 0.5, 0.05, 0.3, 0.05])
    assert top_k(probs, 3) == ([1, 3, 0], [0.5, 0.3, 0.1])
    assert top_k(probs, 10)[0] == [1, 3, 0, 2, 4]  # k above class count: all classes


@pytest.fixture(scope="module")
def lite0():
    return load_model(ModelConfig(name="efficientnet_lite0"))


def test_onnx_export_agrees_with_torch_on_real_photos(lite0, tmp_path, monkeypatch):
    monkeypatch.setenv("RECSERVE_CACHE_DIR", str(tmp_path))
    path = export_onnx(lite0, "efficientnet_lite0")
    assert path.is_file() and path.parent.parent == tmp_path
    assert export_onnx(lite0, "efficientnet_lite0") == path  # cached: same file, no second export
    ok, max_diff = agreement(
        TorchRuntime(lite0.module, "cpu", "fp32", 1), OnnxRuntime(path, 1), check_batch(lite0)
    )
    assert ok and max_diff < 1e-4


def test_auto_runtime_on_cpu_picks_onnxruntime(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSERVE_CACHE_DIR", str(tmp_path))
    cfg = ModelConfig(name="efficientnet_lite0", device="cpu")
    choice = select_runtime(cfg, load_model(cfg))
    assert choice.runtime.name == "onnxruntime" and "agrees with torch" in choice.reason
    torch_choice = select_runtime(cfg.model_copy(update={"runtime": "torch"}), load_model(cfg))
    assert torch_choice.runtime.name == "torch"
