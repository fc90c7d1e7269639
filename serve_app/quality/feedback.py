"""The one parser of a feedback request body: what the client sent, as typed items, or why not.

Everything about the shape of feedback is checked here, once. What follows (the QualityMonitor,
the QualityTracker) only joins items to stored predictions: unknown or expired ids, labels that
are not a class of the model, image indices the request did not have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serve_app.errors import BadRequest, UnprocessableEntity
from serve_app.quality.wire import is_int

USAGE = 'send {"request_id": "...", "label": "tabby" | 281, "index": 0} or {"items": [...]}'


@dataclass(frozen=True, slots=True)
class FeedbackItem:
    """The true label of one image of an earlier prediction."""

    request_id: str  # non-empty
    label: str | int  # a class name, or a class id (never a bool)
    index: int = 0  # the image of a multi-image request, >= 0


def parse_item(position: int, item: Any) -> FeedbackItem:
    """One feedback item from its JSON object; ``position`` names it in the error message."""
    where = f"items[{position}]"
    if (
        not isinstance(item, dict)
        or not isinstance(item.get("request_id"), str)
        or "label" not in item
    ):
        raise BadRequest(f"{where} needs a string request_id and a label (name or class id)")
    label = item["label"]
    if not isinstance(label, str) and not is_int(label):
        raise UnprocessableEntity(f"{where}.label must be a label name or an integer class id")
    index = item.get("index", 0)
    if not is_int(index) or index < 0:
        raise UnprocessableEntity(f"{where}.index must be a non-negative integer")
    if not item["request_id"]:
        raise UnprocessableEntity(f"{where}.request_id must be a non-empty string")
    return FeedbackItem(item["request_id"], label, index)


def parse_feedback(doc: Any) -> tuple[list[FeedbackItem], bool]:
    """Items of a decoded feedback body, and True when it was one object, not ``{"items": []}``."""
    single = isinstance(doc, dict) and "items" not in doc
    items = [doc] if single else (doc.get("items") if isinstance(doc, dict) else doc)
    if not isinstance(items, list) or not items:
        raise BadRequest(USAGE)
    return [parse_item(i, item) for i, item in enumerate(items)], single
