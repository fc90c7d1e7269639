"""The running service over real HTTP: REST predictions, bad input, overload, health."""

import base64
import concurrent.futures
import io

import requests
from PIL import Image

from tests.conftest import CAT_CLASSES, ESPRESSO

MODEL = "efficientnet_lite0"


def predict_url(base, model=MODEL):
    return f"{base}/v1/models/{model}/predict"


def top_ids(prediction):
    return [p["class_id"] for p in prediction["top_k"]]


def test_multipart_upload_gets_correct_labels(service_url, cat_jpeg, coffee_jpeg):
    r = requests.post(
        predict_url(service_url),
        files=[
            ("file", ("cat.jpg", cat_jpeg, "image/jpeg")),
            ("file", ("coffee.jpg", coffee_jpeg, "image/jpeg")),
        ],
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    cat, coffee = body["predictions"]
    assert set(top_ids(cat)) & CAT_CLASSES
    assert top_ids(coffee)[0] == ESPRESSO and coffee["top_k"][0]["label"] == "espresso"
    assert len(cat["top_k"]) == 5  # default top_k
    assert body["model_name"] == MODEL and body["model_version"] == "1"
    assert r.headers["X-Request-Id"] == body["request_id"]
    assert {"decode", "queue_wait", "inference", "postprocess", "total"} <= set(body["timings_ms"])


def test_raw_body_and_top_k(service_url, coffee_jpeg):
    r = requests.post(
        predict_url(service_url),
        params={"top_k": 2},
        data=coffee_jpeg,
        headers={"Content-Type": "image/jpeg"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    (pred,) = r.json()["predictions"]
    assert top_ids(pred)[0] == ESPRESSO and len(pred["top_k"]) == 2
    scores = [p["score"] for p in pred["top_k"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001


def test_json_base64(service_url, coffee_png):
    r = requests.post(
        predict_url(service_url),
        json={"images": [base64.b64encode(coffee_png).decode()], "top_k": 1},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert top_ids(r.json()["predictions"][0]) == [ESPRESSO]


def test_models_listing_and_health(service_url):
    models = {
        m["name"]: m for m in requests.get(f"{service_url}/v1/models", timeout=10).json()["models"]
    }
    assert set(models) == {
        MODEL,
        "lite0_canary",
        "lite0_autoscale",
        "lite0_fallback",
        "lite0_predictive",
        "lite0_overload",
        "lite0_int8",
    }  # models side by side, each its own deployment
    m = models[MODEL]
    assert (
        m["name"] == MODEL
        and m["labels_count"] == 1000
        and m["device"] == "cpu"
        and m["ready"] is True
    )
    assert m["input"]["shape"] == [3, 224, 224] and m["runtime"] in ("onnxruntime", "torch")
    assert requests.get(f"{service_url}/healthz", timeout=10).json() == {"status": "ok"}
    assert requests.get(f"{service_url}/readyz", timeout=10).json()["ready"] is True
    assert requests.get(f"{service_url}/docs", timeout=10).status_code == 200
    assert (
        "/v1/models/{name}/predict"
        in requests.get(f"{service_url}/openapi.json", timeout=10).json()["paths"]
    )


def _png_bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (5000, 5000)).save(
        buf, format="PNG"
    )  # 25 MP > the test limit of 4 MP, ~25 KB on the wire
    return buf.getvalue()


def _bad_requests(cat_jpeg):
    jpeg = {"Content-Type": "image/jpeg"}
    return [
        ("empty body", dict(data=b"", headers=jpeg), 400, "bad_request"),
        (
            "not an image",
            dict(data=b"just some text, not pixels", headers=jpeg),
            415,
            "unsupported_media_type",
        ),
        (
            "truncated jpeg",
            dict(data=cat_jpeg[: len(cat_jpeg) // 2], headers=jpeg),
            400,
            "invalid_image",
        ),
        (
            "pixel bomb",
            dict(data=_png_bomb(), headers={"Content-Type": "image/png"}),
            413,
            "payload_too_large",
        ),
        (
            "body over limit",
            dict(data=b"\xff\xd8\xff" + b"0" * 3_000_000, headers=jpeg),
            413,
            "payload_too_large",
        ),
        (
            "top_k zero",
            dict(data=cat_jpeg, headers=jpeg, params={"top_k": 0}),
            422,
            "unprocessable_entity",
        ),
        (
            "top_k too big",
            dict(data=cat_jpeg, headers=jpeg, params={"top_k": 21}),
            422,
            "unprocessable_entity",
        ),
        (
            "top_k not a number",
            dict(data=cat_jpeg, headers=jpeg, params={"top_k": "many"}),
            422,
            "unprocessable_entity",
        ),
        (
            "too many images",
            dict(files=[("file", ("a.jpg", cat_jpeg, "image/jpeg"))] * 9),
            413,
            "payload_too_large",
        ),
        ("bad base64", dict(json={"images": ["@@@not base64@@@"]}), 400, "bad_request"),
        ("json without images", dict(json={"pictures": []}), 400, "bad_request"),
        (
            "wrong content type",
            dict(data=b"a=b", headers={"Content-Type": "text/plain"}),
            415,
            "unsupported_media_type",
        ),
    ]


def test_bad_input_gets_clear_json_errors_and_the_replica_keeps_serving(service_url, cat_jpeg):
    for name, kwargs, status, code in _bad_requests(cat_jpeg):
        r = requests.post(predict_url(service_url), timeout=30, **kwargs)
        assert r.status_code == status, f"{name}: {r.status_code} {r.text}"
        err = r.json()["error"]
        assert err["code"] == code and err["message"], name
    r = requests.post(
        predict_url(service_url, "no_such_model"),
        data=cat_jpeg,
        headers={"Content-Type": "image/jpeg"},
        timeout=30,
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    # Still serving after all of that.
    r = requests.post(
        predict_url(service_url), data=cat_jpeg, headers={"Content-Type": "image/jpeg"}, timeout=30
    )
    assert r.status_code == 200 and set(top_ids(r.json()["predictions"][0])) & CAT_CLASSES


def test_unknown_route_is_json_404(service_url):
    r = requests.get(f"{service_url}/v1/nothing-here", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_overload_sheds_with_503_and_retry_after(service_url, cat_jpeg):
    small = Image.open(io.BytesIO(cat_jpeg)).resize((240, 160))
    buf = io.BytesIO()
    small.save(buf, format="JPEG")
    files = [("file", ("cat.jpg", buf.getvalue(), "image/jpeg"))] * 8

    def one(_):
        r = requests.post(predict_url(service_url), files=files, timeout=120)
        return r.status_code, r.headers.get("Retry-After"), r.json()

    # 16 running + 16 queued per replica are allowed; 120 concurrent requests of 8 images overflow
    # that.
    with concurrent.futures.ThreadPoolExecutor(120) as pool:
        results = list(pool.map(one, range(120)))
    statuses = [s for s, _, _ in results]
    assert set(statuses) <= {200, 503}, statuses
    shed = [(ra, body) for s, ra, body in results if s == 503]
    assert shed and statuses.count(200) > 0
    assert all(
        ra is not None and int(ra) >= 1 and body["error"]["code"] == "overloaded"
        for ra, body in shed
    )
    # The service recovers once the burst is gone.
    r = requests.post(
        predict_url(service_url), data=cat_jpeg, headers={"Content-Type": "image/jpeg"}, timeout=60
    )
    assert r.status_code == 200
