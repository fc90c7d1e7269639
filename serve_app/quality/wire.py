"""What crosses the QualityMonitor's boundary: the prediction records the ingress sends, and the
results of recording them and of joining feedback to them.

A prediction record is a plain dict ``{request_id, index, model_name, model_version, class_id,
score}``: the top-1 answer for one image of one request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from serve_app.errors import ServiceError
from serve_app.monitoring.metrics import (
    FEEDBACK_EXPIRED,
    FEEDBACK_JOINED,
    FEEDBACK_UNKNOWN_ID,
    FEEDBACK_UNKNOWN_LABEL,
)

HTTP_STATUS = {
    FEEDBACK_JOINED: 200,
    FEEDBACK_UNKNOWN_ID: 404,
    FEEDBACK_EXPIRED: 410,
    FEEDBACK_UNKNOWN_LABEL: 422,
}


@dataclass(frozen=True)
class FeedbackResult:
    """Outcome of one feedback item; ``http_status`` is what a single-item request answers."""

    status: str  # one of FEEDBACK_RESULTS
    request_id: str
    index: int
    message: str
    model_name: str | None = None
    model_version: str | None = None
    label: int | None = None  # the class id the label resolved to
    predicted_class_id: int | None = None
    correct: bool | None = None
    replaced: bool = False  # a label for this image had been joined before; this one replaces it

    @property
    def http_status(self) -> int:
        """HTTP status for this result (200, 404, 410 or 422)."""
        return HTTP_STATUS[self.status]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, including http_status."""
        return {
            "status": self.status,
            "http_status": self.http_status,
            "request_id": self.request_id,
            "index": self.index,
            "message": self.message,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "label": self.label,
            "predicted_class_id": self.predicted_class_id,
            "correct": self.correct,
            "replaced": self.replaced,
        }


# A batch reply details at most this many items that were not joined; the counts cover all.
FEEDBACK_DETAIL_LIMIT = 100


def feedback_summary(
    results: list[FeedbackResult], detail_limit: int = FEEDBACK_DETAIL_LIMIT
) -> dict[str, Any]:
    """The reply to a batch of feedback: counts by status, and the detail of the items that were
    not joined, at most `detail_limit` of them (`not_joined_truncated` says when more were)."""
    counts = {status: 0 for status in HTTP_STATUS}
    not_joined = []
    for position, result in enumerate(results):
        counts[result.status] += 1
        if result.status != FEEDBACK_JOINED and len(not_joined) < detail_limit:
            not_joined.append({"item": position, **result.as_dict()})
    missed = len(results) - counts[FEEDBACK_JOINED]
    return {
        "items": len(results),
        "counts": counts,
        "not_joined": not_joined,
        "not_joined_truncated": missed > len(not_joined),
    }


def raise_wired_error(reply: Any) -> Any:
    """The monitor's reply, or the ServiceError it carries as data (``{"error": to_wire()}``):
    raised inside the replica, Serve would log each one with its traceback."""
    if isinstance(reply, Mapping) and isinstance(reply.get("error"), Mapping):
        raise ServiceError.from_wire(reply["error"])
    return reply


@dataclass(frozen=True)
class RecordResult:
    """How many predictions were stored, which input positions were, and why others were not."""

    stored: int
    accepted: list[int]  # positions in the input list
    rejected: list[str]  # one reason per rejected position


def predictions_from_response(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Prediction records for ``QualityTracker.record`` from a /v1 predict response body."""
    out = []
    for p in response.get("predictions", []):
        top = p["top_k"][0]
        out.append(
            {
                "request_id": response["request_id"],
                "index": p["index"],
                "model_name": response["model_name"],
                "model_version": str(response["model_version"]),
                "class_id": top["class_id"],
                "score": top["score"],
            }
        )
    return out


def is_int(value: Any) -> bool:
    """True for an integer, False for a bool (JSON true/false arrive as bool, a subclass of int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def prediction_problem(p: Any) -> str | None:
    """Why a prediction record cannot be stored, or None if it can."""
    if not isinstance(p, Mapping):
        return f"prediction must be a dict, got {type(p).__name__}"
    for key in ("request_id", "model_name", "model_version"):
        if not isinstance(p.get(key), str) or not p.get(key):
            return f"prediction needs a non-empty string {key!r}, got {p.get(key)!r}"
    if not is_int(p.get("index")) or p["index"] < 0:
        return f"prediction needs an int index >= 0, got {p.get('index')!r}"
    if not is_int(p.get("class_id")) or p["class_id"] < 0:
        return f"prediction needs an int class_id >= 0, got {p.get('class_id')!r}"
    score = p.get("score")
    if not isinstance(score, (int, float)) or isinstance(score, bool) or not (0.0 <= score <= 1.0):
        return f"prediction needs a score in [0, 1], got {score!r}"
    return None
