"""Typed domain errors, each with its HTTP status and a stable machine-readable code, and the one
builder of error replies.

Every error reply of the service has the shape `{"error": {"code": ..., "message": ...}}` and is
built here: a handler only raises, and the exception handlers answer with `to_response()`.
"""

from __future__ import annotations

from starlette.responses import JSONResponse


def error_body(code: str, message: str) -> dict:
    """The one JSON shape of every error reply: `{"error": {"code": ..., "message": ...}}`."""
    return {"error": {"code": code, "message": message}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An HTTP error reply in the one shape, with its status and headers (Retry-After, ...)."""
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


class ServiceError(Exception):
    """Base class: an error the client is told about, with a status and a code."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def to_response(self) -> JSONResponse:
        """This error as the HTTP reply the client gets."""
        return error_response(self.status, self.code, self.message, self.headers)

    def to_wire(self) -> dict:
        """A plain dict that crosses process boundaries unchanged (exceptions do not, reliably)."""
        return {"code": self.code, "message": self.message, "headers": self.headers}

    @staticmethod
    def from_wire(wire: dict) -> "ServiceError":
        """The error a `to_wire()` dict describes, as its own class."""
        cls = _BY_CODE.get(wire.get("code"), ServiceError)
        err = ServiceError.__new__(cls)
        ServiceError.__init__(err, wire.get("message", ""), headers=wire.get("headers"))
        return err


class BadRequest(ServiceError):
    """400: the request is malformed (empty body, truncated image, malformed OIP payload)."""

    status = 400
    code = "bad_request"


class InvalidImage(BadRequest):
    """400: the bytes start like an image but cannot be decoded (truncated, corrupt)."""

    code = "invalid_image"


class ModelNotFound(ServiceError):
    """404: no model with that name is served."""

    status = 404
    code = "model_not_found"


class PayloadTooLarge(ServiceError):
    """413: body over the byte limit, too many images, or an image over the pixel limit."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    """415: the content type is not one we accept, or the bytes are not an image."""

    status = 415
    code = "unsupported_media_type"


class UnprocessableEntity(ServiceError):
    """422: well-formed but semantically invalid (top_k out of range, unknown label)."""

    status = 422
    code = "unprocessable_entity"


class RetryLater(ServiceError):
    """A refusal the client may send again: its reply says when, in Retry-After (seconds)."""

    retry_after_s = 1

    def __init__(self, message: str, *, retry_after_s: int | None = None):
        wait = self.retry_after_s if retry_after_s is None else retry_after_s
        super().__init__(message, headers={"Retry-After": str(wait)})


class Overloaded(RetryLater):
    """503: the model's queue is full; the client should retry after the given delay."""

    status = 503
    code = "overloaded"
    retry_after_s = 1


class NotReady(RetryLater):
    """503: the model is still loading or warming up."""

    status = 503
    code = "not_ready"
    retry_after_s = 5


class StoreUnavailable(RetryLater):
    """503: the quality store cannot write (disk full, read-only, I/O error); feedback can be sent
    again after the given delay."""

    status = 503
    code = "quality_store_unavailable"
    retry_after_s = 30


class Unauthorized(ServiceError):
    """401: no API key, or one that is not valid; the reply asks for a bearer token."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str):
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="recognition-serve"'})


class Forbidden(ServiceError):
    """403: a valid API key without the scope the route needs."""

    status = 403
    code = "forbidden"


class TooManyRequests(RetryLater):
    """429: this API key is over its rate limit; Retry-After says when to try again."""

    status = 429
    code = "too_many_requests"
    retry_after_s = 1


class ModelExecutionError(ServiceError):
    """500: the model failed on these inputs (e.g. out of GPU memory even at batch size 1)."""

    status = 500
    code = "model_execution_error"


def _all_subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_all_subclasses(sub))]


_BY_CODE = {c.code: c for c in _all_subclasses(ServiceError)}


class ConfigError(ValueError):
    """A configuration or model file is wrong; raised at startup with the fix in the message."""
