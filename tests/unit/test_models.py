"""The embedded EfficientNet-Lite0 loads strictly and recognises real photos."""

import numpy as np
import pytest
import torch

from serve_app.config import ModelConfig
from serve_app.errors import ConfigError
from serve_app.serving.imaging import decode_and_crop, normalize_batch
from serve_app.serving.models import (
    LITE_PREPROCESS,
    embedded_weights_path,
    imagenet_labels,
    load_model,
)
from serve_app.serving.runtimes import TorchRuntime
from tests.conftest import CAT_CLASSES, ESPRESSO


@pytest.fixture(scope="module")
def lite0():
    return load_model(ModelConfig(name="efficientnet_lite0"))


def test_embedded_weights_match_the_architecture_exactly(lite0):
    state = torch.load(embedded_weights_path(), map_location="cpu", weights_only=True)
    result = lite0.module.load_state_dict(state, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert len(lite0.labels) == 1000 and lite0.labels[ESPRESSO] == "espresso"
    assert lite0.preprocess == LITE_PREPROCESS  # resize 256, crop 224, mean 0.498, std 0.502


def _probs(loaded, *jpegs):
    crops = [decode_and_crop(j, loaded.preprocess) for j in jpegs]
    return TorchRuntime(loaded.module, "cpu", "fp32", 1).run(
        normalize_batch(crops, loaded.preprocess)
    )


def test_real_photos_get_correct_labels(lite0, cat_jpeg, coffee_jpeg):
    cat, coffee = _probs(lite0, cat_jpeg, coffee_jpeg)
    assert set(np.argsort(-cat)[:5]) & CAT_CLASSES, [
        imagenet_labels()[i] for i in np.argsort(-cat)[:5]
    ]
    assert int(coffee.argmax()) == ESPRESSO


def test_missing_weights_file_names_the_file(tmp_path):
    cfg = ModelConfig(name="r18", architecture="resnet18", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match="nope.pth.*does not exist"):
        load_model(cfg)


def test_weights_of_another_architecture_are_refused_with_the_mismatch(tmp_path):
    path = tmp_path / "lite0_as_resnet.pth"
    torch.save(torch.load(embedded_weights_path(), map_location="cpu", weights_only=True), path)
    cfg = ModelConfig(name="r18", architecture="resnet18", weights=str(path))
    with pytest.raises(ConfigError) as err:
        load_model(cfg)
    msg = str(err.value)
    assert "lite0_as_resnet.pth" in msg and "resnet18" in msg
    assert (
        "missing keys" in msg
        and "unexpected keys" in msg
        and "bn1.weight" in msg
        and "_blocks.0." in msg
    )


def test_wrong_class_count_is_reported_as_shape_mismatch(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class{i}" for i in range(10)))
    cfg = ModelConfig(name="lite10", labels=str(labels))
    with pytest.raises(
        ConfigError,
        match=r"shape mismatches.*_fc.weight: file \(1000, 1280\) vs model \(10, 1280\)",
    ):
        load_model(cfg)


def test_torchvision_architecture_with_local_weights(tmp_path):
    import torchvision

    path = tmp_path / "model_weights" / "resnet18.pth"
    path.parent.mkdir()
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), path)
    loaded = load_model(ModelConfig(name="r18", architecture="resnet18", weights=str(path)))
    assert loaded.preprocess.mean == (0.485, 0.456, 0.406) and len(loaded.labels) == 1000


def test_unknown_architecture_lists_choices(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"x")
    with pytest.raises(ConfigError, match="unknown architecture 'notanet'"):
        load_model(ModelConfig(name="x", architecture="notanet", weights=str(path)))


def test_not_a_state_dict_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="garbage.pth.*could not be read"):
        load_model(ModelConfig(name="x", architecture="resnet18", weights=str(path)))
