import pytest

from serve_app.errors import (
    InvalidImage,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
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
