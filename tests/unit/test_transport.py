"""The Ingress's choice of transport, call by call: gRPC by value for small payloads, an actor
call for large ones or when the configuration says so."""

import numpy as np
import pytest

from serve_app.config import AppConfig
from serve_app.serving.transport import (
    BY_VALUE_MAX_BYTES,
    CallTransport,
    payload_bytes,
    records_bytes,
)


class Handle:
    """Stands in for a DeploymentHandle: `options` returns a copy that remembers its options."""

    def __init__(self, **options):
        self.opts = options

    def options(self, **options):
        return Handle(**{**self.opts, **options})


def test_payload_counts_encoded_photos_and_arrays():
    photo = b"\xff\xd8" + b"x" * 998
    pixels = np.zeros((3, 224, 224), dtype=np.float32)
    assert payload_bytes([photo, photo]) == 2000
    assert payload_bytes([photo, pixels]) == 1000 + 3 * 224 * 224 * 4
    assert payload_bytes([bytearray(10), memoryview(b"abc")]) == 13
    assert payload_bytes([]) == 0


def test_a_payload_of_unknown_size_never_goes_by_value():
    assert payload_bytes([b"x", {"not": "an image"}]) > BY_VALUE_MAX_BYTES


def test_small_payloads_go_by_value_and_large_ones_as_actor_calls():
    grpc = CallTransport("grpc")
    handle = Handle()
    assert grpc.handle(handle, 0).opts == {"_by_reference": False}
    assert grpc.handle(handle, BY_VALUE_MAX_BYTES).opts == {"_by_reference": False}
    assert grpc.handle(handle, BY_VALUE_MAX_BYTES + 1) is handle


def test_the_by_value_limit_stays_under_the_replicas_grpc_message_limit():
    from ray.serve._private.constants import RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH

    # A predict of BY_VALUE_MAX_BYTES pickles to a little more: the margin must hold it.
    assert BY_VALUE_MAX_BYTES <= RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH - 512 * 1024


@pytest.mark.parametrize("text", ["r", "k" * 64 + ":" + "r" * 64, "版本" * 40])
def test_a_pickled_record_batch_is_under_its_bound(text):
    import pickle

    record = {
        "request_id": text,
        "index": 99,
        "model_name": "m" * 64,
        "model_version": text,
        "class_id": 999,
        "score": 0.123456789,
    }
    for n in (1, 1000):
        batch = [dict(record, index=i) for i in range(n)]
        assert len(pickle.dumps(batch)) <= records_bytes(batch)


def test_actor_mode_never_goes_by_value():
    actor = CallTransport("actor")
    handle = Handle()
    assert actor.handle(handle, 10) is handle


def test_grpc_is_the_default_and_the_mode_is_checked():
    assert (
        AppConfig.model_validate({"models": [{"name": "m"}]}).ingress.internal_transport == "grpc"
    )
    with pytest.raises(ValueError, match="internal_transport"):
        CallTransport("http")
    with pytest.raises(ValueError):
        AppConfig.model_validate(
            {"models": [{"name": "m"}], "ingress": {"internal_transport": "x"}}
        )
