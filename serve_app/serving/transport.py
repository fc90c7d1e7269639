"""How a call from the Ingress crosses to another deployment: by value over Serve's gRPC transport
when its arguments are small, as a Ray actor call otherwise.

An actor call goes through the raylet and, above 100 KB of arguments, the object store; Serve's
gRPC transport sends the pickled arguments straight to the replica's own gRPC server (which checks
Ray's token like every Ray port). On single-image requests it cut the CPU one request costs across
all processes from 19.0 to 14.7 ms (docs/bench/hops-2026-12-01). That server takes messages of at
most 4 MiB (Serve's RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH), while a request body may hold
20 MiB: a larger payload goes as an actor call, which has no such limit.
"""

from __future__ import annotations

from ray.serve.handle import DeploymentHandle

# Below the replica's 4 MiB, leaving room for the pickled call around the payload.
BY_VALUE_MAX_BYTES = 3 * 1024 * 1024
# A generous bound on what a pickled prediction record adds to its strings (keys, index, class
# id, score, framing).
RECORD_OVERHEAD_BYTES = 192


def payload_bytes(images: list) -> int:
    """Bytes of a predict's images: encoded photos or preprocessed arrays. Anything else counts
    as too large to send by value."""
    total = 0
    for image in images:
        if isinstance(image, (bytes, bytearray, memoryview)):
            total += len(image)
        elif hasattr(image, "nbytes"):
            total += int(image.nbytes)
        else:
            return BY_VALUE_MAX_BYTES + 1
    return total


def records_bytes(records: list[dict]) -> int:
    """An upper bound on the pickled size of prediction records (prediction_sender.py)."""
    return sum(
        RECORD_OVERHEAD_BYTES
        + 4 * (len(r["request_id"]) + len(r["model_name"]) + len(r["model_version"]))
        for r in records
    )


class CallTransport:
    """Picks, call by call, the handle that sends a payload of a given size (`ingress.
    internal_transport`)."""

    def __init__(self, mode: str):
        if mode not in ("grpc", "actor"):
            raise ValueError(f"internal_transport must be 'grpc' or 'actor', not {mode!r}")
        self.by_value = mode == "grpc"

    def handle(self, handle: DeploymentHandle, nbytes: int) -> DeploymentHandle:
        """`handle` sending by value over gRPC when allowed and `nbytes` fits, else as it is
        (an actor call). Both share the handle's router and its replica choice."""
        if self.by_value and nbytes <= BY_VALUE_MAX_BYTES:
            return handle.options(_by_reference=False)
        return handle
