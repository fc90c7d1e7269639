"""A predict whose replica died under it is sent again, a bounded number of times; other errors
are not. The handle is the boundary faked here: Ray raises these errors from awaiting a call."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from serve_app.serving.replica_retry import REPLICA_LOSS_RETRIES, predict_on_live_replica


class FakeHandle:
    """`handle.predict.remote(...)` answering each call from a script: an exception to raise or
    a result to return."""

    deployment_name = "Recognizer_m"

    def __init__(self, script: list):
        self.script = list(script)
        self.calls: list[tuple] = []
        self.predict = self

    def remote(self, images, k):
        self.calls.append((images, k))
        outcome = self.script.pop(0)

        async def answer():
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return answer()


def run(handle: FakeHandle):
    return asyncio.run(predict_on_live_replica(handle, [b"jpeg"], 5))


@pytest.mark.parametrize(
    "lost", [ActorDiedError(), ActorUnavailableError("unreachable", b"1" * 16)]
)
def test_a_lost_replica_is_retried_with_the_same_request(lost):
    handle = FakeHandle([lost, {"predictions": [1]}])
    assert run(handle) == {"predictions": [1]}
    assert handle.calls == [([b"jpeg"], 5), ([b"jpeg"], 5)]


def test_retries_are_bounded():
    handle = FakeHandle([ActorDiedError()] * (REPLICA_LOSS_RETRIES + 2))
    with pytest.raises(ActorDiedError):
        run(handle)
    assert len(handle.calls) == REPLICA_LOSS_RETRIES + 1


def test_other_errors_are_not_retried():
    handle = FakeHandle([RuntimeError("model failed"), {"predictions": [1]}])
    with pytest.raises(RuntimeError):
        run(handle)
    assert len(handle.calls) == 1


def test_an_answer_is_returned_at_once():
    handle = FakeHandle([{"error": {"status": 422}}])
    assert run(handle) == {"error": {"status": 422}}
    assert len(handle.calls) == 1
