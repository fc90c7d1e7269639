"""Open Inference Protocol v2 parsing and encoding, checked against tritonclient's own encoders."""

import base64
import json
import struct

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.http._utils import _get_inference_request

from serve_app.errors import BadRequest, PayloadTooLarge
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
