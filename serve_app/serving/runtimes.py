"""Inference runtimes behind one interface: a float32 NCHW batch in, class probabilities out.

`torch` runs the module eagerly on CPU; on CUDA, gpu_runtime.py runs it (uint8 crops normalised
on the GPU, fp16 channels_last, CUDA graphs per batch bucket, eager with `runtime: torch`).
`onnxruntime` runs the same weights exported to ONNX at start-up (cached on disk), 2-3x faster
than eager torch on CPU here (docs/PERFORMANCE.md). `auto` picks ONNX Runtime on CPU only after
checking that it agrees with torch on real photos.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn

from serve_app.config import ModelConfig
from serve_app.serving.imaging import normalize_batch, resize_and_crop
from serve_app.serving.models import LoadedModel

log = logging.getLogger("ray.serve")

ONNX_OPSET = 17
# Largest difference in any class probability we accept between ONNX Runtime and torch (fp32 both);
# measured differences are ~1e-6, so this only trips on a real export fault.
AGREEMENT_TOLERANCE = 1e-3


class Runtime(Protocol):
    name: str
    device: str
    precision: str

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N x classes, float32) for a float32 NCHW batch; a runtime with
        `accepts_uint8` also takes uint8 NHWC crops and normalises them itself."""


class _Softmaxed(nn.Module):
    """The classifier followed by softmax, so every runtime returns probabilities."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.module(x).float(), dim=-1)


class TorchRuntime:
    """Eager torch on CPU or CUDA."""

    name = "torch"

    def __init__(self, module: nn.Module, device: str, precision: str, num_threads: int):
        self.device = device
        self.dtype = torch.float16 if (device == "cuda" and precision == "fp16") else torch.float32
        self.precision = "fp16" if self.dtype == torch.float16 else "fp32"
        if device == "cpu":
            torch.set_num_threads(num_threads)
        model = _Softmaxed(module).eval()
        if device == "cuda":
            model = model.to(device=device, memory_format=torch.channels_last, dtype=self.dtype)
        self.model = model

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch)
        with torch.inference_mode():
            if self.device == "cuda":
                x = x.to(self.device, non_blocking=True).to(
                    dtype=self.dtype, memory_format=torch.channels_last
                )
            return self.model(x).float().cpu().numpy()


class OnnxRuntime:
    """ONNX Runtime (CPU execution provider) on a graph exported from the same torch weights."""

    name = "onnxruntime"
    device = "cpu"

    def __init__(self, onnx_path: Path, num_threads: int, precision: str = "fp32"):
        import onnxruntime as ort

        self.precision = precision

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = onnx_path
        self.session = ort.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


def cache_dir() -> Path:
    """Where exported graphs are cached: $RECSERVE_CACHE_DIR or ~/.cache/recognition-serve."""
    return Path(os.environ.get("RECSERVE_CACHE_DIR", Path.home() / ".cache" / "recognition-serve"))


def export_onnx(loaded: LoadedModel, architecture: str) -> Path:
    """Export the model to ONNX once per (weights, architecture, torch version); later calls reuse
    the file."""
    crop = loaded.preprocess.crop
    key = (
        f"{architecture}-{loaded.weights_sha256[:16]}-{len(loaded.labels)}-{crop}"
        f"-torch{torch.__version__}-op{ONNX_OPSET}"
    )
    target = cache_dir() / "onnx" / f"{key}.onnx"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, crop, crop)
    # Replicas of one model may export at the same moment: write to a private file, then rename.
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Softmaxed(loaded.module).eval(),
                (example,),
                tmp,
                input_names=["pixels"],
                output_names=["probabilities"],
                dynamic_axes={"pixels": {0: "batch"}, "probabilities": {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def reference_photos() -> list[np.ndarray]:
    """Real photos shipped with scikit-image (a cat, a cup of espresso, a rocket, a motorcycle) as
    RGB arrays."""
    from skimage import data

    return [data.chelsea(), data.coffee(), data.rocket(), data.stereo_motorcycle()[0]]


def agreement(a: Runtime, b: Runtime, batch: np.ndarray) -> tuple[bool, float]:
    """Whether two runtimes give the same top-1 class and probabilities within tolerance, and the
    max diff."""
    pa, pb = a.run(batch), b.run(batch)
    max_diff = float(np.abs(pa - pb).max())
    same_top1 = bool((pa.argmax(axis=1) == pb.argmax(axis=1)).all())
    return same_top1 and max_diff <= AGREEMENT_TOLERANCE, max_diff


def check_crops(loaded: LoadedModel) -> list[np.ndarray]:
    """The reference photos resized and cropped for the model (uint8 HWC), not yet normalised."""
    from PIL import Image

    return [resize_and_crop(Image.fromarray(p), loaded.preprocess) for p in reference_photos()]


def check_batch(loaded: LoadedModel) -> np.ndarray:
    """The reference photos preprocessed as the model expects, for agreement checks and warm-up."""
    return normalize_batch(check_crops(loaded), loaded.preprocess)


def resolve_device(requested: str) -> str:
    """`auto` becomes `cuda` when torch sees a GPU in this process, else `cpu`."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device: cuda was configured but torch sees no CUDA device in this replica"
        )
    return requested


@dataclass(frozen=True)
class RuntimeChoice:
    runtime: Runtime
    reason: str


