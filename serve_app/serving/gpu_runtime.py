"""The CUDA runtime: uint8 crops to the GPU, normalised there, fp16 channels_last, CUDA graphs.

What it removes, from the first H200 measurement
(docs/bench/gpu/h200-efficientnet-lite0-2026-11-30.json): the eager model is launch-bound (~5 ms
from batch 1 to 16, 0.67 ms as one graph replay), and a float32 batch is four times the bytes of the
uint8 crops it was made from (154 MB at batch 256). So the crops travel as uint8 through a pinned
staging buffer (asynchronous copies, a chunk at a time so filling the next chunk overlaps the DMA of
the last), are normalised on the GPU into one static input buffer, and each batch-size bucket
replays its own graph (cuda_graphs.py).

Float32 NCHW batches (OIP FP32 inputs, the health check) take the same static buffer and graphs.
One batch runs at a time (a lock): the buffers are shared, and the health check arrives from
another thread than inference.
"""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

import numpy as np
import torch
from torch import nn

from serve_app.config import PreprocessSpec
from serve_app.serving.cuda_graphs import BucketedGraphs, bucket_sizes

T = TypeVar("T")

# Rows per pinned staging copy: small enough that copying the next chunk on the host overlaps the
# DMA of this one, large enough that each copy is a few MB.
STAGE_ROWS = 16
# Eager runs before a capture, on a side stream, as PyTorch asks: lazy initialisation and cuDNN's
# algorithm search must not happen inside the graph.
CAPTURE_WARMUP_RUNS = 3


