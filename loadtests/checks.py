"""Request bodies and response checks for the load test, kept free of locust so they are unit-tested
directly."""

from __future__ import annotations

import base64
import math
from typing import Any, Mapping, Sequence

# Status the service (or Serve's proxy) answers when it sheds load; counted apart from failures.
SHED_STATUS = 503

PREDICT_NAME = "/v1/models/[name]/predict"
INFER_NAME = "/v2/models/[name]/infer"
FEEDBACK_NAME = "/v1/feedback"
SHED_NAME = "shed (503)"
SHED_TYPE = "SHED"


def status_outcome(status: int) -> str:
    """'ok' for 2xx, 'shed' for the load-shedding 503, 'failure' for anything else (0 = no
    response)."""
    if 200 <= status < 300:
        return "ok"
    if status == SHED_STATUS:
        return "shed"
    return "failure"


def settings_problems(
    oip_share: float,
    feedback_share: float,
    user_rps: float,
    images_per_request: int = 1,
    top_k: int = 5,
    image_side: int = 640,
) -> list[str]:
    """Settings that would make the numbers meaningless, each with its allowed range."""
    problems = []
    for name, share in (("oip-share", oip_share), ("feedback-share", feedback_share)):
        if not 0.0 <= share <= 1.0:
            problems.append(f"--{name}={share} must be between 0 and 1")
    if not user_rps > 0:
        problems.append(f"--user-rps={user_rps} must be > 0")
    if not 1 <= images_per_request <= 64:
        problems.append(f"--images-per-request={images_per_request} must be 1..64")
    if not 1 <= top_k <= 100:
        problems.append(f"--top-k={top_k} must be 1..100")
    if image_side < 32:
        problems.append(f"--image-side={image_side} must be >= 32")
    return problems


def oip_infer_request(images: Sequence[bytes]) -> dict[str, Any]:
    """Open Inference Protocol v2 JSON body carrying encoded images as one BYTES tensor."""
    return {
        "inputs": [
            {
                "name": "image",
                "shape": [len(images)],
                "datatype": "BYTES",
                "data": [base64.b64encode(image).decode("ascii") for image in images],
                "parameters": {"content_type": "base64"},
            }
        ]
    }


def multipart_files(
    images: Sequence[tuple[str, bytes]],
) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart parts for /v1 predict: field `file` for one image, `files` for several."""
    field = "file" if len(images) == 1 else "files"
    return [(field, (f"{name}.jpg", data, "image/jpeg")) for name, data in images]


def predict_problem(body: Any, expected_images: int) -> str | None:
    """What is wrong with a /v1 predict response body, or None when it has the contract's shape."""
    if not isinstance(body, Mapping):
        return f"body is {type(body).__name__}, expected a JSON object"
    if not isinstance(body.get("request_id"), str) or not body["request_id"]:
        return "missing request_id"
    predictions = body.get("predictions")
    if not isinstance(predictions, list):
        return "missing predictions list"
    if len(predictions) != expected_images:
        return f"{len(predictions)} predictions for {expected_images} images"
    for number, prediction in enumerate(predictions):
        top_k = prediction.get("top_k") if isinstance(prediction, Mapping) else None
        if not isinstance(top_k, list) or not top_k:
            return f"prediction {number} has no top_k list"
        for entry in top_k:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("class_id"), int):
                return f"prediction {number} has a top_k entry without an integer class_id"
            score = entry.get("score")
            if not isinstance(score, (int, float)) or not (
                math.isfinite(score) and 0.0 <= score <= 1.0
            ):
                return f"prediction {number} has score {score!r} outside 0..1"
    return None


def _flat_length(data: Any) -> int:
    if isinstance(data, list):
        return sum(_flat_length(item) for item in data)
    return 1


def infer_problem(body: Any, expected_images: int) -> str | None:
    """What is wrong with an OIP v2 infer response body, or None when its tensors are well
    formed."""
    if not isinstance(body, Mapping):
        return f"body is {type(body).__name__}, expected a JSON object"
    outputs = body.get("outputs")
    if not isinstance(outputs, list) or not outputs:
        return "missing outputs list"
    for output in outputs:
        if not isinstance(output, Mapping):
            return "an output is not an object"
        name = output.get("name")
        shape = output.get("shape")
        if not isinstance(name, str) or not isinstance(output.get("datatype"), str):
            return "an output lacks name or datatype"
        if (
            not isinstance(shape, list)
            or not shape
            or not all(isinstance(d, int) and d >= 0 for d in shape)
        ):
            return f"output {name} has shape {shape!r}, expected a list of sizes"
        if shape[0] != expected_images:
            return f"output {name} has {shape[0]} rows for {expected_images} images"
        data = output.get("data")
        if not isinstance(data, list) or _flat_length(data) != math.prod(shape):
            return f"output {name} data does not hold prod({shape}) values"
    return None


def top1_class_id(body: Mapping[str, Any], index: int = 0) -> int | None:
    """Top-1 class id of image `index` from a /v1 predict body (or from an OIP output named like
    class ids)."""
    predictions = body.get("predictions")
    if isinstance(predictions, list) and index < len(predictions):
        top_k = predictions[index].get("top_k") or [{}]
        class_id = top_k[0].get("class_id")
        return class_id if isinstance(class_id, int) else None
    for output in body.get("outputs") or []:
        if "class" in str(output.get("name", "")) and output.get("datatype", "").startswith(
            ("INT", "UINT")
        ):
            shape, data = output.get("shape") or [0], output.get("data") or []
            per_image = math.prod(shape[1:]) if len(shape) > 1 else 1
            flat = (
                data
                if not data or not isinstance(data[0], list)
                else [v for row in data for v in row]
            )
            position = index * per_image
            return int(flat[position]) if position < len(flat) else None
    return None


def request_id_of(body: Mapping[str, Any], headers: Mapping[str, str]) -> str | None:
    """The request id to send feedback with: body `request_id` (v1), body `id` (v2) or the
    X-Request-Id header."""
    for value in (body.get("request_id"), body.get("id"), headers.get("X-Request-Id")):
        if isinstance(value, str) and value:
            return value
    return None
