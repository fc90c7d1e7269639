import numpy as np
import pytest
from pydantic import ValidationError

from serve_app.config import ModelConfig, PreprocessSpec
from serve_app.serving.photos import (
    CALIBRATION_PHOTOS,
    EVALUATION_PHOTOS,
    calibration_crops,
    evaluation_crops,
    photo_path,
)
from serve_app.serving.quantize import QuantizeSettings, int8_path

SMALL = PreprocessSpec(resize=40, crop=32)


def test_calibration_and_evaluation_photos_ship_and_never_overlap():
    names = [n for _, n in CALIBRATION_PHOTOS] + [n for _, n in EVALUATION_PHOTOS]
    assert len(names) == len(set(names))
    for package, name in CALIBRATION_PHOTOS + EVALUATION_PHOTOS:
        assert photo_path(package, name).is_file(), (package, name)


def test_crops_are_deterministic_distinct_and_shaped_for_the_model():
    a, b = evaluation_crops(SMALL, per_photo=3), evaluation_crops(SMALL, per_photo=3)
    assert len(a) == 3 * len(EVALUATION_PHOTOS)
    assert all(x.shape == (32, 32, 3) and x.dtype == np.uint8 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], a[2])  # variants of one photo differ
    cal = calibration_crops(SMALL, per_photo=2)
    assert len(cal) == 2 * len(CALIBRATION_PHOTOS)


def test_int8_cache_key_follows_the_settings(tmp_path):
    fp32 = tmp_path / "m-abc.onnx"
    one, two = QuantizeSettings(), QuantizeSettings(calibration="percentile")
    assert int8_path(fp32, one) == int8_path(fp32, QuantizeSettings())
    assert int8_path(fp32, one) != int8_path(fp32, two)
    assert int8_path(fp32, one).parent == tmp_path  # beside the fp32 export it came from


@pytest.mark.parametrize(
    "fields",
    [{"device": "auto"}, {"device": "cuda"}, {"device": "cpu", "runtime": "torch"}],
)
def test_int8_is_refused_where_it_cannot_run(fields):
    with pytest.raises(ValidationError, match="precision int8"):
        ModelConfig(name="m", precision="int8", **fields)


def test_int8_on_cpu_onnxruntime_is_accepted():
    assert ModelConfig(name="m", precision="int8", device="cpu").precision == "int8"


def test_runtime_refuses_int8_where_validation_was_bypassed():
    from serve_app.serving.runtimes import int8_runtime

    cfg = ModelConfig.model_construct(
        **{**ModelConfig(name="m").model_dump(), "precision": "int8", "device": "cuda"}
    )
    with pytest.raises(RuntimeError, match="CPU with ONNX Runtime only"):
        int8_runtime(cfg, loaded=None)


def _chain_model(path, convs: int):
    """A graph of `convs` Convs, then a Gemm and a Softmax: only node names and order matter."""
    import onnx
    from onnx import TensorProto, helper

    nodes, prev = [], "x"
    for i in range(convs):
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], name=f"conv{i}"))
        prev = f"c{i}"
    nodes.append(helper.make_node("Gemm", [prev, "g"], ["logits"], name="fc"))
    nodes.append(helper.make_node("Softmax", ["logits"], ["y"], name="softmax"))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_leading_convs_head_and_softmax_stay_fp32(tmp_path):
    from serve_app.serving.quantize import excluded_nodes

    model = _chain_model(tmp_path / "chain.onnx", convs=20)
    kept = excluded_nodes(model, QuantizeSettings(fp32_leading_convs=12))
    assert sorted(kept) == sorted([f"conv{i}" for i in range(12)] + ["fc", "softmax"])
    only_head = excluded_nodes(model, QuantizeSettings(fp32_leading_convs=0, keep_last_gemm=False))
    assert only_head == ["softmax"]
    extra = excluded_nodes(model, QuantizeSettings(extra_excluded=("conv19",)))
    assert "conv19" in extra and "conv12" not in extra
