"""HTTP load against a running service, and the photos it sends: what `make bench` and
`recserve capacity` measure with.

Closed loop: a fixed number of clients, each sending its next request when the last one answered
(throughput). Open loop: requests started on a fixed schedule whatever the answers (latency at a
given rate).
"""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np


def photos_jpeg() -> list[bytes]:
    """Real photos (scikit-image's bundled set) as JPEG, the payload users send."""
    from PIL import Image
    from skimage import data

    out = []
    for arr in (
        data.chelsea(),
        data.coffee(),
        data.rocket(),
        data.astronaut(),
        data.stereo_motorcycle()[0],
    ):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def percentiles(latencies: list[float]) -> dict:
    """p50/p95/p99 in milliseconds of latencies in seconds, and how many there were."""
    if not latencies:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "n": 0}
    q = np.percentile(np.asarray(latencies) * 1000, [50, 95, 99])
    return {
        "p50_ms": round(float(q[0]), 1),
        "p95_ms": round(float(q[1]), 1),
        "p99_ms": round(float(q[2]), 1),
        "n": len(latencies),
    }


def _multipart(images: list[bytes]):
    import aiohttp

    form = aiohttp.FormData()
    for i, img in enumerate(images):
        form.add_field("file", img, filename=f"{i}.jpg", content_type="image/jpeg")
    return form


async def closed_loop(
    url: str, payloads: list, images_per_request: int, concurrency: int, seconds: float, raw: bool
) -> dict:
    """`concurrency` clients sending back to back for `seconds`: images/s and request latencies.

    `raw` sends each payload's first image as the request body; otherwise all of its images as a
    multipart form.
    """
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(k: int, session) -> None:
        nonlocal errors
        i = k
        while time.perf_counter() < deadline:
            body = payloads[i % len(payloads)]
            i += 1
            start = time.perf_counter()
            if raw:
                resp = await session.post(url, data=body[0], headers={"Content-Type": "image/jpeg"})
            else:
                resp = await session.post(url, data=_multipart(body))
            await resp.read()
            if resp.status == 200:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(k, session) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "images_per_s": round(len(latencies) * images_per_request / elapsed, 1),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "errors": errors,
        **percentiles(latencies),
    }


async def open_loop(url: str, payloads: list, rate: float, seconds: float) -> dict:
    """Requests started at a fixed rate regardless of responses: latency percentiles under that
    load."""
    import aiohttp

    latencies: list[float] = []
    errors = 0

    async def one(session, body: bytes) -> None:
        nonlocal errors
        start = time.perf_counter()
        resp = await session.post(url, data=body, headers={"Content-Type": "image/jpeg"})
        await resp.read()
        if resp.status == 200:
            latencies.append(time.perf_counter() - start)
        else:
            errors += 1

    async with aiohttp.ClientSession() as session:
        tasks, start = [], time.perf_counter()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(session, payloads[i % len(payloads)][0])))
        await asyncio.gather(*tasks)
    return {"rate_rps": rate, "errors": errors, **percentiles(latencies)}
