"""What a REST request carries: top_k within its limits, the image count, a JSON body within
its nesting limit, a client request id; and that no input makes a parser fail with a 5xx."""

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_app.config import LimitsConfig
from serve_app.errors import BadRequest, PayloadTooLarge, ServiceError, UnprocessableEntity
from serve_app.serving.request_parsing import (
    check_client_request_id,
    check_image_count,
    decode_json,
    images_from_json,
    nests_deeper_than,
    parse_top_k,
)

LIMITS = LimitsConfig(default_top_k=5, max_top_k=10)


@pytest.mark.parametrize(
    "raw, expected",
    [
        (None, 5),  # absent: the default
        ("", 5),  # an empty form field or query parameter: the default
        ("3", 3),
        (" 4 ", 4),  # a form field with spaces
        (7.0, 7),  # JSON 7.0 is the integer 7
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
        (float("inf"), "must be an integer, got inf"),  # int(inf) would raise OverflowError
        (float("nan"), "must be an integer, got nan"),
        (2.5, "must be an integer, got 2.5"),
        (True, "must be an integer, got True"),  # JSON true is not 1
        ("1e3", "must be an integer, got '1e3'"),
        ("\u0663", "must be an integer"),  # an Arabic-Indic digit: str.isdigit() says yes
        (
            "9" * 5000,
            "must be an integer, got '99999",
        ),  # past int()'s digit limit; cut in the reply
        ({"k": 1}, "must be an integer"),
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
    assert decode_json(body, max_depth=4) == expected


@pytest.mark.parametrize("body", [b"{", b"\xff\xfe", b"not json"])
def test_a_body_that_is_not_json_is_a_bad_request(body):
    with pytest.raises(BadRequest, match="not valid JSON"):
        decode_json(body, max_depth=4)


@pytest.mark.parametrize(
    "doc, max_depth, deeper",
    [
        (1, 1, False),  # a scalar has no depth
        ([], 1, False),  # one level
        ([[]], 1, True),  # two levels against a limit of 1
        ({"a": [{"b": []}]}, 4, False),  # object, array, object, array: 4 levels
        ({"a": [{"b": []}]}, 3, True),
        ([1, [2, [3]], {"x": 4}], 3, False),  # the deepest branch decides: [ [ [ = 3
    ],
)
def test_nesting_depth_counts_arrays_and_objects(doc, max_depth, deeper):
    assert nests_deeper_than(doc, max_depth) is deeper


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 33 + b"]" * 33,  # one level over the limit of 32
        b'{"a":' * 40 + b"1" + b"}" * 40,
        b"[" * 200_000,  # deep enough to hit json's recursion limit before any depth check
        b'{"images": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
)
def test_json_nested_past_the_limit_is_refused_naming_it(body):
    with pytest.raises(BadRequest, match="nests deeper than the limit of 32 levels"):
        decode_json(body, max_depth=32)


def test_json_nested_to_the_limit_decodes():
    assert nests_deeper_than(decode_json(b"[" * 32 + b"]" * 32, max_depth=32), 32) is False


@pytest.mark.parametrize(
    "body, message",
    [
        (b'{"top_k": NaN}', "holds NaN, which is not a JSON number"),
        (b'{"top_k": Infinity}', "holds Infinity"),
        (b"[-Infinity]", "holds -Infinity"),
        (b'{"images": ["\\ud800"]}', "lone UTF-16 surrogate"),  # cannot be encoded to UTF-8
        (b'"\\udfff"', "lone UTF-16 surrogate"),
    ],
)
def test_json_that_python_accepts_but_is_not_json_text_is_refused(body, message):
    with pytest.raises(BadRequest, match=message):
        decode_json(body, max_depth=32)


def test_a_surrogate_pair_is_one_character_and_decodes():
    assert decode_json(b'"\\ud83d\\ude00"', max_depth=32) == "\U0001f600"


def test_json_images_are_counted_before_any_is_decoded():
    limits = LimitsConfig(max_images_per_request=2)
    body = json.dumps({"images": ["not base64 at all"] * 3}).encode()
    # 413 for the count, not 400 for the first image's base64
    with pytest.raises(PayloadTooLarge, match="3 images in one request, over the limit of 2"):
        images_from_json(body, limits)


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"images": [7]}, "images\\[0\\] must be a base64 string, got int"),
        ({"images": ["aGk=", "%%"]}, "images\\[1\\] is not valid base64"),
        ({"images": []}, "non-empty list"),
        ({"image": None}, "images\\[0\\] must be a base64 string, got NoneType"),
        ([1], "must be an object"),
    ],
)
def test_json_images_name_the_element_at_fault(doc, message):
    with pytest.raises(BadRequest, match=message):
        images_from_json(json.dumps(doc).encode(), LimitsConfig())


def test_json_images_and_other_fields_come_back():
    body = json.dumps({"images": [base64.b64encode(b"abc").decode()], "top_k": 3}).encode()
    assert images_from_json(body, LimitsConfig()) == ([b"abc"], {"top_k": 3})


@pytest.mark.parametrize(
    "value", [None, "", "a", "0f8c2e7a-1b2c-4d5e-8f90-123456789abc", "x" * 64, "trace:42.a_b-c"]
)
def test_request_ids_the_service_could_issue_pass(value):
    check_client_request_id(value)


@pytest.mark.parametrize(
    "value, message",
    [
        ("x" * 65, "X-Request-Id is 65 characters long, over the limit of 64"),
        ("a b", "X-Request-Id may hold only letters, digits"),
        ("id/../etc", "may hold only"),
        ("caf\u00e9", "may hold only"),  # a header byte over 0x7f, read as latin-1
        ("a\nb", "may hold only"),
    ],
)
def test_request_ids_too_long_or_with_unsafe_characters_are_refused(value, message):
    with pytest.raises(BadRequest, match=message):
        check_client_request_id(value)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8).map(lambda b: base64.b64encode(b).decode()),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["images", "image", "top_k", "x"]), children, max_size=3)
    ),
    max_leaves=20,
)
FUZZ = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


def _only_client_errors(parse, *args):
    try:
        parse(*args)
    except ServiceError as err:
        assert 400 <= err.status < 500, err


@FUZZ
@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_no_body_makes_the_json_decoder_fail_other_than_with_a_4xx(body):
    _only_client_errors(decode_json, body, 4)


@FUZZ
@given(JSON_VALUES)
def test_no_json_predict_body_makes_the_parsers_fail_other_than_with_a_4xx(doc):
    body = json.dumps(doc).encode()  # NaN and Infinity included: Python writes them
    try:
        images, fields = images_from_json(body, LimitsConfig(max_json_depth=4))
    except ServiceError as err:
        assert 400 <= err.status < 500, err
        return
    _only_client_errors(parse_top_k, fields.get("top_k"), LimitsConfig())
    assert all(isinstance(i, bytes) for i in images)
