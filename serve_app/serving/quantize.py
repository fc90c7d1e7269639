"""INT8 variants of a model: ONNX Runtime static quantization (QDQ, per-channel weights).

The fp32 ONNX export (runtimes.export_onnx) is quantized once and cached beside it, keyed by the
export, the calibration photos and the settings, so a replica start or a test session pays it only
the first time. Calibration reads crops of real photos that ship with installed packages
(serving/photos.py), never the evaluation photos.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from serve_app.config import PreprocessSpec
from serve_app.serving.imaging import normalize_batch
from serve_app.serving.photos import CALIBRATION_PHOTOS, MIN_AREA, calibration_crops

# Bumped whenever the quantization code changes what it writes, so stale cache entries are ignored.
QUANTIZE_SCHEME = 3


@dataclass(frozen=True)
class QuantizeSettings:
    """How the graph is quantized; every field is part of the cache key."""

    # MinMax: percentile (99.99) and entropy (2,048 bins) calibration clip ranges that
    # MinMax keeps and agreed worse with fp32 (docs/bench/quantize_attempts.json); quantize_static
    # runs entropy with as many bins as quantized levels, which gives MinMax's ranges anyway.
    calibration: str = "minmax"  # minmax | entropy | percentile
    percentile: float = 99.999
    per_channel: bool = True
    # Kept in fp32: the leading convolutions (EfficientNet-Lite0: the stem and blocks 0-3, at
    # 112x112 and 56x56), where 8-bit activations cost the most agreement with fp32 for the least
    # speed (docs/bench/quantize_attempts.json); the classifier's Gemm, which decides the
    # ranking; and the softmax, whose 8-bit output would tie the top-5 scores.
    fp32_leading_convs: int = 12
    keep_last_gemm: bool = True
    # Every calibration batch's activations are held until the ranges are computed (this
    # onnxruntime drops, not merges, batches past CalibMaxIntermediateOutputs), so the crop count
    # is what bounds the memory a first start needs.
    calibration_per_photo: int = 8
    extra_excluded: tuple[str, ...] = field(default_factory=tuple)

    def key(self) -> str:
        doc = json.dumps({**asdict(self), "scheme": QUANTIZE_SCHEME}, sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()[:12]


DEFAULT_SETTINGS = QuantizeSettings()


def excluded_nodes(model_path: Path, settings: QuantizeSettings) -> list[str]:
    """Names of the nodes left in fp32: the leading Convs, the last Gemm/MatMul, every Softmax,
    and any named in the settings."""
    import onnx

    nodes = list(onnx.load(str(model_path), load_external_data=False).graph.node)
    names = [n.name for n in nodes if n.op_type == "Softmax"]
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    heads = [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
    # Whole blocks, never a lone depthwise or projection conv: a block left half in fp32 agreed
    # worse than the fully quantized one (docs/bench/quantize_attempts.json).
    names.extend(convs[: settings.fp32_leading_convs])
    if settings.keep_last_gemm and heads:
        names.append(heads[-1])
    return names + list(settings.extra_excluded)


class _Batches:
    """onnxruntime's CalibrationDataReader over normalised crops, a few at a time."""

    def __init__(self, input_name: str, batch: np.ndarray, size: int = 8):
        self._feeds = iter([{input_name: batch[i : i + size]} for i in range(0, len(batch), size)])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)

    def rewind(self) -> None:  # read once only
        pass


def int8_path(fp32_path: Path, settings: QuantizeSettings) -> Path:
    """Where the INT8 graph of an fp32 export is cached: beside it, named by its settings."""
    photos = hashlib.sha256(repr((CALIBRATION_PHOTOS, MIN_AREA)).encode()).hexdigest()[:8]
    return fp32_path.with_name(f"{fp32_path.stem}-int8-{settings.key()}-{photos}.onnx")


def quantize_int8(
    fp32_path: Path,
    preprocess: PreprocessSpec,
    settings: QuantizeSettings = DEFAULT_SETTINGS,
) -> Path:
    """The static INT8 (QDQ) graph of an fp32 ONNX export, built once and then read from the
    cache."""
    target = int8_path(fp32_path, settings)
    if target.is_file():
        return target
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[settings.calibration]
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=".int8-"))
    try:
        # Shape inference and constant folding first: the export computes its padding from shapes
        # at run time, which the quantizer would otherwise wrap in useless Q/DQ pairs.
        prepared = work / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        input_name = (
            ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"])
            .get_inputs()[0]
            .name
        )
        crops = calibration_crops(preprocess, settings.calibration_per_photo)
        extra: dict = {}
        if method == CalibrationMethod.Percentile:
            extra["CalibPercentile"] = settings.percentile
        out = work / "int8.onnx"
        quantize_static(
            str(prepared),
            str(out),
            _Batches(input_name, normalize_batch(crops, preprocess)),
            quant_format=QuantFormat.QDQ,
            per_channel=settings.per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded_nodes(prepared, settings),
            calibrate_method=method,
            extra_options=extra,
        )
        # Replicas of one model may quantize at the same moment: each renames its own file.
        os.replace(out, target)
    finally:
        for path in sorted(work.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        work.rmdir()
    return target
