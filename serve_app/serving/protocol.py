"""Open Inference Protocol v2 (the KServe / Triton REST protocol): request parsing, the image inputs
our models accept, and response encoding.

Both the JSON form and the binary tensor data extension are supported: with the
`Inference-Header-Content-Length` header the body is a JSON header followed by raw tensor bytes, in
input order, each input saying its size in `parameters.binary_data_size`. BYTES elements are
length-prefixed (4-byte little-endian) in binary form. `tritonclient[http]` uses the binary form by
default for inputs and outputs.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve_app.errors import BadRequest
from serve_app.serving.request_parsing import check_image_count

NUMPY_DTYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}

IMAGE_INPUT = "image"  # BYTES [N]: encoded images (JPEG, PNG, ...)
PIXELS_INPUT = "pixels"  # FP32 [N, 3, H, W]: preprocessed and normalised
OUTPUT_SCORES = "scores"  # FP32 [N, k]
OUTPUT_CLASS_IDS = "class_ids"  # INT64 [N, k]
OUTPUT_LABELS = "labels"  # BYTES [N, k]
ALL_OUTPUTS = (OUTPUT_SCORES, OUTPUT_CLASS_IDS, OUTPUT_LABELS)


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: Any  # list[bytes] for BYTES, np.ndarray otherwise


@dataclass
class InferRequest:
    id: str | None
    inputs: list[InputTensor]
    requested_outputs: dict[str, bool]  # name -> binary
    parameters: dict[str, Any] = field(default_factory=dict)


def _element_count(shape: list[int]) -> int:
    return int(np.prod(shape)) if shape else 1


def _decode_bytes_json(values: list, content_type: str | None, name: str) -> list[bytes]:
    """BYTES elements from JSON: base64 when `content_type` says so (or when they decode as base64),
    else UTF-8."""
    out = []
    for v in values:
        if not isinstance(v, str):
            raise BadRequest(
                f"input {name!r}: BYTES elements must be strings, got {type(v).__name__}"
            )
        if content_type == "base64":
            try:
                out.append(base64.b64decode(v, validate=True))
            except (binascii.Error, ValueError):
                raise BadRequest(
                    f"input {name!r}: content_type is base64 but an element is not valid base64"
                ) from None
        elif content_type in (None, "str", "string"):
            try:
                # Images cannot travel as raw JSON strings, so clients (KServe's examples among
                # them) send them base64 without saying so.
                out.append(base64.b64decode(v, validate=True))
            except (binascii.Error, ValueError):
                out.append(v.encode("utf-8"))
        else:
            raise BadRequest(
                f"input {name!r}: unsupported content_type {content_type!r} (use base64)"
            )
    return out


def _decode_bytes_binary(raw: bytes, count: int, name: str) -> list[bytes]:
    """BYTES elements from the binary extension: each a 4-byte little-endian length, then the
    bytes."""
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadRequest(f"input {name!r}: binary BYTES data ends inside a length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise BadRequest(
                f"input {name!r}: binary BYTES element of {length} bytes runs past the data"
            )
        out.append(raw[offset : offset + length])
        offset += length
    if len(out) != count:
        raise BadRequest(
            f"input {name!r}: shape says {count} elements, binary data holds {len(out)}"
        )
    return out


def parse_infer_request(body: bytes, header_length: int | None) -> InferRequest:
    """Parse an OIP v2 infer request body (JSON, or JSON header + binary tensor data)."""
    if not body:
        raise BadRequest("empty body: an infer request needs a JSON object with `inputs`")
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length {header_length} is outside the body "
                f"of {len(body)} bytes"
            )
        header_bytes, binary = body[:header_length], body[header_length:]
    else:
        header_bytes, binary = body, b""
    try:
        header = json.loads(header_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the infer request header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise BadRequest("the infer request must be a JSON object")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("`inputs` must be a non-empty list of tensors")

    inputs, offset = [], 0
    for i, t in enumerate(raw_inputs):
        if not isinstance(t, dict):
            raise BadRequest(f"inputs[{i}] must be an object with name, shape, datatype, data")
        name, datatype, shape = t.get("name"), t.get("datatype"), t.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise BadRequest(f"inputs[{i}] needs a string `name` and `datatype`")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise BadRequest(f"input {name!r}: `shape` must be a list of non-negative integers")
        params = t.get("parameters") or {}
        if not isinstance(params, dict):
            raise BadRequest(f"input {name!r}: `parameters` must be an object")
        count = _element_count(shape)
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise BadRequest(
                    f"input {name!r}: binary_data_size {size!r} runs past the binary data"
                )
            raw, offset = binary[offset : offset + size], offset + size
            if datatype == "BYTES":
                data: Any = _decode_bytes_binary(raw, count, name)
            else:
                data = _array_from_binary(raw, datatype, shape, name)
        else:
            values = t.get("data")
            if values is None:
                raise BadRequest(
                    f"input {name!r} has neither `data` nor `parameters.binary_data_size`"
                )
            if datatype == "BYTES":
                flat = _flatten(values)
                if len(flat) != count:
                    raise BadRequest(
                        f"input {name!r}: shape says {count} elements, data holds {len(flat)}"
                    )
                data = _decode_bytes_json(flat, params.get("content_type"), name)
            else:
                data = _array_from_json(values, datatype, shape, name)
        inputs.append(InputTensor(name, datatype, shape, data))
    if offset != len(binary):
        raise BadRequest(
            f"{len(binary) - offset} bytes of binary data are not claimed by any input"
        )

    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("`parameters` must be an object")
    binary_default = bool(parameters.get("binary_data_output", False))
    requested: dict[str, bool] = {}
    raw_outputs = header.get("outputs")
    if raw_outputs is None:
        requested = {name: binary_default for name in ALL_OUTPUTS}
    else:
        if not isinstance(raw_outputs, list):
            raise BadRequest("`outputs` must be a list")
        for o in raw_outputs:
            if not isinstance(o, dict) or o.get("name") not in ALL_OUTPUTS:
                raise BadRequest(f"unknown output {o!r}: available outputs are {list(ALL_OUTPUTS)}")
            requested[o["name"]] = bool(
                (o.get("parameters") or {}).get("binary_data", binary_default)
            )
    request_id = header.get("id")
    return InferRequest(
        str(request_id) if request_id is not None else None, inputs, requested, parameters
    )


def _flatten(values: Any) -> list:
    if isinstance(values, list):
        out = []
        for v in values:
            out.extend(_flatten(v))
        return out
    return [values]


def _dtype(datatype: str, name: str) -> np.dtype:
    try:
        return np.dtype(NUMPY_DTYPES[datatype])
    except KeyError:
        raise BadRequest(f"input {name!r}: unsupported datatype {datatype!r}") from None


def _array_from_binary(raw: bytes, datatype: str, shape: list[int], name: str) -> np.ndarray:
    dtype = _dtype(datatype, name)
    expected = _element_count(shape) * dtype.itemsize
    if len(raw) != expected:
        raise BadRequest(
            f"input {name!r}: {datatype}{shape} needs {expected} bytes, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)


def _array_from_json(values: Any, datatype: str, shape: list[int], name: str) -> np.ndarray:
    dtype = _dtype(datatype, name)
    flat = _flatten(values)
    if len(flat) != _element_count(shape):
        raise BadRequest(
            f"input {name!r}: shape {shape} needs {_element_count(shape)} values, got {len(flat)}"
        )
    try:
        return np.asarray(flat, dtype=dtype).reshape(shape)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"input {name!r}: values are not {datatype}: {exc}") from None


def _bytes_binary(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: dict[str, tuple[str, list[int], Any]],
    requested: dict[str, bool],
) -> tuple[bytes, dict[str, str]]:
    """Encode outputs (name -> (datatype, shape, data)) as JSON, or JSON header + binary where
    requested."""
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        header["id"] = request_id
    tensors, blobs = [], []
    for name, binary in requested.items():
        datatype, shape, data = outputs[name]
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            if datatype == "BYTES":
                blob = _bytes_binary(
                    [d if isinstance(d, bytes) else str(d).encode() for d in _flatten(data)]
                )
            else:
                blob = (
                    np.ascontiguousarray(np.asarray(data, dtype=NUMPY_DTYPES[datatype]))
                    .astype("<" + np.dtype(NUMPY_DTYPES[datatype]).str[1:])
                    .tobytes()
                )
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            flat = _flatten(np.asarray(data).tolist() if datatype != "BYTES" else data)
            tensor["data"] = [d.decode() if isinstance(d, bytes) else d for d in flat]
        tensors.append(tensor)
    header["outputs"] = tensors
    header_bytes = json.dumps(header).encode()
    if not blobs:
        return header_bytes, {"Content-Type": "application/json"}
    return header_bytes + b"".join(blobs), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header_bytes)),
    }


def model_metadata(info: dict, platform: str) -> dict:
    """The /v2/models/{name} metadata document."""
    c, h, w = info["input"]["shape"]
    return {
        "name": info["name"],
        "versions": [info["version"]],
        "platform": platform,
        "inputs": [
            {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
            {"name": PIXELS_INPUT, "datatype": "FP32", "shape": [-1, c, h, w]},
        ],
        "outputs": [
            {"name": OUTPUT_SCORES, "datatype": "FP32", "shape": [-1, -1]},
            {"name": OUTPUT_CLASS_IDS, "datatype": "INT64", "shape": [-1, -1]},
            {"name": OUTPUT_LABELS, "datatype": "BYTES", "shape": [-1, -1]},
        ],
    }


def parse_header_length(raw: str | None) -> int | None:
    """The Inference-Header-Content-Length header as a number (None when absent)."""
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length {raw!r} is not a number") from None


def images_from_tensors(inputs: list[InputTensor], crop: int, max_images: int) -> list:
    """Encoded images from BYTES inputs and preprocessed rows from FP32 inputs, checked for
    shape and count."""
    images: list = []
    for t in inputs:
        if t.datatype == "BYTES":
            if t.name != IMAGE_INPUT and len(inputs) > 1:
                raise BadRequest(f"unknown input {t.name!r}: use {IMAGE_INPUT!r} (BYTES)")
            images.extend(t.data)
        elif t.datatype == "FP32":
            if len(t.shape) != 4 or t.shape[1:] != [3, crop, crop]:
                raise BadRequest(
                    f"input {t.name!r}: FP32 input must have shape [N, 3, {crop}, {crop}], "
                    f"got {t.shape}"
                )
            if not np.isfinite(t.data).all():
                raise BadRequest(f"input {t.name!r}: FP32 data contains NaN or infinity")
            images.extend(np.ascontiguousarray(row, dtype=np.float32) for row in t.data)
        else:
            raise BadRequest(
                f"input {t.name!r}: datatype {t.datatype} is not accepted; "
                f"send BYTES `image` or FP32 `pixels`"
            )
        check_image_count(len(images), max_images)
    if not images:
        raise BadRequest("the request holds no images")
    if any(len(i) == 0 for i in images if isinstance(i, bytes)):
        raise BadRequest("an image element is empty")
    return images
