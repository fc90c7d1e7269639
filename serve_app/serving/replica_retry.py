"""A predict sent again when the model replica that had it died under it.

Serve's router retries a request it could not hand to a replica, but not one a replica had
accepted when its process died (killed, out of memory, its node lost): the caller gets the
replica's death (`ActorDiedError`, or `ActorUnavailableError` over Serve's gRPC transport) and
the client a 500. A predict is idempotent (the same images give the same answer, and nothing is
recorded before it returns), so the Ingress sends it once more; the router has by then dropped the
dead replica, so the retry goes to a live one.
"""

from __future__ import annotations

import logging

from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.serve.handle import DeploymentHandle

log = logging.getLogger("ray.serve")

# Sends after the first: enough for two replicas dying one after the other under one request;
# more would only hold a request while every replica is gone.
REPLICA_LOSS_RETRIES = 2
REPLICA_LOST = (ActorDiedError, ActorUnavailableError)


async def predict_on_live_replica(handle: DeploymentHandle, images: list, k: int) -> dict:
    """`handle.predict.remote(images, k)`, sent again (up to REPLICA_LOSS_RETRIES times) when the
    replica it went to died or became unreachable before answering."""
    for _ in range(REPLICA_LOSS_RETRIES):
        try:
            return await handle.predict.remote(images, k)
        except REPLICA_LOST as exc:
            log.warning(
                "a %s replica was lost with a predict in flight (%s); sending it again",
                handle.deployment_name,
                type(exc).__name__,
            )
    return await handle.predict.remote(images, k)
