"""The model deployment: decode, batch, infer, report health.

One Recognizer deployment per configured model. It receives the encoded images as sent (usually tens
of KB, small enough for Ray to pass inline; a decoded 224x224 crop is 147 KB and would go through
the object store, which measured ~3 ms slower per request). A thread pool decodes and crops while
the single inference thread runs the model, so decoding never waits behind a batch; `@serve.batch`
gathers crops from many concurrent requests into one forward pass.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from ray import serve

from serve_app.config import LimitsConfig, ModelConfig
from serve_app.errors import ModelExecutionError, ServiceError
from serve_app.monitoring.gpu import ResourceMetricsReporter, ResourceReadings
from serve_app.monitoring.metric_groups import ServiceMetrics
from serve_app.monitoring.metrics import (
    STAGE_DECODE,
    STAGE_INFERENCE,
    STAGE_POSTPROCESS,
    STAGE_PREPROCESS,
    STAGE_QUEUE_WAIT,
)
from serve_app.serving.image_limits import check_request
from serve_app.serving.imaging import decode_and_crop, normalize_batch, read_header
from serve_app.serving.models import load_model
from serve_app.serving.overload_control import OverloadController
from serve_app.serving.runtimes import check_batch, is_cuda_oom, run_with_oom_split, select_runtime

log = logging.getLogger("ray.serve")

RESOURCE_REPORT_INTERVAL_S = 5.0


@dataclass
class CropResult:
    """What one crop got from a batch: its probabilities (or the error), and how long it waited and
    ran."""

    probs: np.ndarray | None
    error: str | None
    queue_wait_s: float
    inference_s: float
    batch_size: int


def top_k(probs: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """Class ids and scores of the k most probable classes, best first."""
    k = min(k, probs.shape[-1])
    idx = np.argpartition(-probs, k - 1)[:k]
    idx = idx[np.argsort(-probs[idx], kind="stable")]
    return idx.tolist(), probs[idx].astype(float).tolist()


@serve.deployment
class Recognizer:
    """Serves one model: batched inference on CPU (ONNX Runtime or torch) or CUDA (torch)."""

    def __init__(self, model_config: dict, limits: dict | None = None):
        """Load the weights, pick the runtime, warm up; Serve routes no traffic here until this
        returns."""
        self.cfg = ModelConfig.model_validate(model_config)
        self.limits = LimitsConfig.model_validate(limits or {})
        started = time.perf_counter()
        self.loaded = load_model(self.cfg)
        choice = select_runtime(self.cfg, self.loaded)
        self.runtime = choice.runtime
        # One thread: the runtime already uses `num_threads` cores; a second concurrent batch would
        # only contend for them. Running off the event loop lets the next batch fill while this one
        # runs.
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"infer-{self.cfg.name}"
        )
        # PIL releases the GIL while decoding, so these threads decode in parallel with inference.
        self._decoder = ThreadPoolExecutor(
            max_workers=self.cfg.decode_threads, thread_name_prefix="decode"
        )
        self._infer.set_max_batch_size(self.cfg.max_batch_size)
        self._infer.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)
        self._warm_up()
        self.metrics = ServiceMetrics(self.cfg.name, self.cfg.version)
        self._resources: ResourceReadings | None = None
        self._start_resource_reporter()
        self.overload = OverloadController(
            self.cfg.name,
            self.cfg.max_batch_size,
            self.cfg.overload,
            self._infer.set_max_batch_size,
        )
        if self.cfg.overload.enabled:
            self.overload.start(lambda: self._resources)
        self.startup_s = time.perf_counter() - started
        log.info(
            "model %s v%s ready on %s/%s in %.1fs (%s)",
            self.cfg.name,
            self.cfg.version,
            self.runtime.name,
            self.runtime.device,
            self.startup_s,
            choice.reason,
        )
        self._runtime_reason = choice.reason

    def _warm_up(self) -> None:
        """Run the reference photos and a full batch once so the first request pays no lazy
        initialisation."""
        self.runtime.run(check_batch(self.loaded))
        crop = self.loaded.preprocess.crop
        self.runtime.run(np.zeros((self.cfg.max_batch_size, 3, crop, crop), dtype=np.float32))

    def _start_resource_reporter(self) -> None:
        reporter = ResourceMetricsReporter()

        # A thread rather than an asyncio task: the constructor runs before the replica's event loop
        # serves requests, and NVML calls block.
        def loop() -> None:
            while True:
                # Kept for the overload control loop: GPU memory and RSS are two of its signals.
                self._resources = reporter.report_safely()
                time.sleep(RESOURCE_REPORT_INTERVAL_S)

        threading.Thread(target=loop, name="resource-metrics", daemon=True).start()

    def info(self) -> dict:
        """What /v1/models and /v2/models/{name} report about this model."""
        crop = self.loaded.preprocess.crop
        return {
            "name": self.cfg.name,
            "version": self.cfg.version,
            "architecture": self.cfg.architecture,
            "runtime": self.runtime.name,
            "runtime_reason": self._runtime_reason,
            "device": self.runtime.device,
            "precision": self.runtime.precision,
            "labels_count": len(self.loaded.labels),
            "input": {"shape": [3, crop, crop], "preprocess": self.loaded.preprocess.model_dump()},
            "max_batch_size": self.cfg.max_batch_size,
            "startup_s": round(self.startup_s, 3),
            "ready": True,
        }

    async def predict(self, images: list, k: int) -> dict:
        """Top-k for each image (encoded bytes, or float32 3xHxW already normalised), with stage
        timings.

        Client errors come back as `{"error": ServiceError.to_wire()}` rather than raised, so the
        Ingress answers them with their own status whatever Ray does to exceptions on the way.
        """
        started = time.perf_counter()
        try:
            self.overload.admit(len(images))
            crops, decode_s = await self._decode(images)
            result = await self._predict_crops(crops, k, decode_s)
        except ServiceError as err:
            return {"error": err.to_wire()}
        self.overload.request_done(time.perf_counter() - started)
        return result

    async def _decode(self, images: list) -> tuple[list[np.ndarray], float]:
        started = time.perf_counter()
        encoded = [i for i, img in enumerate(images) if isinstance(img, (bytes, bytearray))]
        if not encoded:
            return list(images), 0.0
        spec, limits = self.loaded.preprocess, self.limits
        data = [bytes(images[i]) for i in encoded]
        # Every header first: the request's decoded bytes are judged before any pixel is decoded.
        check_request(await self._in_decoder(read_header, data, spec, limits), limits)
        decoded = await self._in_decoder(decode_and_crop, data, spec, limits)
        crops = list(images)
        for i, crop in zip(encoded, decoded, strict=True):
            crops[i] = crop
        decode_s = time.perf_counter() - started
        self.metrics.observe_stage(STAGE_DECODE, decode_s)
        return crops, decode_s

    async def _in_decoder(self, fn, data: list[bytes], *args) -> list:
        """`fn(one, *args)` for each encoded image in the decode threads; the first error is
        raised once all are done."""
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(
            *(loop.run_in_executor(self._decoder, fn, one, *args) for one in data),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    async def _predict_crops(self, crops: list[np.ndarray], k: int, decode_s: float) -> dict:
        enqueued = time.perf_counter()
        self.overload.enqueued(len(crops))
        results: list[CropResult] = await asyncio.gather(
            *(self._infer((c, enqueued)) for c in crops)
        )
        started = time.perf_counter()
        predictions = []
        for r in results:
            if r.error is not None:
                raise ModelExecutionError(r.error)
            ids, scores = top_k(r.probs, k)
            predictions.append({"class_ids": ids, "scores": scores})
        postprocess_s = time.perf_counter() - started
        self.metrics.observe_stage(STAGE_POSTPROCESS, postprocess_s)
        return {
            "predictions": predictions,
            "timings_s": {
                "decode": decode_s,
                "queue_wait": max(r.queue_wait_s for r in results),
                "inference": max(r.inference_s for r in results),
                "postprocess": postprocess_s,
            },
            "batch_sizes": sorted({r.batch_size for r in results}),
        }

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _infer(self, items: list[tuple[np.ndarray, float]]) -> list[CropResult]:
        """One forward pass for crops gathered from concurrent requests."""
        batch_start = time.perf_counter()
        n = len(items)
        self.metrics.observe_batch_size(n)
        self.overload.batch_started([batch_start - enqueued for _, enqueued in items])
        try:
            batch = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run_batch, [c for c, _ in items]
            )
        finally:
            inference_s = time.perf_counter() - batch_start
            self.overload.batch_finished(inference_s)
        out = []
        for (_, enqueued), row in zip(items, batch, strict=True):
            wait = batch_start - enqueued
            self.metrics.observe_stage(STAGE_QUEUE_WAIT, wait)
            if isinstance(row, BaseException):
                out.append(
                    CropResult(
                        None, f"model failed on this image even alone: {row}", wait, inference_s, n
                    )
                )
            else:
                out.append(CropResult(row, None, wait, inference_s, n))
        return out

    def _run_batch(self, crops: list[np.ndarray]) -> list[np.ndarray | BaseException]:
        """Normalise and run a batch in the inference thread; CUDA OOM splits the batch
        (runtimes.run_with_oom_split)."""
        with self.metrics.stage(STAGE_PREPROCESS):
            batch = self._to_model_input(crops)
        with self.metrics.stage(STAGE_INFERENCE):
            return run_with_oom_split(
                self.runtime.run, batch, is_cuda_oom, on_oom=self._free_cuda_cache
            )

    def _to_model_input(self, crops: list[np.ndarray]) -> np.ndarray:
        """uint8 HWC crops are normalised here, or on the GPU by a runtime that `accepts_uint8`
        (a quarter of the bytes to copy); float32 CHW ones (OIP FP32 input) are used as sent."""
        spec = self.loaded.preprocess
        if all(c.dtype == np.uint8 for c in crops):
            if getattr(self.runtime, "accepts_uint8", False):
                return np.stack(crops)
            return normalize_batch(crops, spec)
        rows = [
            normalize_batch([c], spec)[0]
            if c.dtype == np.uint8
            else c.astype(np.float32, copy=False)
            for c in crops
        ]
        return np.ascontiguousarray(np.stack(rows))

    @staticmethod
    def _free_cuda_cache() -> None:
        import torch

        log.warning("CUDA out of memory: splitting the batch and retrying")
        torch.cuda.empty_cache()

    def check_health(self) -> None:
        """Serve's health check: a tiny inference on a fixed input must give finite probabilities of
        the right shape."""
        crop = self.loaded.preprocess.crop
        probs = self.runtime.run(np.zeros((1, 3, crop, crop), dtype=np.float32))
        expected = (1, len(self.loaded.labels))
        if probs.shape != expected or not np.isfinite(probs).all():
            raise RuntimeError(
                f"health check failed: output shape {probs.shape} (want {expected}) or non-finite"
            )
