"""Whether the quality store can write, and what a write that fails turns into.

A full disk, a read-only file system or an I/O error fails SQLite writes with
``sqlite3.OperationalError`` ("database or disk is full", "attempt to write a readonly database",
"disk I/O error"), and the store folder's creation with ``OSError``. None of them may reach a
prediction or stop the QualityMonitor: predictions the store cannot keep are dropped and counted
(the client already has its answer), feedback is refused with 503 and Retry-After
(``errors.StoreUnavailable``: the client can send it again), housekeeping waits for its next round.
Every write tries the file again, so the store recovers by itself once there is room.

The state (writable or not) is logged once per change, with ``on_change`` called then (the
QualityMonitor sets a gauge from it); writes that fail while it is already known only count. A
nearly full disk takes some writes and refuses others, so the store is called writable again only
by a write that succeeds RECOVER_AFTER_S after the last failure: the state does not flap with each
request.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from serve_app.errors import StoreUnavailable

# What the storage under the store raises; anything else is a bug and propagates as it is.
STORAGE_ERRORS = (sqlite3.OperationalError, OSError)
# Long enough for an operator to free space or fix a mount, short enough that a retrying client
# gets through soon after.
RETRY_AFTER_S = 30
RECOVER_AFTER_S = 30.0

HealthCallback = Callable[[str | None], None]  # the problem, or None once writable again

logger = logging.getLogger("ray.serve")


class StoreHealth:
    """The store's write state: the problem while writes fail, counts of what they cost."""

    def __init__(
        self,
        location: str,
        on_change: HealthCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.location = location
        self.problem: str | None = None
        self.failed_writes = 0
        self.dropped_predictions = 0
        self._since = self._last_failure = 0.0
        self._on_change = on_change
        self._clock = clock

    @property
    def writable(self) -> bool:
        """False from a failed write until the next one that succeeds."""
        return self.problem is None

    def failed(self, exc: BaseException, consequence: str = "") -> StoreUnavailable:
        """Note a failed write; the error feedback is answered with."""
        self.failed_writes += 1
        self._last_failure = self._clock()
        if self.problem is None:
            self.problem, self._since = str(exc) or type(exc).__name__, self._clock()
            logger.error(
                "quality store %s cannot be written (%s: %s): predictions are served but not "
                "kept, feedback is answered 503 until a write succeeds%s",
                self.location,
                type(exc).__name__,
                self.problem,
                consequence,
            )
            self._notify()
        return self.error()

    def error(self) -> StoreUnavailable:
        """503 naming the storage problem (not where the file is: that is the operator's)."""
        return StoreUnavailable(
            f"the quality store cannot record feedback now ({self.problem}); nothing was lost "
            f"on the client's side: send the feedback again in {RETRY_AFTER_S} s",
            retry_after_s=RETRY_AFTER_S,
        )

    def succeeded(self) -> None:
        """Note a write that went through; logs the recovery once writes have had no failure for
        RECOVER_AFTER_S."""
        if self.problem is None or self._clock() - self._last_failure < RECOVER_AFTER_S:
            return
        logger.warning(
            "quality store %s is writable again after %.0f s (%s); %d writes failed in all, "
            "%d predictions were not kept",
            self.location,
            self._clock() - self._since,
            self.problem,
            self.failed_writes,
            self.dropped_predictions,
        )
        self.problem = None
        self._notify()

    def _notify(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change(self.problem)
            except Exception:  # a metric must not turn a storage problem into a crash
                logger.exception("quality store state callback failed")

    def stats(self) -> dict[str, Any]:
        """The state and its counts, for the quality snapshot."""
        return {
            "writable": self.writable,
            "problem": self.problem,
            "failed_writes": self.failed_writes,
            "dropped_predictions": self.dropped_predictions,
        }
