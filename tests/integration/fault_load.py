"""What the fault tests drive and read: a bounded open-loop client of single-photo predicts, the
closed-loop burst that measures capacity, and Serve's own view of its replicas.

Every request is counted: a non-200 answer, a connection error or a timeout is a failure. With
`retry` on, a request that failed with a 503 or a broken connection is sent again after the
Retry-After it was given, at most CLIENT_RETRIES times (predicts are idempotent); both its first
attempt and its outcome are counted.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import requests
import tritonclient.grpc as grpcclient

from serve_app.devtools.loadgen import closed_loop

REQUEST_TIMEOUT_S = 60  # a request queued behind a replica start on a loaded 2-core host
# What the open loop may have on the wire at once, at most: enough that a request is refused by
# the bound only after the service has been slow for longer than the bound's share of its timeout.
MAX_IN_FLIGHT = 1024
RETRY_STATUSES = {503}
CLIENT_RETRIES = 4  # sends after the first, each after the Retry-After the 503 asked for
DEFAULT_RETRY_AFTER_S = 1.0  # a broken connection says nothing: wait as long as a shed request


def measure_capacity(url: str, photos: list[bytes], concurrency: int, seconds: float) -> float:
    """Predicts per second the service answers 200 to, closed loop (each client sends its next
    request when the last one answered)."""
    payloads = [[p] for p in photos]
    result = asyncio.run(closed_loop(url, payloads, 1, concurrency, seconds, raw=True))
    return float(result["requests_per_s"])


@dataclass
class LoadResult:
    """One open-loop run: what was sent and how it ended."""

    rate_rps: float
    seconds: float
    sent: int = 0
    failed: int = 0  # outcome after the client retry, if any
    first_attempt_failed: int = 0
    retried: int = 0
    not_sent: int = 0  # the in-flight bound was reached: counted as failed too
    max_in_flight: int = 0  # that bound
    most_on_wire: int = 0  # the most requests on the wire at once
    outcomes: Counter = field(default_factory=Counter)  # first-attempt status or error name
    failures: list[tuple[float, str]] = field(default_factory=list)  # (s from start, what)

    def summary(self) -> dict:
        return {
            "sent": self.sent,
            "failed": self.failed,
            "first_attempt_failed": self.first_attempt_failed,
            "retried": self.retried,
            "not_sent": self.not_sent,
            "max_in_flight": self.max_in_flight,
            "most_on_wire": self.most_on_wire,
            "rate_rps": round(self.rate_rps, 2),
            "seconds": self.seconds,
            "first_attempt_outcomes": {
                str(k): v for k, v in sorted(self.outcomes.items(), key=str)
            },
        }


def in_flight_bound(rate_rps: float) -> int:
    """Requests the open loop lets be on the wire at once: as many as `rate_rps` sends within one
    request timeout (every one of them may still be answered in time), at most MAX_IN_FLIGHT and
    half this process's open-file limit, at least 128.

    A smaller bound counts the client's own refusal as the service's failure whenever answers slow
    down for a few seconds: at 37 req/s, 128 in flight is 3.5 s of slow answers, where each request
    itself waits up to REQUEST_TIMEOUT_S.
    """
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = MAX_IN_FLIGHT if soft == resource.RLIM_INFINITY else min(MAX_IN_FLIGHT, soft // 2)
    return max(128, min(ceiling, int(rate_rps * REQUEST_TIMEOUT_S) + 1))


class OpenLoop:
    """Requests started on a fixed schedule at `rate_rps` whatever the answers, from a thread of
    its own, until `stop_at` or `max_seconds`; at most `max_in_flight` sent and not yet answered at
    once, and `rate x max_seconds` in all. A request waiting out its Retry-After is not in flight:
    it holds no connection and asks nothing of the service, so it takes no slot."""

    def __init__(
        self,
        url: str,
        photos: list[bytes],
        rate_rps: float,
        max_seconds: float,
        retry: bool = False,
        max_in_flight: int | None = None,
    ):
        self.url = url
        self.photos = photos
        self.retry = retry
        self.max_in_flight = max_in_flight or in_flight_bound(rate_rps)
        self.result = LoadResult(
            rate_rps=rate_rps, seconds=max_seconds, max_in_flight=self.max_in_flight
        )
        self.stop_after = max_seconds
        self.started_at: float | None = None
        self._on_wire = 0  # attempts sent and not yet answered (the event loop's thread only)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> OpenLoop:
        self._thread.start()
        while self.started_at is None:
            time.sleep(0.01)
        return self

    def elapsed(self) -> float:
        return time.monotonic() - (self.started_at or time.monotonic())

    def stop_at(self, elapsed_s: float) -> None:
        """Start no request later than `elapsed_s` from the start."""
        self.stop_after = min(self.stop_after, elapsed_s)

    def join(self) -> LoadResult:
        self._thread.join(self.stop_after - self.elapsed() + 2 * REQUEST_TIMEOUT_S + 30)
        assert not self._thread.is_alive(), "the load client did not finish"
        return self.result

    async def _attempt(
        self, session: aiohttp.ClientSession, body: bytes
    ) -> tuple[float | None, str]:
        """(seconds to wait before a retry, None where a retry cannot help; outcome): the outcome
        is the status or the error's name."""
        self._on_wire += 1
        self.result.most_on_wire = max(self.result.most_on_wire, self._on_wire)
        try:
            async with session.post(
                self.url, data=body, headers={"Content-Type": "image/jpeg"}
            ) as resp:
                await resp.read()
                if resp.status not in RETRY_STATUSES:
                    return None, str(resp.status)
                try:
                    wait = float(resp.headers.get("Retry-After", DEFAULT_RETRY_AFTER_S))
                except ValueError:
                    wait = DEFAULT_RETRY_AFTER_S
                return wait, str(resp.status)
        except (aiohttp.ClientConnectionError, aiohttp.ServerDisconnectedError) as exc:
            return DEFAULT_RETRY_AFTER_S, type(exc).__name__
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            return None, type(exc).__name__
        finally:
            self._on_wire -= 1

    async def _one(self, session: aiohttp.ClientSession, body: bytes) -> None:
        result = self.result
        wait, outcome = await self._attempt(session, body)
        result.outcomes[outcome] += 1
        if outcome == "200":
            return
        result.first_attempt_failed += 1
        at = round(self.elapsed(), 2)
        history = [outcome]
        if self.retry:
            for _ in range(CLIENT_RETRIES):
                if wait is None:
                    break
                result.retried += 1
                await asyncio.sleep(wait)
                wait, again = await self._attempt(session, body)
                if again == "200":
                    return
                history.append(again)
        result.failed += 1
        result.failures.append((at, " then ".join(history)))

    async def _run(self) -> None:
        result = self.result
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        connector = aiohttp.TCPConnector(limit=self.max_in_flight)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            tasks: set[asyncio.Task] = set()
            self.started_at = start = time.monotonic()
            i = 0
            while i / result.rate_rps < self.stop_after:
                await asyncio.sleep(max(0.0, start + i / result.rate_rps - time.monotonic()))
                if i / result.rate_rps >= self.stop_after:  # stopped while this one waited
                    break
                body = self.photos[i % len(self.photos)]
                i += 1
                result.sent += 1
                if self._on_wire >= self.max_in_flight:
                    result.not_sent += 1
                    result.failed += 1
                    result.first_attempt_failed += 1
                    result.failures.append((round(self.elapsed(), 2), "not sent"))
                    continue
                task = asyncio.create_task(self._one(session, body))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            result.seconds = round(time.monotonic() - start, 1)
            if tasks:
                await asyncio.gather(*tasks)


