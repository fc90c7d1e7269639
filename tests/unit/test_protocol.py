"""Open Inference Protocol v2 parsing and encoding, checked against tritonclient's own encoders."""

import base64
import json
import struct

import numpy as np
import pytest
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.http._utils import _get_inference_request

from serve_app.config import LimitsConfig
from serve_app.errors import BadRequest, PayloadTooLarge, ServiceError
from serve_app.serving.protocol import (
    InputTensor,
    encode_infer_response,
    images_from_tensors,
    parse_header_length,
    parse_infer_request,
)


def triton_body(inputs, outputs=None, parameters=None):
    body, header_length = _get_inference_request(
        inputs, "", outputs, 0, False, False, 0, None, parameters
    )
    return body, header_length


def test_tritonclient_binary_bytes_input_roundtrips():
    images = [b"\xff\xd8\xffjpeg-one", b"\x89PNGtwo"]
    t = httpclient.InferInput("image", [2], "BYTES")
    t.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    body, header_length = triton_body([t])
    req = parse_infer_request(body, header_length)
    assert req.inputs[0].data == images
    # no outputs named: tritonclient asks for every output in binary
    assert req.requested_outputs == {"scores": True, "class_ids": True, "labels": True}


def test_tritonclient_binary_fp32_input():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    t = httpclient.InferInput("pixels", list(x.shape), "FP32")
    t.set_data_from_numpy(x, binary_data=True)
    body, header_length = triton_body(
        [t], [httpclient.InferRequestedOutput("scores", binary_data=False)]
    )
    req = parse_infer_request(body, header_length)
    assert np.array_equal(req.inputs[0].data, x)
    assert req.requested_outputs == {"scores": False}


def test_json_bytes_with_base64_content_type():
    doc = {
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(b"\xff\xd8\xffabc").decode()],
                "parameters": {"content_type": "base64"},
            }
        ]
    }
    req = parse_infer_request(json.dumps(doc).encode(), None)
    assert req.inputs[0].data == [b"\xff\xd8\xffabc"]
    assert req.requested_outputs == {"scores": False, "class_ids": False, "labels": False}


def test_response_decodes_with_tritonclient_binary_and_json():
    outputs = {
        "scores": ("FP32", [1, 2], [[0.75, 0.25]]),
        "class_ids": ("INT64", [1, 2], [[967, 504]]),
        "labels": ("BYTES", [1, 2], [b"espresso", b"coffee mug"]),
    }
    body, headers = encode_infer_response(
        "m", "1", "req-1", outputs, {"scores": True, "class_ids": False, "labels": True}
    )
    result = httpclient.InferResult.from_response_body(
        body, header_length=int(headers["Inference-Header-Content-Length"])
    )
    assert np.allclose(result.as_numpy("scores"), [0.75, 0.25])
    assert result.as_numpy("class_ids").tolist() == [[967, 504]]
    assert result.as_numpy("labels").tolist() == [[b"espresso", b"coffee mug"]]
    assert result.get_response()["id"] == "req-1"


@pytest.mark.parametrize(
    "body, header_length, message",
    [
        (b"", None, "empty body"),
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b'{"inputs": []}', None, "non-empty list"),
        (
            b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["YQ=="]}]}',
            None,
            "shape says 2 elements, data holds 1",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, "a"]}]}',
            None,
            "not FP32",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "COMPLEX", "shape": [1], "data": [1]}]}',
            None,
            "unsupported datatype",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}',
            None,
            "non-negative",
        ),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}', None, "neither `data`"),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], '
            b'"parameters": {"binary_data_size": 8}}]}',
            999,
            "outside the body",
        ),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], '
            b'"parameters": {"binary_data_size": 8}}]}abc',
            100,
            "runs past",
        ),
        (
            b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["YQ=="]}], '
            b'"outputs": [{"name": "logits"}]}',
            None,
            "unknown output",
        ),
    ],
)
def test_malformed_requests_are_bad_requests_with_a_reason(body, header_length, message):
    with pytest.raises(BadRequest, match=message):
        parse_infer_request(body, header_length)


def test_binary_bytes_length_prefix_running_past_data():
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 6},
                }
            ]
        }
    ).encode()
    blob = struct.pack("<I", 100) + b"ab"  # claims 100 bytes, has 2
    with pytest.raises(BadRequest, match="runs past the data"):
        parse_infer_request(header + blob, len(header))


def test_unclaimed_binary_bytes_are_refused():
    header = json.dumps(
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["YQ=="]}]}
    ).encode()
    with pytest.raises(BadRequest, match="not claimed"):
        parse_infer_request(header + b"extra", len(header))


def tensor(name, datatype, shape, data):
    return InputTensor(name, datatype, shape, data)


CROP = 4  # FP32 inputs must be [N, 3, CROP, CROP]


