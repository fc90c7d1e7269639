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
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve_app.config import LimitsConfig
from serve_app.errors import BadRequest, PayloadTooLarge
from serve_app.quality.wire import is_int
from serve_app.serving.request_parsing import check_image_count, decode_json, is_decimal, shown

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
MAX_DIMS = 8  # the most dimensions an input shape may have


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
    return math.prod(shape)  # exact: numpy's prod wraps around on enormous shapes


def _shape(raw: Any, where: str, max_elements: int) -> list[int]:
    """A tensor's shape: non-negative integer dimensions whose element count is within the limit,
    checked before anything is allocated for it."""
    if not isinstance(raw, list):
        raise BadRequest(f"{where}.shape must be a list of non-negative integers")
    if len(raw) > MAX_DIMS:
        raise BadRequest(f"{where}.shape has {len(raw)} dimensions, over the limit of {MAX_DIMS}")
    for d, dim in enumerate(raw):
        if not is_int(dim) or dim < 0:
            raise BadRequest(f"{where}.shape[{d}] must be a non-negative integer, got {shown(dim)}")
    count = _element_count(raw)
    if count > max_elements:
        raise PayloadTooLarge(
            f"{where}.shape {shown(raw)} declares {count} elements, over the limit of "
            f"{max_elements}"
        )
    return raw


def _decode_bytes_json(values: list, content_type: Any, where: str) -> list[bytes]:
    """BYTES elements from JSON: base64 when `content_type` says so (or when they decode as base64),
    else UTF-8."""
    if content_type not in (None, "base64", "str", "string"):
        raise BadRequest(
            f"{where}.parameters.content_type {shown(content_type)} is not supported (use base64)"
        )
    out = []
    for e, v in enumerate(values):
        if not isinstance(v, str):
            raise BadRequest(f"{where}.data[{e}]: BYTES elements must be strings, got {shown(v)}")
        if content_type == "base64":
            try:
                out.append(base64.b64decode(v, validate=True))
            except (binascii.Error, ValueError):
                raise BadRequest(
                    f"{where}.data[{e}]: content_type is base64 but the element is not valid base64"
                ) from None
        else:
            try:
                # Images cannot travel as raw JSON strings, so clients (KServe's examples among
                # them) send them base64 without saying so.
                out.append(base64.b64decode(v, validate=True))
            except (binascii.Error, ValueError):
                out.append(v.encode("utf-8"))  # decode_json has refused lone surrogates
    return out


def _decode_bytes_binary(raw: bytes, count: int, where: str) -> list[bytes]:
    """BYTES elements from the binary extension: each a 4-byte little-endian length, then the
    bytes."""
    out, offset = [], 0
    while offset < len(raw) and len(out) <= count:
        if offset + 4 > len(raw):
            raise BadRequest(f"{where}: binary BYTES data ends inside a length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise BadRequest(f"{where}: binary BYTES element of {length} bytes runs past the data")
        out.append(raw[offset : offset + length])
        offset += length
    if len(out) != count or offset != len(raw):
        held = f"{len(out)}" if offset == len(raw) else f"more than {count}"
        raise BadRequest(f"{where}: shape says {count} elements, binary data holds {held}")
    return out


def parse_infer_request(
    body: bytes, header_length: int | None, limits: LimitsConfig | None = None
) -> InferRequest:
    """Parse an OIP v2 infer request body (JSON, or JSON header + binary tensor data), every
    count and size checked against `limits` (the config's defaults when None) before use."""
    limits = limits or LimitsConfig()
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
    header = decode_json(header_bytes, limits.max_json_depth)
    if not isinstance(header, dict):
        raise BadRequest("the infer request must be a JSON object")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("`inputs` must be a non-empty list of tensors")
    check_input_count(len(raw_inputs), limits)
    inputs, offset = [], 0
    for i, raw in enumerate(raw_inputs):
        tensor, offset = _parse_input(f"inputs[{i}]", raw, binary, offset, limits)
        inputs.append(tensor)
    if offset != len(binary):
        raise BadRequest(
            f"{len(binary) - offset} bytes of binary data are not claimed by any input"
        )
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("`parameters` must be an object")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f"`id` must be a string, got {type(request_id).__name__}")
    requested = requested_outputs(header.get("outputs"), bool(parameters.get("binary_data_output")))
    return InferRequest(request_id, inputs, requested, parameters)