class ServeView:
    """Serve's own view of the application through the Ray dashboard's REST API (token auth):
    replica states and PIDs per deployment."""

    def __init__(self, dashboard_url: str, token: str, app: str):
        self.dashboard = dashboard_url
        self.url = f"{dashboard_url}/api/serve/applications/"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.app = app

    def application(self) -> dict:
        answer = requests.get(self.url, headers=self.headers, timeout=10)
        answer.raise_for_status()
        return answer.json()["applications"][self.app]

    def replicas(self, deployment: str) -> list[dict]:
        """Its replicas; none while a redeploy has not built the deployment yet."""
        found = self.application()["deployments"].get(deployment)
        return found["replicas"] if found else []

    def running_pids(self, deployment: str) -> set[int]:
        return {r["pid"] for r in self.replicas(deployment) if r["state"] == "RUNNING"}

    def deploy(self, config: dict) -> None:
        """What `serve deploy` sends: the whole config, applied by Serve's controller."""
        answer = requests.put(self.url, json=config, headers=self.headers, timeout=60)
        assert answer.status_code == 200, answer.text


class ServeDeploy:
    """`serve deploy FILE -a DASHBOARD`, run by the `serve` command's own entry point
    (`ray.serve.scripts:cli`) with the Ray token, in a process started ahead: it imports Ray
    before the load and runs when `run()` says so. Under the load, the interpreter's own start-up
    on a 2-core host took ~20 s, time the rollout did not need."""

    PROGRAM = (
        "import sys\n"
        "from ray.serve.scripts import cli\n"
        "print('imported', flush=True)\n"
        "sys.stdin.readline()\n"
        "sys.argv = ['serve', *sys.argv[1:]]\n"
        "cli()\n"
    )

    def __init__(self, path: Path, dashboard: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.PROGRAM, "deploy", str(path), "-a", dashboard],
            env={**os.environ, "RAY_AUTH_MODE": "token"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines = []
        while (line := self.proc.stdout.readline()) and line.strip() != "imported":
            lines.append(line)
        assert line, "serve deploy did not start:\n" + "".join(lines)

    def run(self, timeout_s: float) -> None:
        out, _ = self.proc.communicate("go\n", timeout=timeout_s)
        assert self.proc.returncode == 0, out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def wait_for(probe, timeout_s: float, what: str, every: float = 0.5):
    """`probe()` until truthy; the value and the seconds it took. Fails after `timeout_s`."""
    start = time.monotonic()
    while True:
        try:
            value = probe()
        except requests.RequestException:  # the dashboard busy for a moment: ask again
            value = None
        if value:
            return value, time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every)


def oip_infer_http(service_url: str, model: str, photo: bytes) -> None:
    """One OIP v2 infer over HTTP (JSON, the photo as base64 BYTES), answered 200."""
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "data": [base64.b64encode(photo).decode()],
            }
        ]
    }
    answer = requests.post(f"{service_url}/v2/models/{model}/infer", json=body, timeout=60)
    assert answer.status_code == 200, answer.text


def oip_infer_grpc(target: str, model: str, photo: bytes) -> None:
    """One OIP v2 ModelInfer over gRPC, as tritonclient sends it; raises unless answered."""
    client = grpcclient.InferenceServerClient(url=target)
    try:
        t = grpcclient.InferInput("image", [1], "BYTES")
        t.set_data_from_numpy(np.array([photo], dtype=np.object_))
        assert client.infer(model, [t], client_timeout=60).as_numpy("class_ids").shape[0] == 1
    finally:
        client.close()
