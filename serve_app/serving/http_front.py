"""What the HTTP front does around its routes: refuse a client's request id the service would not
issue, turn every raised error into the one error reply of errors.py, and answer readiness.

Handlers only raise typed errors; `install_error_handling` makes sure no exception, expected or
not, leaves the service as anything but that reply.
"""

import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.errors import ServiceError, UnprocessableEntity, error_response
from serve_app.serving.logs import request_logger
from serve_app.serving.request_parsing import check_client_request_id

log = request_logger()

# Codes for the errors Starlette raises itself (unknown route, wrong method).
HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}


class ClientRequestIdCheck:
    """ASGI middleware: refuses (400) a client's X-Request-Id the service would not issue (too
    long, unsafe characters) before any route runs; the service's own ids pass unchanged."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            for key, value in scope.get("headers", ()):
                if key.lower() == b"x-request-id":
                    try:
                        check_client_request_id(value.decode("latin-1"))
                    except ServiceError as err:
                        await err.to_response()(scope, receive, send)
                        return
        await self.app(scope, receive, send)


def current_request_id() -> str:
    """The id Serve assigned to the request being handled (a fresh uuid outside a request).

    Serve's proxy takes the client's X-Request-Id when it sends one, logs it and returns it in that
    header; predictions and feedback use the same id, so one id ties them all.
    """
    from ray.serve.context import _get_serve_request_context

    return _get_serve_request_context().request_id or uuid.uuid4().hex


def readiness_reply(document: dict, ready: bool) -> JSONResponse:
    """A readiness document, answered 503 while not ready so probes and load balancers wait."""
    return JSONResponse(document, status_code=200 if ready else 503)


async def _service_error(_: Request, err: ServiceError) -> JSONResponse:
    return err.to_response()


async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
    details = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
    return UnprocessableEntity(f"invalid request: {details}").to_response()


async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
    code = HTTP_ERROR_CODES.get(err.status_code, "http_error")
    return error_response(err.status_code, code, str(err.detail))


async def _unexpected_error(_: Request, err: Exception) -> JSONResponse:
    request_id = current_request_id()
    log.exception("unexpected error (request %s)", request_id)
    return ServiceError(f"internal error (request {request_id})").to_response()


def install_error_handling(api: FastAPI) -> None:
    """The request-id check and the exception handlers, on `api`."""
    api.add_middleware(ClientRequestIdCheck)
    api.add_exception_handler(ServiceError, _service_error)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(StarletteHTTPException, _http_error)
    api.add_exception_handler(Exception, _unexpected_error)