def check_input_count(count: int, limits: LimitsConfig) -> None:
    """Refuse (413) more input tensors than a request may carry images."""
    if count > limits.max_images_per_request:
        raise PayloadTooLarge(
            f"`inputs` holds {count} tensors, over the limit of "
            f"{limits.max_images_per_request} (each tensor carries at least one image)"
        )


def tensor_shape(where: str, datatype: str, raw_shape: Any, limits: LimitsConfig) -> list[int]:
    """An input's datatype and shape checked against the limits before any of its data is read:
    the one check of both the HTTP and the gRPC form."""
    if datatype != "BYTES" and datatype not in NUMPY_DTYPES:
        raise BadRequest(
            f"{where}.datatype: unsupported datatype {shown(datatype)}; known: "
            f"{['BYTES', *NUMPY_DTYPES]}"
        )
    shape = _shape(raw_shape, where, limits.max_tensor_elements)
    count = _element_count(shape)
    if datatype == "BYTES" and count > limits.max_images_per_request:
        raise PayloadTooLarge(
            f"{where}.shape {shape} declares {count} images, over the limit of "
            f"{limits.max_images_per_request}"
        )
    return shape


def tensor_from_raw(
    where: str, name: str, datatype: str, shape: list[int], raw: bytes
) -> InputTensor:
    """A tensor from its raw bytes (HTTP's binary extension, gRPC's raw_input_contents): BYTES
    elements length-prefixed, numbers little-endian."""
    if datatype == "BYTES":
        return InputTensor(
            name, datatype, shape, _decode_bytes_binary(raw, _element_count(shape), where)
        )
    return InputTensor(name, datatype, shape, _array_from_binary(raw, datatype, shape, where))


def tensor_from_values(
    where: str,
    name: str,
    datatype: str,
    shape: list[int],
    flat: list,
    decode_bytes: Callable[[list], list[bytes]] = list,
) -> InputTensor:
    """A tensor from its flat element values (HTTP's JSON `data`, gRPC's typed contents), each
    checked against the datatype; `decode_bytes` turns BYTES elements into bytes."""
    count = _element_count(shape)
    if len(flat) != count:
        raise BadRequest(f"{where}: shape says {count} elements, data holds {len(flat)}")
    if datatype == "BYTES":
        return InputTensor(name, datatype, shape, decode_bytes(flat))
    return InputTensor(name, datatype, shape, _array_from_json(flat, datatype, shape, where))


