"""Who may call which route: the scope each path needs and the bearer-key check (the feedback rate
limit is serve_app/feedback_rate.py). Pure: no I/O, no clock of its own (the ingress reads the keys
file and passes the time).

Health and readiness stay open so probes and load balancers need no key; the API documentation
(`/docs`, `/openapi.json`) carries no data and stays open too. Every other path, including paths
no route serves, needs a scope, so an unauthenticated caller cannot even learn which routes exist.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from serve_app.api_keys import ApiKey, hash_token, key_id_of
from serve_app.request_ids import bound_request_id, unbound_request_id

ANONYMOUS = "anonymous"  # the principal of every request while no keys are configured
OPEN_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/v2/health/live",
        "/v2/health/ready",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
    }
)
# The first prefix that matches names the scope; anything else needs `predict`.
SCOPE_PREFIXES = (
    ("/v1/feedback", "feedback"),
    ("/dashboard", "admin"),
    ("/v1/autoscaling", "admin"),
)
QUALITY_SUFFIX = "/quality"  # /v1/models/{name}/quality: what the feedback taught, for operators


def required_scope(path: str) -> str | None:
    """The scope a request to `path` needs; None for the open paths."""
    if path in OPEN_PATHS:
        return None
    for prefix, scope in SCOPE_PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            return scope
    if path.startswith("/v1/models/") and path.endswith(QUALITY_SUFFIX):
        return "admin"
    return "predict"


@dataclass(frozen=True)
class AuthDecision:
    """The outcome of one check: `status` 200 (go on as `principal`), 401 or 403 with a message
    that never repeats the token."""

    status: int
    principal: str | None = None
    code: str = ""
    message: str = ""


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class KeyRing:
    """The configured keys, by id; checks a request's Authorization header against a scope."""

    def __init__(self, keys: Iterable[ApiKey]):
        self.keys = {k.key_id: k for k in keys}

    def check(self, authorization: str | None, scope: str) -> AuthDecision:
        """Who is calling, and whether that key holds `scope`."""
        token = bearer_token(authorization)
        if token is None:
            return AuthDecision(
                401,
                code="unauthorized",
                message="this route needs an API key: send `Authorization: Bearer <key>` "
                f"with a key that has the {scope!r} scope",
            )
        key_id = key_id_of(token)
        key = self.keys.get(key_id) if key_id else None
        if key is None or not hmac.compare_digest(key.sha256, hash_token(key.key_id, token)):
            return AuthDecision(
                401,
                code="unauthorized",
                message="the API key is not valid (unknown, revoked or mistyped)",
            )
        if scope not in key.scopes:
            return AuthDecision(
                403,
                principal=key.key_id,
                code="forbidden",
                message=f"API key {key.key_id!r} lacks the {scope!r} scope this route needs "
                f"(it has {sorted(key.scopes)})",
            )
        return AuthDecision(200, principal=key.key_id)


def is_json_media_type(content_type: str | None) -> bool:
    """True for application/json and application/*+json (parameters such as charset aside).

    A web page can send a form or text/plain body to another site without asking it first (no
    CORS preflight); JSON needs the preflight, which this service never grants.
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def unbound_result(result: dict) -> dict:
    """A feedback result as its client knows it: the request id it sent, not the stored one."""
    stored = result.get("request_id")
    if not isinstance(stored, str) or stored == unbound_request_id(stored):
        return result
    plain = unbound_request_id(stored)
    message = str(result.get("message", "")).replace(repr(stored), repr(plain))
    return {**result, "request_id": plain, "message": message}


def bound_items(items: list, principal: str | None) -> list:
    """Feedback items naming the predictions of `principal` (the key that sends them)."""
    if principal is None:
        return items
    return [
        dataclasses.replace(i, request_id=bound_request_id(principal, i.request_id)) for i in items
    ]
