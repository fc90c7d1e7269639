import json

import pytest

from serve_app.errors import (
    InvalidImage,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
    error_body,
    error_response,
)


@pytest.mark.parametrize(
    "err",
    [
        InvalidImage("cut short"),
        PayloadTooLarge("big"),
        UnsupportedMediaType("text"),
        Overloaded("busy", retry_after_s=3),
    ],
)
def test_errors_cross_process_boundaries_as_plain_dicts(err):
    back = ServiceError.from_wire(err.to_wire())
    assert type(back) is type(err) and back.status == err.status and back.message == err.message
    assert back.headers == err.headers


def test_unknown_code_becomes_a_generic_500():
    back = ServiceError.from_wire({"code": "something_new", "message": "m"})
    assert type(back) is ServiceError and back.status == 500


@pytest.mark.parametrize(
    "err, status, code, headers",
    [
        (InvalidImage("cut short"), 400, "invalid_image", {}),
        (PayloadTooLarge("big"), 413, "payload_too_large", {}),
        (Overloaded("busy", retry_after_s=3), 503, "overloaded", {"retry-after": "3"}),
        (ServiceError("boom"), 500, "internal_error", {}),  # the base class: an internal error
    ],
)
def test_an_error_answers_with_its_status_code_and_headers_in_the_one_shape(
    err, status, code, headers
):
    response = err.to_response()
    assert response.status_code == status
    assert json.loads(response.body) == {"error": {"code": code, "message": err.message}}
    assert {k: v for k, v in response.headers.items() if k == "retry-after"} == headers


def test_error_response_builds_the_same_shape_for_errors_that_are_not_service_errors():
    response = error_response(405, "method_not_allowed", "Method Not Allowed")
    assert response.status_code == 405
    assert json.loads(response.body) == error_body("method_not_allowed", "Method Not Allowed")
    assert error_body("c", "m") == {"error": {"code": "c", "message": "m"}}
