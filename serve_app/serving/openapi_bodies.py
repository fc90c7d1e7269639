"""The request bodies of the routes as OpenAPI sees them.

The predict, feedback and infer routes read their bodies themselves (to bound them before parsing),
so FastAPI cannot infer a schema; these documents give /docs an upload form and give a
schema-driven fuzzer (tests/integration/test_fuzz_api.py) the bodies to generate. The limits
themselves live in the `limits` config section and are enforced by the parsers, not here.
"""

from __future__ import annotations

from typing import Any

from serve_app.request_ids import MAX_REQUEST_ID_CHARS, REQUEST_ID_CHARS, REQUEST_ID_PATTERN

_TOP_K = {
    "type": "integer",
    "minimum": 1,
    "description": "How many classes to return (limits.max_top_k at most; default "
    "limits.default_top_k).",
}
_BINARY = {"type": "string", "format": "binary"}

PREDICT: dict[str, Any] = {
    "parameters": [
        {
            "name": "top_k",
            "in": "query",
            "required": False,
            "schema": _TOP_K,
            "description": "top_k as a query parameter; it wins over a body field.",
        }
    ],
    "requestBody": {
        "required": True,
        "description": "One or several images (limits.max_images_per_request at most) as a "
        "multipart upload, a raw image body, or base64 strings in JSON.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": _BINARY,
                        "files": {"type": "array", "items": _BINARY},
                        "top_k": _TOP_K,
                    },
                }
            },
            "image/jpeg": {"schema": _BINARY},
            "image/png": {"schema": _BINARY},
            "application/octet-stream": {"schema": _BINARY},
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "properties": {
                        "images": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "string", "format": "byte"},
                            "description": "Encoded images, base64 (data: URLs accepted).",
                        },
                        "top_k": _TOP_K,
                    },
                }
            },
        },
    },
}

_FEEDBACK_ITEM = {
    "type": "object",
    "required": ["request_id", "label"],
    "properties": {
        "request_id": {
            "type": "string",
            "description": "The X-Request-Id of the prediction (64 characters at most).",
        },
        "label": {
            "oneOf": [{"type": "string"}, {"type": "integer", "minimum": 0}],
            "description": "The true class: its name or its class id.",
        },
        "index": {
            "type": "integer",
            "minimum": 0,
            "default": 0,
            "description": "Which image of a multi-image request.",
        },
    },
}

FEEDBACK: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One item, or a batch under `items` (limits.max_feedback_items at most).",
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        _FEEDBACK_ITEM,
                        {
                            "type": "object",
                            "required": ["items"],
                            "properties": {
                                "items": {"type": "array", "minItems": 1, "items": _FEEDBACK_ITEM}
                            },
                        },
                    ]
                }
            }
        },
    }
}

_TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string", "description": "`image` (BYTES) or `pixels` (FP32)."},
        "datatype": {
            "type": "string",
            "enum": ["BYTES", "FP32", "FP16", "FP64", "INT8", "INT32", "INT64", "UINT8", "BOOL"],
        },
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "data": {"type": "array", "description": "Values, flat or nested, in row-major order."},
        "parameters": {
            "type": "object",
            "properties": {
                "content_type": {"type": "string", "enum": ["base64", "str", "string"]},
                "binary_data_size": {"type": "integer", "minimum": 0},
            },
        },
    },
}

INFER: dict[str, Any] = {
    "parameters": [
        {
            "name": "Inference-Header-Content-Length",
            "in": "header",
            "required": False,
            "schema": {"type": "integer", "minimum": 0},
            "description": "Binary tensor extension: the JSON header's length in bytes; the "
            "tensor bytes follow it.",
        }
    ],
    "requestBody": {
        "required": True,
        "description": "An Open Inference Protocol v2 infer request.",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "inputs": {"type": "array", "minItems": 1, "items": _TENSOR},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {
                                        "type": "string",
                                        "enum": ["scores", "class_ids", "labels"],
                                    },
                                    "parameters": {
                                        "type": "object",
                                        "properties": {"binary_data": {"type": "boolean"}},
                                    },
                                },
                            },
                        },
                        "parameters": {
                            "type": "object",
                            "properties": {
                                "top_k": _TOP_K,
                                "binary_data_output": {"type": "boolean"},
                            },
                        },
                    },
                }
            },
            "application/octet-stream": {"schema": _BINARY},
        },
    },
}

# The client's request id; the ingress refuses one the service would not issue.
REQUEST_ID_HEADER: dict[str, Any] = {
    "name": "X-Request-Id",
    "in": "header",
    "required": False,
    "schema": {
        "type": "string",
        "maxLength": MAX_REQUEST_ID_CHARS,
        "pattern": f"^{REQUEST_ID_PATTERN}$",
    },
    "description": f"The client's id for the request: at most {MAX_REQUEST_ID_CHARS} "
    f"characters, {REQUEST_ID_CHARS}; the service makes one when absent.",
}


def with_request_id(extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` with the X-Request-Id header parameter added to its parameters."""
    return {**extra, "parameters": [*extra.get("parameters", []), REQUEST_ID_HEADER]}