@pytest.mark.parametrize(
    "inputs, expected_count",
    [
        ([tensor("image", "BYTES", [2], [b"a", b"b"])], 2),
        # a lone BYTES input counts as the image whatever its name
        ([tensor("photo", "BYTES", [1], [b"a"])], 1),
        ([tensor("pixels", "FP32", [2, 3, CROP, CROP], np.zeros((2, 3, CROP, CROP)))], 2),
        # 1 encoded image + 1 pixel row = 2
        (
            [
                tensor("image", "BYTES", [1], [b"a"]),
                tensor("pixels", "FP32", [1, 3, CROP, CROP], np.zeros((1, 3, CROP, CROP))),
            ],
            2,
        ),
    ],
)
def test_image_and_pixel_inputs_become_one_list_of_images(inputs, expected_count):
    images = images_from_tensors(inputs, CROP, max_images=4)
    assert len(images) == expected_count
    assert all(isinstance(i, bytes) or i.dtype == np.float32 for i in images)


@pytest.mark.parametrize(
    "inputs, error, message",
    [
        (
            [tensor("image", "BYTES", [1], [b"a"]), tensor("other", "BYTES", [1], [b"b"])],
            BadRequest,
            "unknown input 'other'",
        ),
        ([tensor("pixels", "FP32", [1, 3, 5, 5], np.zeros((1, 3, 5, 5)))], BadRequest, "shape"),
        (
            [tensor("pixels", "FP32", [1, 3, CROP, CROP], np.full((1, 3, CROP, CROP), np.nan))],
            BadRequest,
            "NaN",
        ),
        ([tensor("x", "INT64", [1], np.zeros(1))], BadRequest, "not accepted"),
        ([tensor("image", "BYTES", [0], [])], BadRequest, "no images"),
        ([tensor("image", "BYTES", [1], [b""])], BadRequest, "empty"),
        # 5 images against a limit of 4
        ([tensor("image", "BYTES", [5], [b"a"] * 5)], PayloadTooLarge, "5 images"),
    ],
)
def test_unusable_inputs_are_refused_with_a_reason(inputs, error, message):
    with pytest.raises(error, match=message):
        images_from_tensors(inputs, CROP, max_images=4)


@pytest.mark.parametrize("raw, expected", [(None, None), ("0", 0), ("120", 120)])
def test_header_length_is_a_number_or_absent(raw, expected):
    assert parse_header_length(raw) == expected


def test_header_length_that_is_not_a_number_is_a_bad_request():
    with pytest.raises(BadRequest, match="'12a' is not a number"):
        parse_header_length("12a")


def infer_body(*tensors, **header):
    return json.dumps({"inputs": list(tensors), **header}).encode()


def fp(datatype, shape, data):
    return {"name": "pixels", "datatype": datatype, "shape": shape, "data": data}


@pytest.mark.parametrize(
    "body, error, message",
    [
        # shapes: checked before anything is allocated for them
        (infer_body(fp("FP32", [1, -1], [])), BadRequest, r"inputs\[0\]\.shape\[1\] must be a non"),
        (infer_body(fp("FP32", [True], [1.0])), BadRequest, r"inputs\[0\]\.shape\[0\] must be"),
        (infer_body(fp("FP32", [1.5], [1.0])), BadRequest, r"inputs\[0\]\.shape\[0\] must be"),
        (infer_body(fp("FP32", "1", [1.0])), BadRequest, r"inputs\[0\]\.shape must be a list"),
        (infer_body(fp("FP32", [1] * 9, [1.0])), BadRequest, "9 dimensions, over the limit of 8"),
        # 2**32 * 2**32 wraps to 0 in numpy's int64 prod; math.prod counts it exactly
        (
            infer_body(fp("FP32", [2**32, 2**32], [])),
            PayloadTooLarge,
            r"declares 18446744073709551616 elements, over the limit of 16777216",
        ),
        (
            infer_body({"name": "image", "datatype": "BYTES", "shape": [10**6], "data": []}),
            PayloadTooLarge,
            r"inputs\[0\]\.shape \[1000000\] declares 1000000 images, over the limit of 32",
        ),
        # values: each of the datatype's kind, finite, within its range
        (infer_body(fp("FP32", [2], [1.0, 1e39])), BadRequest, r"data\[1\] is not a finite FP32"),
        (infer_body(fp("FP32", [1], [10**400])), BadRequest, r"data\[0\] is not a finite FP32"),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1e400]}]}',
            BadRequest,
            r"data\[0\] is not a finite FP64",  # 1e400 parses to inf
        ),
        (infer_body(fp("INT8", [2], [1, 128])), BadRequest, r"data\[1\] is outside the INT8 range"),
        (infer_body(fp("UINT8", [1], [-1])), BadRequest, r"data\[0\] is outside the UINT8 range"),
        (infer_body(fp("INT64", [1], [2**63])), BadRequest, r"data\[0\] is outside the INT64"),
        (infer_body(fp("INT32", [1], [1.0])), BadRequest, r"data\[0\] is not INT32: got 1\.0"),
        (infer_body(fp("FP32", [1], [True])), BadRequest, r"data\[0\] is not FP32: got True"),
        (infer_body(fp("BOOL", [1], [1])), BadRequest, r"data\[0\] is not BOOL: got 1"),
        (infer_body(fp("FP32", [1], [{"a": 1}])), BadRequest, r"data\[0\] is not FP32"),
        (infer_body(fp("FP32", [1], [[]])), BadRequest, "shape says 1 elements, data holds 0"),
        # BYTES elements and their content type
        (
            infer_body({"name": "image", "datatype": "BYTES", "shape": [1], "data": [5]}),
            BadRequest,
            r"inputs\[0\]\.data\[0\]: BYTES elements must be strings, got 5",
        ),
        (
            infer_body(
                {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["YQ=="]}
                | {"parameters": {"content_type": ["base64"]}}
            ),
            BadRequest,
            r"content_type \['base64'\] is not supported",
        ),
        # the rest of the document
        (infer_body(fp("COMPLEX", [1], [1])), BadRequest, r"inputs\[0\]\.datatype: unsupported"),
        (infer_body(fp("FP32", [1], [1.0]), id=7), BadRequest, "`id` must be a string, got int"),
        (
            infer_body(fp("FP32", [1], [1.0]), outputs=[{"name": "scores", "parameters": [1]}]),
            BadRequest,
            r"outputs\[0\]\.parameters must be an object",
        ),
        (
            infer_body(fp("FP32", [1], [1.0]), outputs=[{"name": ["scores"]}]),
            BadRequest,
            r"outputs\[0\] must be an object with a string `name`",
        ),
        (
            infer_body(*[fp("FP32", [1], [1.0])] * 33),
            PayloadTooLarge,
            "`inputs` holds 33 tensors, over the limit of 32",
        ),
        (
            b'{"inputs": ' + b"[" * 50 + b"]" * 50 + b"}",
            BadRequest,
            "nests deeper than the limit of 32 levels",
        ),
        (b'{"inputs": [], "parameters": {"top_k": NaN}}', BadRequest, "holds NaN"),
    ],
)
def test_every_edge_of_a_json_infer_request_is_a_4xx_naming_the_field(body, error, message):
    with pytest.raises(error, match=message):
        parse_infer_request(body, None)


