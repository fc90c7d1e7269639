"""Open Inference Protocol v2 against the running service, with the standard tritonclient."""

import base64

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient

from serve_app.serving.imaging import decode_and_crop, normalize_batch
from serve_app.serving.models import LITE_PREPROCESS
from tests.conftest import CAT_CLASSES, ESPRESSO

MODEL = "efficientnet_lite0"


@pytest.fixture(scope="module")
def client(service_url):
    return httpclient.InferenceServerClient(url=service_url.removeprefix("http://"))


def test_health_and_metadata_with_tritonclient(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL)
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["versions"] == ["1"]
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {
        "image": "BYTES",
        "pixels": "FP32",
    }
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]


def test_tritonclient_binary_infer_on_encoded_images(client, cat_jpeg, coffee_jpeg):
    image = httpclient.InferInput("image", [2], "BYTES")
    image.set_data_from_numpy(
        np.array([cat_jpeg, coffee_jpeg], dtype=np.object_)
    )  # binary by default
    result = client.infer(MODEL, [image])
    class_ids, scores, labels = (
        result.as_numpy("class_ids"),
        result.as_numpy("scores"),
        result.as_numpy("labels"),
    )
    assert class_ids.shape == (2, 5) and scores.shape == (2, 5) and labels.shape == (2, 5)
    assert set(class_ids[0].tolist()) & CAT_CLASSES
    assert class_ids[1, 0] == ESPRESSO and labels[1, 0] == b"espresso"
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_tritonclient_json_outputs_and_top_k_parameter(client, coffee_jpeg):
    image = httpclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([coffee_jpeg], dtype=np.object_), binary_data=True)
    outputs = [
        httpclient.InferRequestedOutput("class_ids", binary_data=False),
        httpclient.InferRequestedOutput("scores", binary_data=False),
    ]
    result = client.infer(MODEL, [image], outputs=outputs, parameters={"top_k": 3})
    assert result.as_numpy("class_ids").tolist()[0][0] == ESPRESSO
    assert result.as_numpy("class_ids").shape == (1, 3)
    assert result.as_numpy("labels") is None  # not asked for


def test_preprocessed_fp32_pixels(client, coffee_jpeg):
    pixels = normalize_batch([decode_and_crop(coffee_jpeg, LITE_PREPROCESS)], LITE_PREPROCESS)
    t = httpclient.InferInput("pixels", list(pixels.shape), "FP32")
    t.set_data_from_numpy(pixels)
    result = client.infer(MODEL, [t])
    assert result.as_numpy("class_ids")[0, 0] == ESPRESSO


def test_plain_json_request_with_base64(service_url, cat_jpeg):
    doc = {
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(cat_jpeg).decode()],
                "parameters": {"content_type": "base64"},
            }
        ]
    }
    r = requests.post(f"{service_url}/v2/models/{MODEL}/infer", json=doc, timeout=30)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert set(outputs["class_ids"]["data"][:5]) & CAT_CLASSES and outputs["class_ids"][
        "shape"
    ] == [1, 5]


@pytest.mark.parametrize(
    "body, headers, status",
    [
        (b"{broken", {"Content-Type": "application/json"}, 400),
        (
            b'{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", '
            b'"data": ["aGVsbG8="]}]}',
            {},
            415,
        ),  # "hello": not an image
        (
            b'{"inputs": [{"name": "pixels", "shape": [1, 3, 8, 8], "datatype": "FP32", '
            b'"data": [0]}]}',
            {},
            400,
        ),
        (
            b'{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES"}]}',
            {"Inference-Header-Content-Length": "zz"},
            400,
        ),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1]}]}', {}, 400),
    ],
)
def test_malformed_oip_requests_get_4xx(service_url, body, headers, status):
    r = requests.post(
        f"{service_url}/v2/models/{MODEL}/infer", data=body, headers=headers, timeout=30
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]


def test_unknown_model_is_404(service_url):
    assert requests.get(f"{service_url}/v2/models/nope", timeout=10).status_code == 404
    assert requests.get(f"{service_url}/v2/models/nope/ready", timeout=10).status_code == 404
