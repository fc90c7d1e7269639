"""Every route that answers from a model offers its requests to the model's shadow: REST predict,
OIP infer over HTTP (JSON and binary) and over gRPC, through the Ingress's one answering path.

The Ingress runs as a plain object here; the Recognizers and the ShadowMonitor are their
DeploymentHandles' boundary (a call and its answer), so they are fakes that record what reaches
them. FP32 `pixels` reach a candidate only when it shares the primary's preprocessing.
"""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from starlette.requests import Request
from tritonclient.grpc._utils import _get_inference_request

from serve_app.serving.ingress import Ingress

# The class as written, under the ASGI wrapper `@serve.ingress` puts around it (whose
# constructor is a coroutine that starts the FastAPI app, which these calls do not go through).
IngressClass = Ingress.func_or_class.__mro__[1]
IMAGE = b"\xff\xd8\xff\xe0 an encoded photo, as sent"
PRIMARY_IDS = [1, 2, 3, 4, 5]
CANDIDATE_IDS = [1, 2, 3, 4, 9]


def config(candidate: dict | None = None) -> dict:
    return {
        "models": [
            {"name": "m", "shadow": {"model": "m_int8", "fraction": 1.0}},
            {"name": "m_int8", "precision": "int8", "device": "cpu", **(candidate or {})},
        ],
        "quality": {"enabled": False},
    }


class FakeRecognizer:
    """A Recognizer's handle: answers fixed class ids per image and keeps what it was sent."""

    def __init__(self, name: str, ids: list[int]):
        self.deployment_name = f"Recognizer_{name}"
        self.sent: list[list] = []
        self.options_used: list[dict] = []
        outer = self

        class Predict:
            async def remote(self, images, k):
                outer.sent.append(list(images))
                return {
                    "predictions": [
                        {"class_ids": ids[:k], "scores": [0.5] * len(ids[:k])} for _ in images
                    ],
                    "timings_s": {"decode": 0.001, "inference": 0.002},
                    "batch_sizes": [len(images)],
                }

        self.predict = Predict()

    def options(self, **options):
        # The Ingress picks the transport per call (serving/transport.py): kept to be checked.
        self.options_used.append(options)
        return self


class FakeShadowMonitor:
    """The ShadowMonitor's handle: keeps the records the Ingress sends it."""

    def __init__(self):
        self.records: list[dict] = []
        outer = self

        class Record:
            async def remote(self, batch):
                outer.records.extend(batch)

        self.record = Record()


def ingress(cfg: dict):
    primary = FakeRecognizer("m", PRIMARY_IDS)
    candidate = FakeRecognizer("m_int8", CANDIDATE_IDS)
    monitor = FakeShadowMonitor()
    app = IngressClass(cfg, {"m": primary, "m_int8": candidate}, None, None, monitor)
    return app, primary, candidate, monitor


def http_request(path: str, body: bytes, content_type: str, headers=()) -> Request:
    sent = [False]

    async def receive():
        if sent[0]:
            return {"type": "http.disconnect"}
        sent[0] = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
    }
    return Request(scope, receive)


def oip_json(inputs: list[dict]) -> tuple[bytes, str, tuple]:
    return json.dumps({"inputs": inputs}).encode(), "application/json", ()


def oip_binary_bytes() -> tuple[bytes, str, tuple]:
    """The binary extension: a JSON header naming the tensor, then its bytes (length-prefixed)."""
    raw = len(IMAGE).to_bytes(4, "little") + IMAGE
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    length = (b"inference-header-content-length", str(len(header)).encode())
    return header + raw, "application/octet-stream", (length,)


def pixels(n: int = 1) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, 224, 224)).astype(np.float32)


