"""What a REST request carries: its body within the byte limit, its encoded images, its top_k.

Only what can be checked without decoding is checked here (sizes, counts, content types, base64):
the Recognizer decodes the images beside its inference thread.
"""

import base64
import binascii
import json
from typing import Any

from fastapi import Request

from serve_app.config import LimitsConfig
from serve_app.errors import BadRequest, PayloadTooLarge, UnprocessableEntity, UnsupportedMediaType


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) past `limit` bytes without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(
                    f"the body is {int(declared)} bytes, over the limit of {limit}"
                )
        except ValueError:
            raise BadRequest(f"Content-Length {declared!r} is not a number") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    # Starlette's form() and json() re-read the cached body instead of the consumed stream.
    request._body = body
    return body


def decode_json(body: bytes) -> Any:
    """The JSON document of a body (None when empty), refused (400) when it is not JSON."""
    if not body:
        return None
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be a base64 string")
    if value.startswith("data:") and "," in value:  # data URLs from browsers
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where} is not valid base64") from None


async def images_from_request(request: Request, body: bytes) -> tuple[list[bytes], dict]:
    """Encoded images and extra fields from a multipart upload, a raw image body, or JSON with
    base64."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not body:
        raise BadRequest(
            "empty body: send an image (multipart `file`, raw image/*, or JSON base64 `images`)"
        )
    if content_type == "multipart/form-data":
        try:
            form = await request.form()
        except Exception as exc:
            raise BadRequest(f"malformed multipart body: {exc}") from None
        images, fields = [], {}
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                images.append(await value.read())
            else:
                fields[key] = value
        if not images:
            raise BadRequest(
                "the multipart body has no file parts: upload the image as a file field `file`"
            )
        return images, fields
    if content_type == "application/json":
        doc = decode_json(body)
        if not isinstance(doc, dict):
            raise BadRequest('the JSON body must be an object like {"images": ["<base64>"]}')
        raw = doc.get("images", [doc["image"]] if "image" in doc else None)
        if not isinstance(raw, list) or not raw:
            raise BadRequest('the JSON body needs "images": a non-empty list of base64 strings')
        images = [_b64(v, f"images[{i}]") for i, v in enumerate(raw)]
        return images, {k: v for k, v in doc.items() if k not in ("images", "image")}
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        return [body], {}
    raise UnsupportedMediaType(
        f"content type {content_type or '(none)'!r} is not accepted: use multipart/form-data, "
        f"image/*, application/octet-stream or application/json"
    )


def parse_top_k(raw: Any, limits: LimitsConfig) -> int:
    """The requested top_k (the default when absent), refused (422) unless 1..max_top_k."""
    if raw is None or raw == "":
        return limits.default_top_k
    try:
        k = int(raw)
    except (TypeError, ValueError):
        raise UnprocessableEntity(f"top_k must be an integer, got {raw!r}") from None
    if not 1 <= k <= limits.max_top_k:
        raise UnprocessableEntity(f"top_k must be between 1 and {limits.max_top_k}, got {k}")
    return k


def check_image_count(count: int, limit: int) -> None:
    """Refuse (413) a request carrying more than `limit` images."""
    if count > limit:
        raise PayloadTooLarge(f"{count} images in one request, over the limit of {limit}")
