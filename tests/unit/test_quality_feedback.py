"""The feedback body parser: the items it yields, and the errors (status and message) it raises."""

from __future__ import annotations

import pickle

import pytest

from serve_app.errors import BadRequest, UnprocessableEntity
from serve_app.quality.feedback import USAGE, FeedbackItem, parse_feedback

NEEDS = "needs a string request_id and a label (name or class id)"
LABEL_TYPE = "label must be a label name or an integer class id"
INDEX = "index must be a non-negative integer"


@pytest.mark.parametrize(
    "doc, items, single",
    [
        ({"request_id": "r", "label": "tabby"}, [FeedbackItem("r", "tabby", 0)], True),
        ({"request_id": "r", "label": 281, "index": 2}, [FeedbackItem("r", 281, 2)], True),
        (
            {"items": [{"request_id": "a", "label": 1}, {"request_id": "b", "label": "dog"}]},
            [FeedbackItem("a", 1), FeedbackItem("b", "dog")],
            False,
        ),
        ([{"request_id": "a", "label": 0, "index": 1}], [FeedbackItem("a", 0, 1)], False),
    ],
)
def test_feedback_bodies_become_items(doc, items, single):
    assert parse_feedback(doc) == (items, single)


@pytest.mark.parametrize(
    "doc, error, message",
    [
        (None, BadRequest, USAGE),  # empty body
        ("tabby", BadRequest, USAGE),
        ({"items": []}, BadRequest, USAGE),
        ({"items": {"request_id": "r"}}, BadRequest, USAGE),
        ({"label": "cat"}, BadRequest, f"items[0] {NEEDS}"),
        ({"request_id": None, "label": "cat"}, BadRequest, f"items[0] {NEEDS}"),
        ({"request_id": 7, "label": "cat"}, BadRequest, f"items[0] {NEEDS}"),
        ({"request_id": "r"}, BadRequest, f"items[0] {NEEDS}"),
        ({"items": [{"request_id": "a", "label": 1}, "cat"]}, BadRequest, f"items[1] {NEEDS}"),
        ({"request_id": "r", "label": 3.0}, UnprocessableEntity, f"items[0].{LABEL_TYPE}"),
        ({"request_id": "r", "label": True}, UnprocessableEntity, f"items[0].{LABEL_TYPE}"),
        ({"request_id": "r", "label": None}, UnprocessableEntity, f"items[0].{LABEL_TYPE}"),
        ({"request_id": "r", "label": 1, "index": -1}, UnprocessableEntity, f"items[0].{INDEX}"),
        ({"request_id": "r", "label": 1, "index": "0"}, UnprocessableEntity, f"items[0].{INDEX}"),
        ({"request_id": "r", "label": 1, "index": True}, UnprocessableEntity, f"items[0].{INDEX}"),
        (
            {"request_id": "", "label": 1},
            UnprocessableEntity,
            "items[0].request_id must be a non-empty string",
        ),
    ],
)
def test_malformed_feedback_is_refused_with_what_to_send(doc, error, message):
    with pytest.raises(error) as refused:
        parse_feedback(doc)
    assert type(refused.value) is error and refused.value.message == message
    assert refused.value.status == (400 if error is BadRequest else 422)


def test_items_cross_process_boundaries_unchanged():
    item = FeedbackItem("r", "tabby", 1)
    assert pickle.loads(pickle.dumps(item)) == item
