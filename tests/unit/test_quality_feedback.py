"""The feedback body parser: the items it yields, and the errors (status and message) it raises;
the compact reply to a batch; what a batch of unknown ids costs the QualityMonitor."""

from __future__ import annotations

import asyncio
import pickle

import pytest

from serve_app.errors import BadRequest, PayloadTooLarge, UnprocessableEntity
from serve_app.quality.feedback import USAGE, FeedbackItem, parse_feedback
from serve_app.quality.monitor import QualityMonitorCore
from serve_app.quality.wire import FeedbackResult, feedback_summary

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
        # ids the service could never have issued (the X-Request-Id rule)
        (
            {"request_id": "r" * 65, "label": 1},
            UnprocessableEntity,
            "items[0].request_id is 65 characters long, over the limit of 64",
        ),
        (
            {"request_id": "a b", "label": 1},
            UnprocessableEntity,
            "items[0].request_id may hold only letters, digits, '-', '_', '.' and ':'",
        ),
        (
            {"request_id": "r", "label": "x" * 257},
            UnprocessableEntity,
            "items[0].label is 257 characters long, over the limit of 256",
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


def test_items_up_to_the_limit_pass_and_one_more_is_too_large_before_any_is_parsed():
    item = {"request_id": "r", "label": 1}
    assert len(parse_feedback({"items": [item] * 3}, max_items=3)[0]) == 3
    # the 4th item would be a 400 on its own; the count is refused first, naming the limit
    with pytest.raises(PayloadTooLarge) as refused:
        parse_feedback({"items": [item] * 3 + ["junk"]}, max_items=3)
    assert refused.value.message == "4 feedback items in one request, over the limit of 3"
    assert refused.value.status == 413


def result(status, request_id="r"):
    return FeedbackResult(status, request_id, 0, f"{status} message")


@pytest.mark.parametrize(
    "statuses, detail_limit, counts, detailed_items, truncated",
    [
        # every item joined: counts only, no detail
        (["joined"] * 3, 2, {"joined": 3}, [], False),
        # 1 unknown id + 1 unknown label, limit 2: both detailed, by position in the request
        (["joined", "unknown_id", "unknown_label"], 2, {"joined": 1, "unknown_id": 1,
                                                        "unknown_label": 1}, [1, 2], False),
        # 3 not joined, limit 2: the first 2 detailed, the reply says more were left out
        (["expired", "joined", "unknown_id", "unknown_id"], 2,
         {"joined": 1, "expired": 1, "unknown_id": 2}, [0, 2], True),
    ],
)  # fmt: skip
def test_batch_reply_counts_every_status_and_details_only_what_was_not_joined(
    statuses, detail_limit, counts, detailed_items, truncated
):
    reply = feedback_summary([result(s) for s in statuses], detail_limit)
    assert reply["items"] == len(statuses)
    assert reply["counts"] == {
        "joined": 0,
        "unknown_id": 0,
        "expired": 0,
        "unknown_label": 0,
        **counts,
    }
    assert [d["item"] for d in reply["not_joined"]] == detailed_items
    assert all(d["status"] != "joined" and "http_status" in d for d in reply["not_joined"])
    assert reply["not_joined_truncated"] is truncated


class CountingLookups:
    """Counts the store's lookups while passing each through to the real store."""

    def __init__(self, store):
        self.store, self.calls = store, 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def lookup(self, request_id):
        self.calls += 1
        return self.store.lookup(request_id)


def test_waiting_for_one_missing_prediction_costs_one_lookup_per_poll_not_one_per_item():
    """The grace wait for predictions on their way looks each id up once, then polls only the
    ids still missing: 999 known ids and 1 never issued cost 1000 lookups and a few polls."""
    core = QualityMonitorCore(
        {"store_dir": None, "feedback_grace_s": 0.1, "record_flush_interval_s": 0.01}, {"m": ["a"]}
    )
    prediction = {"index": 0, "model_name": "m", "model_version": "1", "class_id": 0, "score": 0.9}
    asyncio.run(core.record([{**prediction, "request_id": f"r{i}"} for i in range(999)]))
    items = [FeedbackItem(f"r{i}", "a") for i in range(999)] + [FeedbackItem("never", "a")]
    counting = CountingLookups(core.tracker.store)
    core.tracker.store = counting
    reply = asyncio.run(core.feedback_summary(items))
    assert reply["counts"]["joined"] == 999 and reply["counts"]["unknown_id"] == 1
    assert [d["request_id"] for d in reply["not_joined"]] == ["never"]
    # 1000 lookups before the wait, then one per poll: 0.1 s / 0.02 s = 5 polls (30 leave room for
    # a slow machine); re-checking every item on each poll would be 1000 per poll. The join's own
    # lookups come on top: a fixed number per item, counted by lookups_of_join.
    grace_lookups = counting.calls - lookups_of_join(items)
    assert 1000 <= grace_lookups <= 1000 + 30


def lookups_of_join(items):
    """The lookups the tracker's join alone makes for `items` (no grace wait)."""
    core = QualityMonitorCore({"store_dir": None}, {"m": ["a"]})
    counting = CountingLookups(core.tracker.store)
    core.tracker.store = counting
    for item in items:
        core.tracker.feedback(item)
    return counting.calls
