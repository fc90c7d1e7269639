"""`/dashboard`: live charts of the dashboard panels, drawn in the browser from Prometheus' HTTP
API.

The page and its vendored chart library (uPlot) are static files; the data comes through
`/dashboard/api/query_range`, a proxy to Prometheus, so the browser needs no CORS and no access
to Prometheus itself. The proxy runs only the panels' own expressions, over bounded ranges.
Prometheus' address: $RECSERVE_PROMETHEUS_URL, else $RAY_PROMETHEUS_HOST (the variable Ray's
dashboard reads), else http://127.0.0.1:9090.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import httpx
from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from serve_app.errors import error_response
from serve_app.monitoring.dashboard_panels import all_exprs, panels_document
from serve_app.monitoring.prometheus_api import (
    DEFAULT_TIMEOUT_S,
    MAX_POINTS_PER_QUERY,
    answered_without_json,
    base_url,
    did_not_answer,
)

log = logging.getLogger("ray.serve")
STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_PROMETHEUS_URL = "http://127.0.0.1:9090"
MAX_RANGE_S = 7 * 24 * 3600

# name -> (path under static/, media type); nothing else under static/ is served.
STATIC_FILES = {
    "dashboard.js": ("dashboard.js", "text/javascript"),
    "dashboard.css": ("dashboard.css", "text/css"),
    "uPlot.iife.min.js": ("vendor/uplot/uPlot.iife.min.js", "text/javascript"),
    "uPlot.min.css": ("vendor/uplot/uPlot.min.css", "text/css"),
}


def prometheus_url() -> str:
    """Where Prometheus answers, from the environment."""
    return base_url(
        os.environ.get("RECSERVE_PROMETHEUS_URL")
        or os.environ.get("RAY_PROMETHEUS_HOST")
        or DEFAULT_PROMETHEUS_URL
    )


def serve_request_id() -> str:
    """The id of the request being answered (empty outside Serve), for error replies and logs."""
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or ""
    except Exception:
        return ""


def check_range(start: float, end: float, step: float) -> str | None:
    """Why a range request is refused, or None when it is fine."""
    values = {"start": start, "end": end, "step": step}
    bad = [name for name, v in values.items() if not math.isfinite(v)]
    if bad:
        return f"{', '.join(bad)} must be finite numbers (unix seconds)"
    if end <= start:
        return f"end ({end}) must be after start ({start})"
    if end - start > MAX_RANGE_S:
        return f"range {end - start:.0f} s exceeds {MAX_RANGE_S} s (7 days)"
    if step <= 0:
        return f"step must be positive, got {step}"
    if (end - start) / step > MAX_POINTS_PER_QUERY:
        return (
            f"{(end - start) / step:.0f} points per series exceed {MAX_POINTS_PER_QUERY}; "
            "use a larger step"
        )
    return None


def make_router(
    prometheus: str | None = None, transport: httpx.AsyncBaseTransport | None = None
) -> APIRouter:
    """The /dashboard routes; `prometheus` fixes the address (default: from the environment at
    each request)."""
    router = APIRouter(tags=["dashboard"])
    allowed = frozenset(all_exprs())

    def address() -> str:
        return base_url(prometheus) if prometheus else prometheus_url()

    @router.get("/dashboard", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "dashboard.html",
            media_type="text/html",
            headers={"Cache-Control": "no-cache"},
        )

    @router.get("/dashboard/", include_in_schema=False)
    async def page_slash() -> RedirectResponse:
        # The page loads its files by relative URL, which only resolves from /dashboard.
        return RedirectResponse("../dashboard", status_code=307)

    @router.get("/dashboard/static/{name}", include_in_schema=False)
    async def static(name: str):
        entry = STATIC_FILES.get(name)
        if entry is None:
            return error_response(404, "not_found", f"no static file {name!r}")
        path, media_type = entry
        return FileResponse(
            STATIC_DIR / path, media_type=media_type, headers={"Cache-Control": "no-cache"}
        )

    @router.get("/dashboard/api/panels", summary="The dashboard's panels and their PromQL")
    async def panels() -> dict:
        return {**panels_document(), "prometheus": address()}

    @router.get(
        "/dashboard/api/query_range", summary="A panel query over a time range, from Prometheus"
    )
    async def query_range(
        query: str = Query(
            ..., description="One of the panels' expressions (see /dashboard/api/panels)."
        ),
        start: float = Query(..., description="Unix seconds."),
        end: float = Query(..., description="Unix seconds."),
        step: float = Query(..., description="Seconds between points."),
    ):
        if query not in allowed:
            return error_response(
                422,
                "unknown_query",
                "query must be one of the panel expressions from /dashboard/api/panels",
            )
        problem = check_range(start, end, step)
        if problem:
            return error_response(422, "bad_range", problem)
        base = address()
        url = f"{base}/api/v1/query_range"
        params = {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        try:
            async with httpx.AsyncClient(timeout=DEFAULT_TIMEOUT_S, transport=transport) as client:
                response = await client.get(url, params=params)
        except httpx.HTTPError as exc:
            # Where Prometheus is goes to the log, not to the client.
            request_id = serve_request_id()
            log.warning("request %s: %s", request_id, did_not_answer(base, exc))
            return error_response(
                503,
                "prometheus_unavailable",
                f"Prometheus did not answer (request {request_id}; the ingress log says where "
                "it was asked); start it with `recserve stack up` or set RECSERVE_PROMETHEUS_URL",
            )
        try:
            body = response.json()
        except ValueError:
            request_id = serve_request_id()
            log.warning(
                "request %s: %s", request_id, answered_without_json(url, response.status_code)
            )
            return error_response(
                502,
                "prometheus_bad_answer",
                f"Prometheus answered HTTP {response.status_code} without JSON "
                f"(request {request_id})",
            )
        # Prometheus' own errors (400 bad_data, 422 execution, 503 timeout) pass through as it
        # sent them.
        return JSONResponse(body, status_code=response.status_code)

    return router


router = make_router()