def normalization_constants(
    spec: PreprocessSpec, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(offset, scale) as 1x3x1x1 float32 tensors on `device`: mean * 255 and std * 255, the
    constants imaging.normalize_batch uses."""
    offset = torch.tensor(spec.mean, dtype=torch.float32) * 255.0
    scale = torch.tensor(spec.std, dtype=torch.float32) * 255.0
    return offset.view(1, 3, 1, 1).to(device), scale.view(1, 3, 1, 1).to(device)


def normalize_on_device(
    crops: torch.Tensor,
    offset: torch.Tensor,
    scale: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 NHWC crops -> normalised NCHW in `dtype`, on the crops' device.

    The arithmetic is imaging.normalize_batch's (float32, minus mean*255, divided by std*255), so
    on CPU tensors the two agree to the last bit; the cast to `dtype` comes after. The result is
    NCHW in shape and channels_last in memory, as the permuted NHWC input already is: no transpose
    copy is made.
    """
    x = crops.permute(0, 3, 1, 2).to(torch.float32)
    return ((x - offset) / scale).to(dtype)


def capture_cuda_graph(
    fn: Callable[[], T], pool: object | None = None, warmup_runs: int = CAPTURE_WARMUP_RUNS
) -> Callable[[], T]:
    """Capture `fn` (reading and writing only static tensors) as one CUDA graph; returns its replay,
    which answers the graph's static output."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup_runs):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: CUDA calls other threads of the replica make meanwhile do not void the capture.
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        out = fn()

    def replay() -> T:
        graph.replay()
        return out

    return replay


class CudaGraphRuntime:
    """`model` (a module answering probabilities) on one device, batches in uint8 NHWC or float32
    NCHW, one graph per batch-size bucket.

    `graph_backend(fn)` returns a replay of `fn`; by default a real CUDA graph (capture_cuda_graph
    with one memory pool shared by all buckets). A fake that returns `fn` itself runs the whole
    path on a CPU.
    """

    accepts_uint8 = True

    def __init__(
        self,
        model: nn.Module,
        spec: PreprocessSpec,
        max_batch_size: int,
        precision: str = "fp16",
        device: str = "cuda",
        graphs: bool = True,
        graph_backend: Callable[[Callable[[], torch.Tensor]], Callable[[], torch.Tensor]]
        | None = None,
    ):
        dev = torch.device(device)
        self.device = dev.type
        on_cuda = dev.type == "cuda"
        self.dtype = torch.float16 if (on_cuda and precision == "fp16") else torch.float32
        self.precision = "fp16" if self.dtype == torch.float16 else "fp32"
        if on_cuda:
            # Shapes are fixed per bucket, so the algorithm search runs once per bucket.
            torch.backends.cudnn.benchmark = True
        self.model = model.eval().to(
            device=dev, dtype=self.dtype, memory_format=torch.channels_last
        )
        crop = spec.crop
        self.max_rows = max_batch_size
        self._static_in = torch.zeros(
            (max_batch_size, 3, crop, crop), dtype=self.dtype, device=dev
        ).contiguous(memory_format=torch.channels_last)
        self._u8 = torch.zeros((max_batch_size, crop, crop, 3), dtype=torch.uint8, device=dev)
        # Pinned, so the copies to the GPU are asynchronous DMA; on a CPU the same path runs
        # (for tests) with plain memory.
        self._staging = torch.zeros(
            (max_batch_size, crop, crop, 3), dtype=torch.uint8, pin_memory=on_cuda
        )
        self._offset, self._scale = normalization_constants(spec, dev)
        self._lock = threading.Lock()
        if graph_backend is None:
            pool = torch.cuda.graph_pool_handle() if (on_cuda and graphs) else None
            graph_backend = lambda fn: capture_cuda_graph(fn, pool)  # noqa: E731
        self.graphs = BucketedGraphs(
            bucket_sizes(max_batch_size),
            lambda bucket: graph_backend(lambda: self._eager(bucket)),
            self._eager,
            enabled=graphs,
        )

    @property
    def name(self) -> str:
        return "torch-cuda-graphs" if self.graphs.captured else "torch"

    def prepare(self) -> None:
        """Capture the graphs (a bucket that fails runs eagerly); call once before serving."""
        with self._lock, torch.inference_mode():
            self.graphs.capture_all()

    def describe(self) -> str:
        """What runs, in words: /v1/models shows it as the runtime's reason."""
        how = (
            f"{self.precision} channels_last on {self.device}, uint8 crops normalised on the device"
        )
        captured = self.graphs.captured
        if not self.graphs.enabled:
            return f"torch eager (configured `runtime: torch`), {how}"
        if not captured:
            return f"CUDA graph capture failed for every batch bucket: torch eager, {how}"
        text = f"CUDA graphs for batch buckets {', '.join(map(str, captured))} (padded up), {how}"
        eager = sorted(set(self.graphs.buckets) - set(captured))
        if eager:
            text += f"; eager for buckets {', '.join(map(str, eager))} (capture failed)"
        return text

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N x classes, float32) for uint8 N x H x W x 3 crops or a float32
        N x 3 x H x W batch already normalised."""
        with self._lock, torch.inference_mode():
            try:
                parts = [
                    self._run_rows(batch[i : i + self.max_rows])
                    for i in range(0, len(batch), self.max_rows)
                ]
            except BaseException:
                # Copies of the failed batch may still be in flight from the staging buffer the
                # next batch fills.
                if self.device == "cuda":
                    torch.cuda.current_stream().synchronize()
                raise
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _run_rows(self, rows: np.ndarray) -> np.ndarray:
        n = len(rows)
        if rows.dtype == np.uint8:
            self._to_device_uint8(rows)
            normalised = normalize_on_device(self._u8[:n], self._offset, self._scale)
            self._static_in[:n].copy_(normalised)
        else:
            self._static_in[:n].copy_(torch.from_numpy(np.asarray(rows, dtype=np.float32)))
        # The padding rows hold an earlier batch's pixels: in eval mode every row is computed on
        # its own, and their outputs are dropped.
        return self.graphs.run(n).float().cpu().numpy()

    def _to_device_uint8(self, rows: np.ndarray) -> None:
        src = torch.from_numpy(np.ascontiguousarray(rows))
        # The staging buffer is free again: the previous batch ended reading its output back, which
        # waits for everything queued before, its copies included.
        for start in range(0, len(rows), STAGE_ROWS):
            stop = min(len(rows), start + STAGE_ROWS)
            self._staging[start:stop].copy_(src[start:stop])
            self._u8[start:stop].copy_(self._staging[start:stop], non_blocking=True)

    def _eager(self, bucket: int) -> torch.Tensor:
        return self.model(self._static_in[:bucket])