@pytest.mark.parametrize(
    "tensor_header, blob, message",
    [
        # binary_data_size must be a plain non-negative integer
        ({"binary_data_size": True}, b"\x00", "binary_data_size True runs past"),
        ({"binary_data_size": -1}, b"", "binary_data_size -1 runs past"),
        ({"binary_data_size": "4"}, b"\x00" * 4, "binary_data_size '4' runs past"),
        # 2 elements declared, 3 length-prefixed elements sent
        (
            {"binary_data_size": 15},
            struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b" + struct.pack("<I", 1) + b"c",
            "shape says 2 elements, binary data holds 3",
        ),
    ],
)
def test_binary_extension_sizes_that_do_not_fit_are_bad_requests(tensor_header, blob, message):
    header = json.dumps(
        {
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [2], "parameters": tensor_header}
            ]
        }
    ).encode()
    with pytest.raises(BadRequest, match=message):
        parse_infer_request(header + blob, len(header))


@pytest.mark.parametrize("raw", ["-1", "1e3", "\u0663", "9" * 5000, ""])
def test_header_lengths_that_are_not_plain_numbers_are_bad_requests(raw):
    with pytest.raises(BadRequest, match="is not a number"):
        parse_header_length(raw)


def test_integer_values_in_range_become_their_datatype():
    req = parse_infer_request(infer_body(fp("INT8", [2, 1], [[-128], [127]])), None)
    assert req.inputs[0].data.dtype == np.int8 and req.inputs[0].data.tolist() == [[-128], [127]]


JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.sampled_from(["BYTES", "FP32", "INT8", "UINT8", "BOOL", "image", "pixels", "base64"])
    | st.text(max_size=6)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["inputs", "outputs", "name", "datatype", "shape", "data", "parameters", "id"]
                + ["binary_data_size", "content_type", "top_k", "binary_data"]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)
TENSORS = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["image", "pixels"]),
        "datatype": st.sampled_from(["BYTES", "FP32", "FP16", "INT8", "UINT8", "INT64", "BOOL"]),
        "shape": st.lists(st.integers(-2, 2**40), max_size=5),
        "data": JSON_VALUES,
    },
    optional={"parameters": JSON_VALUES},
)


def _parses_or_is_a_client_error(body, header_length):
    try:
        req = parse_infer_request(body, header_length, LimitsConfig(max_json_depth=8))
        images_from_tensors(req.inputs, CROP, max_images=4)
    except ServiceError as err:
        assert 400 <= err.status < 500, err


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(JSON_VALUES, st.fixed_dictionaries({"inputs": st.lists(TENSORS, max_size=3)})))
def test_no_json_infer_document_makes_the_parser_fail_other_than_with_a_4xx(doc):
    _parses_or_is_a_client_error(json.dumps(doc).encode(), None)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    st.fixed_dictionaries({"inputs": st.lists(TENSORS, min_size=1, max_size=2)}),
    st.binary(max_size=64),
    st.integers(-4, 200),
)
def test_no_binary_infer_body_makes_the_parser_fail_other_than_with_a_4xx(doc, blob, extra):
    header = json.dumps(doc).encode()
    _parses_or_is_a_client_error(header + blob, len(header) + extra)