async def call(app, route: str, payload=None):
    """One request on `route`; the status it was answered with."""
    if route == "rest":
        response = await app.predict("m", http_request("/v1/models/m/predict", IMAGE, "image/jpeg"))
        return response.status_code
    if route in ("oip_json", "oip_binary", "oip_pixels"):
        if route == "oip_json":
            body, ctype, headers = oip_json(
                [
                    {
                        "name": "image",
                        "datatype": "BYTES",
                        "shape": [1],
                        "data": [base64.b64encode(IMAGE).decode()],
                    }
                ]
            )
        elif route == "oip_binary":
            body, ctype, headers = oip_binary_bytes()
        else:
            p = pixels()
            body, ctype, headers = oip_json(
                [
                    {
                        "name": "pixels",
                        "datatype": "FP32",
                        "shape": list(p.shape),
                        "data": p.ravel().tolist(),
                    }
                ]
            )
        req = http_request("/v2/models/m/infer", body, ctype, headers)
        return (await app.v2_infer("m", req)).status_code
    if route in ("grpc", "grpc_pixels"):
        if route == "grpc":
            t = grpcclient.InferInput("image", [1], "BYTES")
            t.set_data_from_numpy(np.array([IMAGE], dtype=np.object_))
        else:
            p = pixels()
            t = grpcclient.InferInput("pixels", list(p.shape), "FP32")
            t.set_data_from_numpy(p)
        msg = _get_inference_request("m", [t], "", "", None, 0, False, False, 0, None, None)
        reply = await app.ModelInfer(msg, None)
        return 200 if reply.outputs else 500
    raise AssertionError(route)


async def offered(app, monitor, route: str) -> int:
    """Send one request on `route` and wait until the shadow's work for it is done."""
    status = await call(app, route)
    d = app.shadows
    while d._workers or (d._flusher is not None and not d._flusher.done()):
        await asyncio.sleep(0.01)
    return status


@pytest.mark.parametrize("route", ["rest", "oip_json", "oip_binary", "grpc"])
def test_every_route_sends_its_sampled_request_to_the_candidate(route):
    async def scenario():
        app, primary, candidate, monitor = ingress(config())
        status = await offered(app, monitor, route)
        transports = (primary.options_used, candidate.options_used)
        return status, primary.sent, candidate.sent, monitor.records, transports

    status, to_primary, to_candidate, records, transports = asyncio.run(scenario())
    assert status == 200
    assert to_primary == [[IMAGE]]
    # A small predict, and its copy to the candidate, go by value over Serve's gRPC transport.
    assert transports == ([{"_by_reference": False}], [{"_by_reference": False}])
    # The candidate gets the same encoded image the primary answered, and its answer is compared.
    assert to_candidate == [[IMAGE]]
    (record,) = records
    assert record["kind"] == "compared" and record["model"] == "m"
    assert record["comparison"] == {"images": 1, "top1_agreements": 1, "top5_overlap": 0.8}


@pytest.mark.parametrize("route", ["oip_pixels", "grpc_pixels"])
def test_pixels_reach_a_candidate_with_the_same_preprocessing(route):
    async def scenario():
        app, _, candidate, monitor = ingress(config())
        status = await offered(app, monitor, route)
        return status, candidate.sent, monitor.records

    status, to_candidate, records = asyncio.run(scenario())
    assert status == 200
    (sent,) = to_candidate
    assert len(sent) == 1 and np.array_equal(sent[0], pixels()[0])
    assert [r["kind"] for r in records] == ["compared"]


@pytest.mark.parametrize("route", ["oip_pixels", "grpc_pixels"])
def test_pixels_skip_a_candidate_that_normalises_otherwise(route):
    other = {"preprocess": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}

    async def scenario():
        app, primary, candidate, monitor = ingress(config(other))
        status = await offered(app, monitor, route)
        encoded = await offered(app, monitor, "oip_json")
        return status, encoded, primary.sent, candidate.sent, monitor.records

    status, encoded, to_primary, to_candidate, records = asyncio.run(scenario())
    assert status == 200 and encoded == 200 and len(to_primary) == 2
    # The pixels were answered by the primary only; the encoded image still went to both.
    assert to_candidate == [[IMAGE]]
    assert [r["kind"] for r in records] == ["compared"]


def test_with_actor_transport_no_call_goes_by_value():
    async def scenario():
        cfg = {**config(), "ingress": {"internal_transport": "actor"}}
        app, primary, candidate, monitor = ingress(cfg)
        status = await offered(app, monitor, "rest")
        return status, primary.options_used, candidate.options_used, primary.sent

    status, primary_options, candidate_options, sent = asyncio.run(scenario())
    assert status == 200 and sent == [[IMAGE]]
    assert primary_options == [] and candidate_options == []