def _parse_input(
    where: str, t: Any, binary: bytes, offset: int, limits: LimitsConfig
) -> tuple[InputTensor, int]:
    """One input tensor from its JSON object, and the offset of the next input's binary data."""
    if not isinstance(t, dict):
        raise BadRequest(f"{where} must be an object with name, shape, datatype, data")
    name, datatype = t.get("name"), t.get("datatype")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise BadRequest(f"{where} needs a string `name` and `datatype`")
    shape = tensor_shape(where, datatype, t.get("shape"), limits)
    params = t.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest(f"{where}.parameters must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if not is_int(size) or size < 0 or offset + size > len(binary):
            raise BadRequest(
                f"{where}.parameters.binary_data_size {shown(size)} runs past the "
                f"{len(binary)} bytes of binary data"
            )
        raw, offset = binary[offset : offset + size], offset + size
        return tensor_from_raw(where, name, datatype, shape, raw), offset
    values = t.get("data")
    if values is None:
        raise BadRequest(f"{where} has neither `data` nor `parameters.binary_data_size`")
    content_type = params.get("content_type")
    return tensor_from_values(
        where,
        name,
        datatype,
        shape,
        _flatten(values),
        lambda flat: _decode_bytes_json(flat, content_type, where),
    ), offset


def requested_outputs(raw_outputs: Any, binary_default: bool) -> dict[str, bool]:
    """Output name -> binary, from the request's `outputs` (every output when absent)."""
    if raw_outputs is None:
        return {name: binary_default for name in ALL_OUTPUTS}
    if not isinstance(raw_outputs, list):
        raise BadRequest("`outputs` must be a list")
    requested: dict[str, bool] = {}
    for j, o in enumerate(raw_outputs):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise BadRequest(f"outputs[{j}] must be an object with a string `name`")
        if o["name"] not in ALL_OUTPUTS:
            raise BadRequest(
                f"outputs[{j}]: unknown output {shown(o['name'])}: available outputs are "
                f"{list(ALL_OUTPUTS)}"
            )
        params = o.get("parameters") or {}
        if not isinstance(params, dict):
            raise BadRequest(f"outputs[{j}].parameters must be an object")
        requested[o["name"]] = bool(params.get("binary_data", binary_default))
    return requested


def _flatten(values: Any) -> list:
    """Nested lists as one flat list (the JSON depth limit bounds the recursion)."""
    if isinstance(values, list):
        out = []
        for v in values:
            out.extend(_flatten(v))
        return out
    return [values]


def _array_from_binary(raw: bytes, datatype: str, shape: list[int], where: str) -> np.ndarray:
    dtype = np.dtype(NUMPY_DTYPES[datatype])
    expected = _element_count(shape) * dtype.itemsize
    if len(raw) != expected:
        raise BadRequest(f"{where}: {datatype}{shape} needs {expected} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)


def _array_from_json(flat: list, datatype: str, shape: list[int], where: str) -> np.ndarray:
    """A numeric tensor from its flattened JSON values: each of the datatype's kind, finite and
    within its range, or 400 naming the first element that is not."""
    dtype = np.dtype(NUMPY_DTYPES[datatype])
    if dtype.kind == "b":
        accepted: tuple[type, ...] = (bool,)
    elif dtype.kind in "iu":
        accepted = (int,)
    else:
        accepted = (int, float)
    for e, v in enumerate(flat):
        if type(v) not in accepted:
            raise BadRequest(f"{where}.data[{e}] is not {datatype}: got {shown(v)}")
    try:
        wide = np.asarray(flat, dtype=np.float64 if dtype.kind == "f" else np.int64)
    except OverflowError:
        wide = None
    if dtype.kind == "f":
        with np.errstate(over="ignore"):  # values past FP16/FP32's range become inf, refused below
            arr = wide.astype(dtype) if wide is not None else None
        bad = None if arr is None else np.flatnonzero(~np.isfinite(arr))
        if arr is None or bad.size:
            first = _first_out_of_range(flat, dtype) if arr is None else int(bad[0])
            raise BadRequest(f"{where}.data[{first}] is not a finite {datatype} number")
        return arr.reshape(shape)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        outside = None if wide is None else np.flatnonzero((wide < info.min) | (wide > info.max))
        if wide is None or outside.size:
            first = _first_out_of_range(flat, dtype) if wide is None else int(outside[0])
            raise BadRequest(
                f"{where}.data[{first}] is outside the {datatype} range {info.min}..{info.max}"
            )
    return wide.astype(dtype).reshape(shape)


def _first_out_of_range(flat: list, dtype: np.dtype) -> int:
    """The index of the first value too large for a 64-bit number of `dtype`'s kind."""
    # Python numbers, so that the comparison is exact (numpy's would convert a huge int first).
    bound = float(np.finfo(np.float64).max) if dtype.kind == "f" else int(np.iinfo(np.int64).max)
    return next(i for i, v in enumerate(flat) if abs(v) > bound)


def _bytes_binary(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def tensor_bytes(datatype: str, data: Any) -> bytes:
    """An output tensor's raw bytes (HTTP's binary extension, gRPC's raw_output_contents)."""
    if datatype == "BYTES":
        return _bytes_binary(
            [d if isinstance(d, bytes) else str(d).encode() for d in _flatten(data)]
        )
    dtype = np.dtype(NUMPY_DTYPES[datatype])
    return (
        np.ascontiguousarray(np.asarray(data, dtype=dtype))
        .astype(dtype.newbyteorder("<"))
        .tobytes()
    )


def prediction_outputs(
    predictions: list[dict], labels: list[str], k: int
) -> dict[str, tuple[str, list[int], Any]]:
    """The Recognizer's top-k predictions as the OIP outputs, name -> (datatype, shape, data)."""
    n = len(predictions)
    return {
        OUTPUT_SCORES: ("FP32", [n, k], [p["scores"] for p in predictions]),
        OUTPUT_CLASS_IDS: ("INT64", [n, k], [p["class_ids"] for p in predictions]),
        OUTPUT_LABELS: (
            "BYTES",
            [n, k],
            [labels[c].encode() for p in predictions for c in p["class_ids"]],
        ),
    }


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
            blob = tensor_bytes(datatype, data)
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
    if not is_decimal(raw):
        raise BadRequest(f"Inference-Header-Content-Length {shown(raw)} is not a number")
    return int(raw)


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
