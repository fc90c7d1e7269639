"""The one parser of a feedback request body: what the client sent, as typed items, or why not.

Everything about the shape of feedback is checked here, once. What follows (the QualityMonitor,
the QualityTracker) only joins items to stored predictions: unknown or expired ids, labels that
are not a class of the model, image indices the request did not have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serve_app.config import LimitsConfig
from serve_app.errors import BadRequest, PayloadTooLarge, UnprocessableEntity
from serve_app.quality.wire import is_int
from serve_app.request_ids import request_id_problem

# Label names are a few words; the longest of ImageNet's is under 100 characters.
MAX_LABEL_CHARS = 256
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
    problem = request_id_problem(item["request_id"])
    if problem is not None:  # an id no prediction of this service can have
        raise UnprocessableEntity(f"{where}.request_id {problem}")
    if isinstance(label, str) and len(label) > MAX_LABEL_CHARS:
        raise UnprocessableEntity(
            f"{where}.label is {len(label)} characters long, over the limit of {MAX_LABEL_CHARS}"
        )
    return FeedbackItem(item["request_id"], label, index)


def parse_feedback(
    doc: Any, max_items: int = LimitsConfig.model_fields["max_feedback_items"].default
) -> tuple[list[FeedbackItem], bool]:
    """Items of a decoded feedback body, and True when it was one object, not ``{"items": []}``;
    413 past `max_items` items, counted before any is parsed."""
    single = isinstance(doc, dict) and "items" not in doc
    items = [doc] if single else (doc.get("items") if isinstance(doc, dict) else doc)
    if not isinstance(items, list) or not items:
        raise BadRequest(USAGE)
    if len(items) > max_items:
        raise PayloadTooLarge(
            f"{len(items)} feedback items in one request, over the limit of {max_items}"
        )
    return [parse_item(i, item) for i, item in enumerate(items)], single
