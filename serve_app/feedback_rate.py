"""The per-key feedback rate limit: a token bucket per key, and the 429 that refuses a request over
it. Pure: the caller passes the time.

Two places hold it. Each Ingress replica refuses a flood before reading its bodies, and the
QualityMonitor, the one replica every feedback reaches, holds the limit across Ingress replicas:
behind N replicas a key still gets `feedback_rate_per_s`, not N times it.
"""

from __future__ import annotations

import math

from serve_app.errors import TooManyRequests


class TokenBuckets:
    """A token bucket per principal: `rate_per_s` refills, `burst` at most; `take` answers 0 when
    a request may go, else the seconds until one may (what Retry-After says)."""

    def __init__(self, rate_per_s: float, burst: int, max_principals: int = 10_000):
        self.rate = rate_per_s
        self.burst = burst
        self.max_principals = max_principals
        self._state: dict[str, tuple[float, float]] = {}  # principal -> (tokens, at)

    def take(self, principal: str, now: float) -> float:
        tokens, at = self._state.get(principal, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.rate)
        if tokens >= 1.0:
            if principal not in self._state and len(self._state) >= self.max_principals:
                self._state.pop(next(iter(self._state)))  # keys, not clients: rarely reached
            self._state[principal] = (tokens - 1.0, now)
            return 0.0
        self._state[principal] = (tokens, now)
        return (1.0 - tokens) / self.rate if self.rate > 0 else math.inf

    def refusal(self, principal: str, now: float) -> TooManyRequests | None:
        """None when `principal` may send one more feedback request now, else its 429."""
        wait = self.take(principal, now)
        if wait <= 0:
            return None
        return TooManyRequests(
            f"API key {principal!r} is over its feedback rate "
            f"({self.rate:g}/s, burst {self.burst})",
            retry_after_s=retry_after_s(wait),
        )


def retry_after_s(wait_s: float) -> int:
    """Retry-After in whole seconds, never 0 (a 0 would invite an immediate retry)."""
    return max(1, math.ceil(min(wait_s, 86_400)))
