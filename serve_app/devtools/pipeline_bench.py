"""The in-process pipeline of `make bench`: decode + crop + normalise + ONNX Runtime in one process,
at the thread budget of a served variant.

A served replica runs `decode_threads` decode threads feeding one inference thread with one
intra-op thread. The pipeline for N replicas runs N inference workers (each its own session, one
intra-op thread) fed by N x decode_threads decode threads from one queue, so "served / pipeline"
compares the same threads doing the same work with and without the serving path.
"""

from __future__ import annotations

import queue
import statistics
import threading
import time

from serve_app.devtools.fairness import pipeline_budget
from serve_app.devtools.loadgen import photos_jpeg

# How long the workers may take to finish their first batch (session start, first run) on a
# loaded machine before the measurement gives up.
FIRST_BATCH_TIMEOUT_S = 120.0


def bench_pipeline(
    batch_size: int, seconds: float, replicas: int = 1, decode_threads: int = 2, repeats: int = 3
) -> dict:
    """images/s of the pipeline at the budget of `replicas` served replicas: the median over
    `repeats` windows of `seconds`, counted once every worker has run a batch."""
    from serve_app.config import ModelConfig
    from serve_app.serving.imaging import decode_and_crop, normalize_batch
    from serve_app.serving.models import load_model
    from serve_app.serving.runtimes import OnnxRuntime, export_onnx

    budget = pipeline_budget(replicas, decode_threads)
    loaded = load_model(ModelConfig(name="efficientnet_lite0"))
    path = export_onnx(loaded, "efficientnet_lite0")
    runtimes = [OnnxRuntime(path, budget["intra_op_threads"]) for _ in range(replicas)]
    jpegs = photos_jpeg()
    spec = loaded.preprocess
    crops: queue.Queue = queue.Queue(maxsize=4 * batch_size * replicas)
    stop = threading.Event()
    lock = threading.Lock()
    done = [0]  # images through the model, all workers together
    started = threading.Barrier(replicas + 1)

    def decoder(offset: int) -> None:
        i = offset
        while not stop.is_set():
            crop = decode_and_crop(jpegs[i % len(jpegs)], spec)
            i += 1
            while not stop.is_set():
                try:
                    crops.put(crop, timeout=0.1)
                    break
                except queue.Full:
                    pass

    def take(n: int) -> list | None:
        batch = []
        while len(batch) < n:
            try:
                batch.append(crops.get(timeout=0.1))
            except queue.Empty:
                if stop.is_set():
                    return None
        return batch

    def worker(rt) -> None:
        first = True
        while not stop.is_set():
            batch = take(batch_size)
            if batch is None:
                return
            rt.run(normalize_batch(batch, spec))
            if first:
                first = False
                started.wait()  # the windows start once every session has warmed up
                continue
            with lock:
                done[0] += batch_size

    threads = [
        threading.Thread(target=decoder, args=(k,), daemon=True)
        for k in range(budget["decode_threads"])
    ] + [threading.Thread(target=worker, args=(rt,), daemon=True) for rt in runtimes]
    for t in threads:
        t.start()
    rates = []
    try:
        started.wait(timeout=FIRST_BATCH_TIMEOUT_S)
        for _ in range(repeats):
            with lock:
                n0 = done[0]
            t0 = time.perf_counter()
            time.sleep(seconds)
            with lock:
                n1 = done[0]
            rates.append((n1 - n0) / (time.perf_counter() - t0))
    finally:
        stop.set()
        for t in threads:
            t.join()
    rate = statistics.median(rates)
    print(
        f"  pipeline batch {batch_size}, {replicas} worker(s), "
        f"{budget['decode_threads']} decode threads: {rate:.1f} img/s",
        flush=True,
    )
    return {"batch_size": batch_size, **budget, "images_per_s": round(rate, 1)}
