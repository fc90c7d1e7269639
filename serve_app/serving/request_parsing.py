"""What a REST request carries: its body within the byte limit, its JSON within the nesting
limit, its encoded images, its top_k, its client request id.

Only what can be checked without decoding is checked here (sizes, counts, content types, base64):
the Recognizer decodes the images beside its inference thread. Every refusal is a 4xx whose
message names the field and the limit; nothing a client sends reaches a 500.
"""

import asyncio
import base64
import binascii
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request
from starlette.exceptions import HTTPException

from serve_app.config import LimitsConfig
from serve_app.errors import BadRequest, PayloadTooLarge, UnprocessableEntity, UnsupportedMediaType
from serve_app.request_ids import request_id_problem

# Bodies over this many bytes are parsed in a worker thread, so a 20 MB JSON document does not
# hold every other request of the replica behind ~100 ms of parsing on the event loop.
PARSE_IN_THREAD_BYTES = 256 * 1024
# Non-file parts a multipart upload may carry besides its images (top_k and a few spare).
MAX_FORM_FIELDS = 16
# Client values quoted in an error message are cut to this many characters.
SHOWN_CHARS = 60
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,12}")
# Escapes of a UTF-16 surrogate; only a body holding one can decode to a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")

T = TypeVar("T")


def shown(value: Any) -> str:
    """A client value as an error message quotes it: its repr, cut to SHOWN_CHARS."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def is_decimal(text: str) -> bool:
    """True for a header value that is a plain non-negative decimal number of at most 18 digits."""
    text = text.strip()
    return text.isascii() and text.isdigit() and len(text) <= 18


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) past `limit` bytes without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not is_decimal(declared):
            raise BadRequest(f"Content-Length {shown(declared)} is not a number")
        if int(declared) > limit:
            raise PayloadTooLarge(f"the body is {int(declared)} bytes, over the limit of {limit}")
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


def _refuse_constant(name: str) -> Any:
    raise BadRequest(f"the JSON body holds {name}, which is not a JSON number")


def nests_deeper_than(doc: Any, max_depth: int) -> bool:
    """True when arrays and objects in `doc` nest more than `max_depth` levels (iteratively)."""
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        if depth > max_depth:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def decode_json(body: bytes, max_depth: int) -> Any:
    """The JSON document of a body (None when empty); 400 when it is not JSON, holds NaN or
    Infinity or a lone surrogate, or nests deeper than `max_depth`."""
    if not body:
        return None
    too_deep = f"the JSON body nests deeper than the limit of {max_depth} levels"
    try:
        doc = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:  # json's C scanner stops at the interpreter's recursion limit
        raise BadRequest(too_deep) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    # Each level needs its own bracket, so a body with few brackets cannot nest deeply.
    if body.count(b"[") + body.count(b"{") > max_depth and nests_deeper_than(doc, max_depth):
        raise BadRequest(too_deep)
    if _SURROGATE_ESCAPE.search(body):
        try:
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(
                "the JSON body holds a lone UTF-16 surrogate escape, which is not text"
            ) from None
    return doc


async def parse_off_loop(size: int, parse: Callable[..., T], *args: Any) -> T:
    """`parse(*args)`, in a worker thread when the body is over PARSE_IN_THREAD_BYTES."""
    if size > PARSE_IN_THREAD_BYTES:
        return await asyncio.to_thread(parse, *args)
    return parse(*args)


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be a base64 string, got {type(value).__name__}")
    if value.startswith("data:") and "," in value:  # data URLs from browsers
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where} is not valid base64") from None


def images_from_json(body: bytes, limits: LimitsConfig) -> tuple[list[bytes], dict]:
    """Encoded images and the other fields of a JSON predict body, counted before decoding."""
    doc = decode_json(body, limits.max_json_depth)
    if not isinstance(doc, dict):
        raise BadRequest('the JSON body must be an object like {"images": ["<base64>"]}')
    raw = doc.get("images", [doc["image"]] if "image" in doc else None)
    if not isinstance(raw, list) or not raw:
        raise BadRequest('the JSON body needs "images": a non-empty list of base64 strings')
    check_image_count(len(raw), limits.max_images_per_request)
    images = [_b64(v, f"images[{i}]") for i, v in enumerate(raw)]
    return images, {k: v for k, v in doc.items() if k not in ("images", "image")}


async def _images_from_form(request: Request, limits: LimitsConfig) -> tuple[list[bytes], dict]:
    limit = limits.max_images_per_request
    try:
        form = await request.form(max_files=limit, max_fields=MAX_FORM_FIELDS)
    except HTTPException as exc:  # Starlette's words for a multipart body it cannot parse
        if str(exc.detail).startswith("Too many files"):
            raise PayloadTooLarge(
                f"more than {limit} files in one request, over the limit of {limit} images"
            ) from None
        if str(exc.detail).startswith("Too many fields"):
            raise BadRequest(
                f"more than {MAX_FORM_FIELDS} non-file fields in the multipart body, over the "
                f"limit of {MAX_FORM_FIELDS}"
            ) from None
        raise BadRequest(f"malformed multipart body: {exc.detail}") from None
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


async def images_from_request(
    request: Request, body: bytes, limits: LimitsConfig
) -> tuple[list[bytes], dict]:
    """Encoded images and extra fields from a multipart upload, a raw image body, or JSON with
    base64."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not body:
        raise BadRequest(
            "empty body: send an image (multipart `file`, raw image/*, or JSON base64 `images`)"
        )
    if content_type == "multipart/form-data":
        return await _images_from_form(request, limits)
    if content_type == "application/json":
        return await parse_off_loop(len(body), images_from_json, body, limits)
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        return [body], {}
    raise UnsupportedMediaType(
        f"content type {shown(content_type or '(none)')} is not accepted: use "
        f"multipart/form-data, image/*, application/octet-stream or application/json"
    )


def parse_top_k(raw: Any, limits: LimitsConfig) -> int:
    """The requested top_k (the default when absent), refused (422) unless an integer in
    1..max_top_k."""
    if raw is None or raw == "":
        return limits.default_top_k
    if isinstance(raw, int) and not isinstance(raw, bool):
        k = raw
    elif isinstance(raw, float) and raw.is_integer():  # 5.0 from JSON; never NaN or infinity
        k = int(raw)
    elif isinstance(raw, str) and _INTEGER_TEXT.fullmatch(raw.strip()):
        k = int(raw)
    else:
        raise UnprocessableEntity(f"top_k must be an integer, got {shown(raw)}")
    if not 1 <= k <= limits.max_top_k:
        raise UnprocessableEntity(f"top_k must be between 1 and {limits.max_top_k}, got {k}")
    return k


def check_image_count(count: int, limit: int) -> None:
    """Refuse (413) a request carrying more than `limit` images."""
    if count > limit:
        raise PayloadTooLarge(f"{count} images in one request, over the limit of {limit}")


def check_client_request_id(value: str | None) -> None:
    """Refuse (400) a client's X-Request-Id that is too long or holds unsafe characters; an
    absent or empty one lets the service choose the id."""
    if value:
        problem = request_id_problem(value)
        if problem is not None:
            raise BadRequest(f"X-Request-Id {problem}")
