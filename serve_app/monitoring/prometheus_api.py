"""The one client of Prometheus' HTTP API (`/api/v1/query`, `/api/v1/query_range`) the project uses.

The forecaster's history, the load-test collector and the monitoring stack all read Prometheus
through it, so errors read the same everywhere: any failure (unreachable, non-JSON, `status:
error`) raises `PrometheusUnavailable` naming the address and the query. The autoscaling policy
is the exception: Ray's own `PrometheusQueryMixin` fetches for it inside the Serve controller.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import httpx

# Prometheus refuses a range query of more than 11,000 points per series.
MAX_POINTS_PER_QUERY = 11_000
DEFAULT_TIMEOUT_S = 10.0


class PrometheusUnavailable(RuntimeError):
    """Prometheus could not be reached, or refused the query."""


def base_url(address: str) -> str:
    """`host:port` or a URL, as a URL without a trailing slash."""
    address = address.strip().rstrip("/")
    if not address.startswith(("http://", "https://")):
        address = f"http://{address}"
    return address


def did_not_answer(url: str, exc: Exception) -> str:
    """What to say when the request to Prometheus at `url` failed before any answer."""
    return f"Prometheus at {url} did not answer: {exc}"


def answered_without_json(url: str, status: int) -> str:
    """What to say when Prometheus (or a proxy before it) answered `url` with something else."""
    return f"Prometheus at {url} answered HTTP {status} without JSON"


def to_float(text) -> float:
    """A Prometheus sample value ("NaN", "+Inf" included) as a float; NaN when unreadable."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


@dataclass
class PrometheusClient:
    """Instant and range queries against one Prometheus; reuses one connection pool."""

    address: str
    timeout_s: float = DEFAULT_TIMEOUT_S
    # Only tests replace the transport (httpx.MockTransport); by default httpx talks to the network.
    transport: httpx.BaseTransport | None = None
    _client: httpx.Client | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return base_url(self.address)

    def _get(self, path: str, params: dict) -> dict:
        if self._client is None:
            self._client = httpx.Client(
                base_url=self.url, timeout=self.timeout_s, transport=self.transport
            )
        query = params.get("query", "")
        try:
            response = self._client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise PrometheusUnavailable(did_not_answer(self.url, exc)) from exc
        try:
            payload = response.json()
        except ValueError as exc:
            raise PrometheusUnavailable(
                answered_without_json(f"{self.url}{path}", response.status_code)
            ) from exc
        if (
            response.status_code != 200
            or not isinstance(payload, dict)
            or payload.get("status") != "success"
        ):
            error = payload.get("error", payload) if isinstance(payload, dict) else payload
            raise PrometheusUnavailable(
                f"Prometheus at {self.url} refused {query!r} (HTTP {response.status_code}): {error}"
            )
        return payload.get("data") or {}

    def ready(self) -> bool:
        """True when Prometheus answers a trivial query."""
        try:
            self._get("/api/v1/query", {"query": "1"})
        except PrometheusUnavailable:
            return False
        return True

    def query(self, promql: str, at: float | None = None) -> list[dict]:
        """The instant vector `result` of `promql`, at unix time `at` (default: now)."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self._get("/api/v1/query", params).get("result", [])

    def value(self, promql: str, at: float | None = None) -> float | None:
        """The first sample of an instant query as a float, or None when the result is empty."""
        result = self.query(promql, at)
        if not result:
            return None
        return to_float(result[0].get("value", [None, None])[1])

    def query_range(self, promql: str, start: float, end: float, step_s: float) -> list[dict]:
        """The matrix `result` of one range query between unix times `start` and `end`."""
        if end < start:
            raise ValueError(f"end ({end}) must not be before start ({start})")
        if not step_s > 0:
            raise ValueError(f"step must be positive, got {step_s}")
        data = self._get(
            "/api/v1/query_range",
            {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"},
        )
        if data.get("resultType", "matrix") != "matrix":
            raise PrometheusUnavailable(
                f"expected a matrix from {promql!r}, got {data.get('resultType')!r}"
            )
        return data.get("result", [])

    def query_range_chunked(
        self, promql: str, start: float, end: float, step_s: float
    ) -> list[dict]:
        """A range query of any length, split into chunks Prometheus accepts, series merged."""
        if end <= start:
            raise ValueError(f"end ({end}) must be after start ({start})")
        if not step_s > 0:
            raise ValueError(f"step must be positive, got {step_s}")
        chunk = MAX_POINTS_PER_QUERY * step_s
        merged: dict[str, dict] = {}
        chunk_start = start
        while chunk_start <= end:
            chunk_end = min(end, chunk_start + chunk - step_s)
            for item in self.query_range(promql, chunk_start, chunk_end, step_s):
                labels = item.get("metric", {})
                key = json.dumps(labels, sort_keys=True)
                series = merged.setdefault(key, {"metric": labels, "values": []})
                series["values"].extend(item.get("values", []))
            chunk_start = chunk_end + step_s
        return list(merged.values())

    def close(self) -> None:
        """Release the connection pool."""
        if self._client is not None:
            self._client.close()
            self._client = None
