"""OIP over gRPC load against a running service, with tritonclient.grpc's asyncio client: the gRPC
counterpart of loadgen.closed_loop, so `make bench` measures both fronts with the same photos and
the same closed loop."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from serve_app.devtools.loadgen import percentiles

MODEL = "efficientnet_lite0"
CALL_TIMEOUT_S = 60.0


async def grpc_closed_loop(
    target: str,
    payloads: list,
    images_per_request: int,
    concurrency: int,
    seconds: float,
    headers: dict[str, str] | None = None,
) -> dict:
    """`concurrency` clients sending ModelInfer back to back for `seconds` on one channel, each
    request the payload's images as the BYTES `image` input, with `headers` as metadata: images/s
    and request latencies."""
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    client = grpcclient.InferenceServerClient(target)

    def request_input(images: list[bytes]):
        t = grpcclient.InferInput("image", [len(images)], "BYTES")
        t.set_data_from_numpy(np.array(images, dtype=np.object_))
        return t

    inputs = [request_input(p) for p in payloads]

    async def one_client(k: int) -> None:
        nonlocal errors
        i = k
        while time.perf_counter() < deadline:
            t = inputs[i % len(inputs)]
            i += 1
            start = time.perf_counter()
            try:
                await client.infer(MODEL, [t], headers=headers, client_timeout=CALL_TIMEOUT_S)
                latencies.append(time.perf_counter() - start)
            except InferenceServerException:
                errors += 1

    try:
        started = time.perf_counter()
        await asyncio.gather(*(one_client(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        await client.close()
    return {
        "images_per_s": round(len(latencies) * images_per_request / elapsed, 1),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "errors": errors,
        **percentiles(latencies),
    }
