"""One structured log line per request, in Ray Serve's own JSON log files.

Ray Serve writes JSON logs when the application's ``logging_config`` says so
(configs/serve_config.yaml)::

    logging_config:
      encoding: JSON          # TEXT is the default
      log_level: INFO
      enable_access_log: true

Records sent to the ``ray.serve`` logger inside a replica then land, one JSON object per
line, in ``<ray logs dir>/serve/replica_<app>_<deployment>_<replica>.log``, with Serve's
context (deployment, replica, application, route, request_id) and Ray's (worker_id,
node_id, actor_id, ...) already attached. Fields passed under the ``ray_serve_extra_fields``
key of ``extra`` are flattened into that object by Ray's JSON formatter, so the request line
carries model, status, latency and batch size as top-level keys that ELK can index as they are.
With TEXT encoding only the message is printed, so the message repeats the key fields.

Serve's filter sets ``request_id`` from the request context after our fields are added, so the
line shows Serve's id: pass the same id (the ``x-request-id`` header Serve put on the request).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from serve_app.monitoring.metrics import (
    STATUS_CLIENT_ERROR,
    STATUS_REJECTED,
    STATUS_SERVER_ERROR,
    STATUS_SUCCESS,
)

SERVE_LOGGER_NAME = "ray.serve"  # the logger Serve routes to its replica log files
EXTRA_FIELDS_KEY = "ray_serve_extra_fields"  # flattened into the JSON object by Ray's formatter

# Keys Ray's JSON formatter or Serve's filters already write on every line; reusing one either
# raises inside the formatter (duplicate key) or is silently overwritten, so they are refused.
RESERVED_KEYS = frozenset(
    {
        "args",
        "asctime",
        "created",
        "exc_info",
        "exc_text",
        "filename",
        "funcName",
        "levelname",
        "levelno",
        "lineno",
        "message",
        "module",
        "msecs",
        "msg",
        "name",
        "pathname",
        "process",
        "processName",
        "relativeCreated",
        "stack_info",
        "thread",
        "threadName",
        "taskName",
        "timestamp_ns",
        "job_id",
        "worker_id",
        "node_id",
        "actor_id",
        "task_id",
        "actor_name",
        "task_name",
        "task_func_name",
        "route",
        "application",
        "deployment",
        "replica",
        "component_name",
        "component_id",
        "component_type",
        "serve_access_log",
        "skip_context_filter",
        "log_to_stderr",
    }
)


def request_logger() -> logging.Logger:
    """The logger whose records Serve writes to the replica's (JSON) log file."""
    return logging.getLogger(SERVE_LOGGER_NAME)


def outcome_of(status_code: int) -> str:
    """The model_request_total status for an HTTP status code (429/503: rejected)."""
    if status_code in (429, 503):
        return STATUS_REJECTED
    if status_code < 400:
        return STATUS_SUCCESS
    return STATUS_CLIENT_ERROR if status_code < 500 else STATUS_SERVER_ERROR


def request_fields(
    request_id: str,
    model: str,
    status: int,
    latency_ms: float,
    batch_size: Optional[int] = None,
    outcome: Optional[str] = None,
    **fields: Any,
) -> dict:
    """The fields of one request line (what log_request puts on the JSON object)."""
    clash = sorted(set(fields) & RESERVED_KEYS)
    if clash:
        raise ValueError(f"log field name(s) {clash} are reserved by Ray's log format; rename them")
    return {
        "request_id": request_id,
        "model_name": model,
        "status_code": int(status),
        "status": outcome or outcome_of(int(status)),
        "latency_ms": round(float(latency_ms), 3),
        "batch_size": batch_size,
        **fields,
    }


def log_request(
    logger: logging.Logger,
    request_id: str,
    model: str,
    status: int,
    latency_ms: float,
    batch_size: Optional[int] = None,
    outcome: Optional[str] = None,
    level: int = logging.INFO,
    **fields: Any,
) -> None:
    """Log one finished request: id, model, HTTP status, outcome, latency, batch size, extras.

    ``status`` is the HTTP status code; ``outcome`` the model_request_total status label
    (derived from the code when omitted); ``batch_size`` the largest forward pass the request
    rode in (None when it never reached the model); ``fields`` are extra keys (e.g. error,
    images, model_version).
    """
    extra_fields = request_fields(
        request_id, model, status, latency_ms, batch_size, outcome, **fields
    )
    batch = "-" if batch_size is None else batch_size
    logger.log(
        level,
        "request %s model=%s status=%s latency_ms=%.1f batch_size=%s",
        request_id,
        model,
        status,
        latency_ms,
        batch,
        extra={EXTRA_FIELDS_KEY: extra_fields},
    )
