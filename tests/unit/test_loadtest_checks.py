"""What the load-test users send and how they judge answers; the bundled photos."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from loadtests import checks
from loadtests.images import PHOTO_CLASSES, load_photos

GOOD_PREDICT = {
    "request_id": "abc",
    "model_name": "efficientnet_lite0",
    "model_version": "1",
    "predictions": [{"index": 0, "top_k": [{"label": "tabby", "class_id": 281, "score": 0.61}]}],
    "timings_ms": {"total": 30.5},
}

GOOD_INFER = {
    "model_name": "efficientnet_lite0",
    "id": "r-1",
    "outputs": [
        {"name": "class_ids", "shape": [2, 2], "datatype": "INT64", "data": [281, 282, 967, 968]},
        {"name": "scores", "shape": [2, 2], "datatype": "FP32", "data": [[0.6, 0.3], [0.8, 0.1]]},
    ],
}


@pytest.mark.parametrize(
    "status, outcome",
    [
        (200, "ok"),
        (204, "ok"),
        (503, "shed"),
        (500, "failure"),
        (415, "failure"),
        (429, "failure"),
        (0, "failure"),
    ],
)
def test_status_outcome(status, outcome):
    assert checks.status_outcome(status) == outcome


def test_good_predict_body_passes():
    assert checks.predict_problem(GOOD_PREDICT, 1) is None


@pytest.mark.parametrize(
    "change, expected_images, problem",
    [
        ({"request_id": ""}, 1, "missing request_id"),
        ({"predictions": None}, 1, "missing predictions list"),
        ({}, 2, "1 predictions for 2 images"),
        ({"predictions": [{"index": 0, "top_k": []}]}, 1, "prediction 0 has no top_k list"),
        (
            {"predictions": [{"top_k": [{"label": "tabby", "score": 0.5}]}]},
            1,
            "without an integer class_id",
        ),
        (
            {"predictions": [{"top_k": [{"class_id": 1, "score": 7.5}]}]},
            1,
            "score 7.5 outside 0..1",
        ),
    ],
)
def test_wrong_predict_bodies_are_named(change, expected_images, problem):
    assert problem in checks.predict_problem({**GOOD_PREDICT, **change}, expected_images)


def test_non_object_bodies_are_wrong():
    assert "expected a JSON object" in checks.predict_problem([1, 2], 1)
    assert "expected a JSON object" in checks.infer_problem("text", 1)


def test_good_infer_body_passes_with_flat_or_nested_data():
    assert checks.infer_problem(GOOD_INFER, 2) is None


@pytest.mark.parametrize(
    "outputs, problem",
    [
        ([], "missing outputs list"),
        ([{"name": "x", "shape": [1], "data": [1]}], "lacks name or datatype"),
        (
            [{"name": "x", "datatype": "FP32", "shape": "1", "data": [1]}],
            "expected a list of sizes",
        ),
        (
            [{"name": "x", "datatype": "FP32", "shape": [3, 2], "data": [0] * 6}],
            "3 rows for 2 images",
        ),
        (
            [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [0] * 3}],
            "does not hold prod([2, 2]) values",
        ),
    ],
)
def test_wrong_infer_bodies_are_named(outputs, problem):
    assert problem in checks.infer_problem({"outputs": outputs}, 2)


def test_top1_class_id_from_v1_and_v2():
    assert checks.top1_class_id(GOOD_PREDICT) == 281
    assert (
        checks.top1_class_id(GOOD_INFER, 1) == 967
    )  # row 1 of a [2, 2] class_ids tensor starts at 2*1
    assert (
        checks.top1_class_id({"outputs": [{"name": "scores", "datatype": "FP32", "data": [1.0]}]})
        is None
    )


def test_request_id_prefers_the_body_then_the_header():
    assert checks.request_id_of(GOOD_PREDICT, {}) == "abc"
    assert checks.request_id_of(GOOD_INFER, {}) == "r-1"
    assert checks.request_id_of({}, {"X-Request-Id": "h"}) == "h"
    assert checks.request_id_of({}, {}) is None


def test_oip_request_carries_every_image_as_base64():
    body = checks.oip_infer_request([b"one", b"two"])
    tensor = body["inputs"][0]
    assert tensor["shape"] == [2] and tensor["datatype"] == "BYTES"
    assert [base64.b64decode(d) for d in tensor["data"]] == [b"one", b"two"]
    assert tensor["parameters"] == {"content_type": "base64"}


def test_multipart_field_is_file_for_one_and_files_for_several():
    assert [field for field, _ in checks.multipart_files([("a", b"1")])] == ["file"]
    assert [field for field, _ in checks.multipart_files([("a", b"1"), ("b", b"2")])] == [
        "files",
        "files",
    ]
    assert checks.multipart_files([("cat", b"1")])[0][1] == ("cat.jpg", b"1", "image/jpeg")


def test_photos_are_real_jpegs_at_the_asked_size():
    photos = load_photos(320)
    assert [p.name for p in photos] == [name.rsplit(".", 1)[0] for name in PHOTO_CLASSES]
    for photo in photos:
        with Image.open(io.BytesIO(photo.jpeg)) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert max(image.size) == 320 == max(photo.width, photo.height)
        assert all(0 <= class_id < 1000 for class_id in photo.class_ids)
        assert len(photo.class_ids) == len(photo.labels)


def test_feedback_credits_a_plausible_prediction_and_corrects_the_rest():
    cat = next(p for p in load_photos(320) if p.name == "chelsea")
    assert cat.feedback_label(282) == 282  # "tiger cat" is a fair answer for this tabby
    assert cat.feedback_label(967) == 281  # "espresso" is wrong: the truth is sent
    assert cat.feedback_label(None) == 281


def test_too_small_photos_are_refused():
    with pytest.raises(ValueError, match="too small"):
        load_photos(8)


def test_sane_settings_pass():
    assert checks.settings_problems(0.2, 0.3, 1.0) == []


@pytest.mark.parametrize(
    "settings, problem",
    [
        ((1.5, 0.3, 1.0), "--oip-share=1.5 must be between 0 and 1"),
        ((0.2, -0.1, 1.0), "--feedback-share=-0.1 must be between 0 and 1"),
        ((0.2, 0.3, 0.0), "--user-rps=0.0 must be > 0"),
        ((0.2, 0.3, 1.0, 0), "--images-per-request=0 must be 1..64"),
        ((0.2, 0.3, 1.0, 1, 101), "--top-k=101 must be 1..100"),
        ((0.2, 0.3, 1.0, 1, 5, 16), "--image-side=16 must be >= 32"),
    ],
)
def test_bad_settings_are_named(settings, problem):
    assert checks.settings_problems(*settings) == [problem]
