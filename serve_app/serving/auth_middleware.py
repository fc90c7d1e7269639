"""The ingress's key check: an ASGI middleware that answers 401/403/429 before any route runs, and
the guard it asks, which holds the keys read from the keys file (re-read when the file changes,
so a revoked key stops working within `auth.reload_interval_s`).

The principal a request runs as (the key id, or None without keys) is left in the ASGI scope's
`state`, where the routes read it (`principal_of`) to bind predictions and feedback to it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from starlette.requests import Request

from serve_app.api_keys import KeysFile, KeysFileError, keys_file_path
from serve_app.config import AuthConfig
from serve_app.errors import Forbidden, ServiceError, Unauthorized
from serve_app.feedback_rate import TokenBuckets
from serve_app.serving.auth import KeyRing, required_scope
from serve_app.serving.logs import request_logger

log = request_logger()
PRINCIPAL_STATE = "recserve_principal"


def missing_keys(config: AuthConfig, environ: dict | os._Environ = os.environ) -> str | None:
    """Why `auth.require_keys` stops the start (no keys file, an unreadable one, or one without a
    key), or None when keys are not required or are there. The API's bind address is Serve's
    `http_options`, which the application never sees: the config says the keys are required."""
    if not config.require_keys:
        return None
    fix = (
        "make a key with `recserve keys add --scopes predict,feedback --file FILE` and point "
        "auth.keys_file (or $RECSERVE_API_KEYS_FILE) at FILE (docs/SECURITY.md)"
    )
    path = keys_file_path(config.keys_file, environ)
    if path is None:
        return f"auth.require_keys is true but no API keys file is configured: {fix}"
    try:
        keys = KeysFile.read(path).keys
    except (KeysFileError, OSError) as exc:
        return f"auth.require_keys is true but the API keys file cannot be read: {exc}"
    if not keys:
        return f"auth.require_keys is true but the API keys file {path} holds no key: {fix}"
    return None


class KeyGuard:
    """The keys of this ingress replica and the feedback buckets; `None` keys: no keys
    configured, every request runs anonymous (the loopback-only mode)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.path: Path | None = None
        self.ring: KeyRing | None = None
        self.config = AuthConfig()
        self.buckets = TokenBuckets(self.config.feedback_rate_per_s, self.config.feedback_burst)
        self._stamp: tuple[int, int] | None = None
        self._checked_at = 0.0

    def configure(self, config: AuthConfig, environ: dict | os._Environ = os.environ) -> None:
        """Read the keys the config (or $RECSERVE_API_KEYS_FILE) names; a configured file that
        cannot be read stops the start (closed, never open), and so do missing keys under
        `auth.require_keys`."""
        problem = missing_keys(config, environ)
        if problem:
            raise KeysFileError(problem)
        self.config = config
        self.buckets = TokenBuckets(config.feedback_rate_per_s, config.feedback_burst)
        self.path = keys_file_path(config.keys_file, environ)
        self.ring = None
        if self.path is not None:
            self._load()
            self._checked_at = self.clock()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _load(self) -> None:
        stamp = self._file_stamp()
        keys = KeysFile.read(self.path).keys
        self.ring, self._stamp = KeyRing(keys), stamp
        log.info("API keys loaded from %s: %s", self.path, sorted(self.ring.keys))

    def _refresh(self) -> None:
        now = self.clock()
        if now - self._checked_at < self.config.reload_interval_s:
            return
        self._checked_at = now
        if self._file_stamp() == self._stamp:
            return
        try:
            self._load()
        except (KeysFileError, OSError) as exc:
            # The last good keys stay: a half-edited file must not open or lock the API.
            log.error("API keys file not reloaded, keeping the previous keys: %s", exc)

    @property
    def keys_configured(self) -> bool:
        return self.ring is not None

    def admit(self, path: str, authorization: str | None) -> tuple[str | None, ServiceError | None]:
        """(principal, None) when the request may go on, else (None, the error to answer)."""
        scope = required_scope(path)
        if self.ring is None or scope is None:
            return None, None
        self._refresh()
        decision = self.ring.check(authorization, scope)
        if decision.status == 401:
            return None, Unauthorized(decision.message)
        if decision.status == 403:
            return None, Forbidden(decision.message)
        if scope == "feedback":
            refusal = self.buckets.refusal(decision.principal, self.clock())
            if refusal is not None:
                return None, refusal
        return decision.principal, None


GUARD = KeyGuard()


def configure_keys(config: AuthConfig) -> None:
    """Configure this process' guard, the one the middleware asks. Called by name (never through
    a reference to GUARD) from the Ingress: Serve ships the Ingress class by value, with copies of
    the globals it names."""
    GUARD.configure(config)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class ApiKeyCheck:
    """ASGI middleware: refuses a request without the key its path needs before any route (or
    body read) runs, and leaves the principal in the scope's state."""

    def __init__(self, app, guard: KeyGuard | None = None):
        self.app = app
        self.guard = guard

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = scope.get("path", "")
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :] or "/"
            guard = self.guard or GUARD
            principal, refusal = guard.admit(path, _header(scope, b"authorization"))
            if refusal is not None:
                await refusal.to_response()(scope, receive, send)
                return
            scope.setdefault("state", {})[PRINCIPAL_STATE] = principal
        await self.app(scope, receive, send)


def principal_of(request: Request) -> str | None:
    """The key id this request runs as; None while no keys are configured."""
    return request.scope.get("state", {}).get(PRINCIPAL_STATE)
