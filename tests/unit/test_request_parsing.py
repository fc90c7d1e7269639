"""What a REST request carries: top_k within its limits, the image count, a JSON body."""

import pytest

from serve_app.config import LimitsConfig
from serve_app.errors import BadRequest, PayloadTooLarge, UnprocessableEntity
from serve_app.serving.request_parsing import check_image_count, decode_json, parse_top_k

LIMITS = LimitsConfig(default_top_k=5, max_top_k=10)


@pytest.mark.parametrize(
    "raw, expected",
    [
        (None, 5),  # absent: the default
        ("", 5),  # an empty form field or query parameter: the default
        ("3", 3),
        (10, 10),  # max_top_k itself is allowed
        (1, 1),
    ],
)
def test_top_k_is_the_requested_value_or_the_default(raw, expected):
    assert parse_top_k(raw, LIMITS) == expected


@pytest.mark.parametrize(
    "raw, message",
    [
        ("three", "must be an integer"),
        ([3], "must be an integer"),
        (0, "between 1 and 10, got 0"),
        (11, "between 1 and 10, got 11"),  # max_top_k + 1
    ],
)
def test_top_k_out_of_range_or_not_a_number_is_unprocessable(raw, message):
    with pytest.raises(UnprocessableEntity, match=message):
        parse_top_k(raw, LIMITS)


def test_image_count_up_to_the_limit_passes_and_one_more_is_too_large():
    check_image_count(4, 4)
    with pytest.raises(PayloadTooLarge, match="5 images in one request, over the limit of 4"):
        check_image_count(5, 4)


@pytest.mark.parametrize(
    "body, expected", [(b"", None), (b'{"a": 1}', {"a": 1}), (b"[1, 2]", [1, 2])]
)
def test_json_body_decodes_and_an_empty_one_is_none(body, expected):
    assert decode_json(body) == expected


@pytest.mark.parametrize("body", [b"{", b"\xff\xfe", b"not json"])
def test_a_body_that_is_not_json_is_a_bad_request(body):
    with pytest.raises(BadRequest, match="not valid JSON"):
        decode_json(body)
