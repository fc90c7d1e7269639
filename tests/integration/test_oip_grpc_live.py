"""Open Inference Protocol v2 over gRPC against the session's service, through Serve's gRPC proxy,
with the standard `tritonclient.grpc` client (it sends no `application` metadata)."""

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from serve_app.serving.imaging import decode_and_crop, normalize_batch
from serve_app.serving.models import LITE_PREPROCESS
from tests.conftest import CAT_CLASSES, ESPRESSO
from tests.integration.ports import GRPC_TARGET

MODEL = "efficientnet_lite0"
MAX_IMAGES = 8  # limits.max_images_per_request of configs/serve_config.test.yaml
MAX_BODY_BYTES = 2097152  # limits.max_body_bytes of the same file
TIMEOUT_S = 60.0  # per call: a loaded 2-core machine can be slow, never this slow


@pytest.fixture(scope="module")
def client(service_url):
    c = grpcclient.InferenceServerClient(url=GRPC_TARGET)
    yield c
    c.close()


def image_input(images: list[bytes]) -> grpcclient.InferInput:
    t = grpcclient.InferInput("image", [len(images)], "BYTES")
    t.set_data_from_numpy(np.array(images, dtype=np.object_))
    return t


def refusal(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_health_and_metadata(client):
    assert client.is_server_live(client_timeout=TIMEOUT_S)
    assert client.is_server_ready(client_timeout=TIMEOUT_S)
    assert client.is_model_ready(MODEL, client_timeout=TIMEOUT_S)
    meta = client.get_model_metadata(MODEL, client_timeout=TIMEOUT_S)
    assert meta.name == MODEL and list(meta.versions) == ["1"]
    assert {i.name: i.datatype for i in meta.inputs} == {"image": "BYTES", "pixels": "FP32"}
    assert list(meta.inputs[1].shape) == [-1, 3, 224, 224]
    assert {o.name for o in meta.outputs} == {"scores", "class_ids", "labels"}
    assert client.get_server_metadata(client_timeout=TIMEOUT_S).name == "recognition-serve"


def test_infer_real_photos_agrees_with_http(client, service_url, cat_jpeg, coffee_jpeg):
    result = client.infer(MODEL, [image_input([cat_jpeg, coffee_jpeg])], client_timeout=TIMEOUT_S)
    class_ids, scores = result.as_numpy("class_ids"), result.as_numpy("scores")
    assert class_ids.shape == (2, 5) and scores.shape == (2, 5)
    assert result.as_numpy("labels")[1, 0] == b"espresso"
    assert class_ids[0, 0] in CAT_CLASSES and class_ids[1, 0] == ESPRESSO
    for row, photo in enumerate((cat_jpeg, coffee_jpeg)):
        http = requests.post(
            f"{service_url}/v1/models/{MODEL}/predict",
            data=photo,
            headers={"Content-Type": "image/jpeg"},
            timeout=TIMEOUT_S,
        )
        assert http.status_code == 200, http.text
        top1 = http.json()["predictions"][0]["top_k"][0]
        assert class_ids[row, 0] == top1["class_id"]
        assert scores[row, 0] == pytest.approx(top1["score"], abs=1e-3)


def test_fp32_pixels_and_top_k(client, coffee_jpeg):
    pixels = normalize_batch([decode_and_crop(coffee_jpeg, LITE_PREPROCESS)], LITE_PREPROCESS)
    t = grpcclient.InferInput("pixels", list(pixels.shape), "FP32")
    t.set_data_from_numpy(pixels)
    result = client.infer(
        MODEL,
        [t],
        outputs=[grpcclient.InferRequestedOutput("class_ids")],
        parameters={"top_k": 3},
        client_timeout=TIMEOUT_S,
    )
    assert result.as_numpy("class_ids").tolist()[0][0] == ESPRESSO
    assert result.as_numpy("class_ids").shape == (1, 3)
    assert result.as_numpy("scores") is None  # not asked for


def test_unknown_model_is_not_found(client, coffee_jpeg):
    for call in (
        lambda: client.infer("no_such_model", [image_input([coffee_jpeg])]),
        lambda: client.get_model_metadata("no_such_model"),
        lambda: client.is_model_ready("no_such_model"),
    ):
        err = refusal(call)
        assert err.status() == "StatusCode.NOT_FOUND", err
        assert "no_such_model" in err.message()


def test_too_many_images_is_invalid_argument_naming_the_limit(client, coffee_jpeg):
    err = refusal(lambda: client.infer(MODEL, [image_input([coffee_jpeg] * (MAX_IMAGES + 1))]))
    assert err.status() == "StatusCode.INVALID_ARGUMENT", err
    assert f"over the limit of {MAX_IMAGES}" in err.message()


def test_oversized_message_is_invalid_argument_naming_the_limit(client):
    err = refusal(lambda: client.infer(MODEL, [image_input([b"\xff" * (MAX_BODY_BYTES + 1)])]))
    assert err.status() == "StatusCode.INVALID_ARGUMENT", err
    assert f"over the limit of {MAX_BODY_BYTES} (limits.max_body_bytes)" in err.message()


def test_garbage_and_malformed_inputs_are_invalid_argument(client):
    garbage = refusal(lambda: client.infer(MODEL, [image_input([b"not an image at all" * 8])]))
    assert garbage.status() == "StatusCode.INVALID_ARGUMENT", garbage
    wrong_shape = grpcclient.InferInput("pixels", [1, 3, 8, 8], "FP32")
    wrong_shape.set_data_from_numpy(np.zeros((1, 3, 8, 8), dtype=np.float32))
    err = refusal(lambda: client.infer(MODEL, [wrong_shape]))
    assert err.status() == "StatusCode.INVALID_ARGUMENT", err
    assert "[N, 3, 224, 224]" in err.message()


def test_methods_not_served_are_unimplemented(client):
    err = refusal(lambda: client.get_model_config(MODEL, client_timeout=TIMEOUT_S))
    assert err.status() == "StatusCode.UNIMPLEMENTED", err