def select_runtime(cfg: ModelConfig, loaded: LoadedModel) -> RuntimeChoice:
    """Build the configured runtime; for `auto` on CPU prefer ONNX Runtime when it agrees with
    torch."""
    device = resolve_device(cfg.device)
    if cfg.precision == "int8":
        return int8_runtime(cfg, loaded)
    if device == "cuda":
        return cuda_runtime(cfg, loaded)
    torch_rt = TorchRuntime(loaded.module, device, cfg.precision, cfg.num_threads)
    if cfg.runtime == "torch":
        return RuntimeChoice(torch_rt, "configured")
    try:
        onnx_rt = OnnxRuntime(export_onnx(loaded, cfg.architecture), cfg.num_threads)
    except Exception as exc:
        if cfg.runtime == "onnxruntime":
            raise
        log.warning("ONNX export failed for %s, serving with torch: %s", cfg.name, exc)
        return RuntimeChoice(torch_rt, f"onnx export failed: {exc}")
    ok, max_diff = agreement(torch_rt, onnx_rt, check_batch(loaded))
    if not ok:
        if cfg.runtime == "onnxruntime":
            raise RuntimeError(
                f"ONNX Runtime disagrees with torch on reference photos (max diff {max_diff:.2e})"
            )
        log.warning(
            "ONNX Runtime disagrees with torch for %s (max diff %.2e): serving with torch",
            cfg.name,
            max_diff,
        )
        return RuntimeChoice(
            torch_rt, f"onnxruntime disagreed with torch (max diff {max_diff:.2e})"
        )
    return RuntimeChoice(
        onnx_rt, f"agrees with torch on reference photos (max diff {max_diff:.1e})"
    )


def cpu_fp32_probs(module: nn.Module, batch: np.ndarray) -> np.ndarray:
    """The module's probabilities in fp32 on the CPU, the reference a GPU runtime is checked
    against; torch's thread count is left as it is (TorchRuntime would set it)."""
    with torch.inference_mode():
        return _Softmaxed(module).eval()(torch.from_numpy(batch)).numpy()


def cuda_runtime(
    cfg: ModelConfig, loaded: LoadedModel, device: str = "cuda", graph_backend=None
) -> RuntimeChoice:
    """torch on CUDA (gpu_runtime.py): CUDA graphs per batch bucket, or eager with `runtime:
    torch`. Its top-1 on the reference photos, sent as uint8 crops, must be the CPU fp32 one, or
    the replica refuses to start. (`device` and `graph_backend` let a CPU run it all in tests.)"""
    from serve_app.serving.gpu_runtime import CudaGraphRuntime

    crops = check_crops(loaded)
    # The CPU answer first: moving the module to the GPU moves it in place.
    cpu_top1 = cpu_fp32_probs(loaded.module, normalize_batch(crops, loaded.preprocess)).argmax(1)
    runtime = CudaGraphRuntime(
        _Softmaxed(loaded.module),
        loaded.preprocess,
        cfg.max_batch_size,
        cfg.precision,
        device,
        graphs=cfg.runtime != "torch",
        graph_backend=graph_backend,
    )
    runtime.prepare()
    differ = int((runtime.run(np.stack(crops)).argmax(1) != cpu_top1).sum())
    if differ:
        raise RuntimeError(
            f"{cfg.name} on {runtime.device} ({runtime.precision}, {runtime.name}) disagrees "
            f"with the CPU fp32 top-1 on {differ} of {len(crops)} reference photos"
            + ("; serve it with `precision: fp32`" if runtime.precision == "fp16" else "")
        )
    reason = f"{runtime.describe()}; top-1 as CPU fp32 on {len(crops)} reference photos"
    log.info("model %s on %s: %s", cfg.name, runtime.device, reason)
    return RuntimeChoice(runtime, reason)


def int8_runtime(cfg: ModelConfig, loaded: LoadedModel) -> RuntimeChoice:
    """ONNX Runtime on the model's static INT8 graph (serving/quantize.py), quantized on first use
    and cached beside the fp32 export; it must give the fp32 graph's top-1 on the reference
    photos, or the replica refuses to start."""
    from serve_app.serving.quantize import quantize_int8

    if cfg.device != "cpu" or cfg.runtime == "torch":  # config validation says so first
        raise RuntimeError("precision int8 runs on the CPU with ONNX Runtime only")
    fp32_path = export_onnx(loaded, cfg.architecture)
    int8 = OnnxRuntime(quantize_int8(fp32_path, loaded.preprocess), cfg.num_threads, "int8")
    fp32 = OnnxRuntime(fp32_path, cfg.num_threads)
    batch = check_batch(loaded)
    same = fp32.run(batch).argmax(axis=1) == int8.run(batch).argmax(axis=1)
    if not same.all():
        raise RuntimeError(
            f"INT8 graph of {cfg.name} disagrees with fp32 on {int((~same).sum())} of "
            f"{len(same)} reference photos; serve it in fp32"
        )
    return RuntimeChoice(int8, "int8 static quantization, top-1 as fp32 on reference photos")


def run_with_oom_split(
    run: Callable[[np.ndarray], np.ndarray],
    batch: np.ndarray,
    is_oom: Callable[[BaseException], bool],
    on_oom: Callable[[], None] = lambda: None,
) -> list[np.ndarray | BaseException]:
    """Run a batch; on out-of-memory split it in halves and retry, down to single images.

    Returns one entry per input row: its probabilities, or the error for the rows that fail even
    alone, so one oversized batch costs only the requests that truly cannot run.
    """
    try:
        probs = run(batch)
        return list(probs)
    except BaseException as exc:
        if not is_oom(exc):
            raise
        on_oom()
        if len(batch) == 1:
            return [exc]
        mid = len(batch) // 2
        return run_with_oom_split(run, batch[:mid], is_oom, on_oom) + run_with_oom_split(
            run, batch[mid:], is_oom, on_oom
        )


def is_cuda_oom(exc: BaseException) -> bool:
    """True for torch's CUDA out-of-memory error."""
    return isinstance(exc, torch.cuda.OutOfMemoryError)
