"""Open Inference Protocol v2 over gRPC: the KServe / Triton `inference.GRPCInferenceService`,
served through Ray Serve's gRPC proxy so that `tritonclient.grpc` works unchanged.

The protobufs are tritonclient's generated modules (grpc_service): Serve's proxy registers the
service from `grpc_options.grpc_servicer_functions` and calls the ingress deployment's method of
the same name (`ModelInfer`, ...) with the request message. The methods
live in `OipGrpcMethods`, mixed into the Ingress, so both fronts share one model table, one
readiness check, one answering path (the Recognizer call, quality tracking, the shadow's sample)
and one set of request metrics. The request is read with the HTTP front's own checks (`protocol`):
the same limits, the same tensor decoding, the same typed errors, which `grpc_status` maps to gRPC
status codes.

Serve picks the application from the `application` metadata, which tritonclient never sends; with
one application deployed, both Serve's Python proxy and its HAProxy front send every call to it.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import socket
import uuid
from typing import Any

import grpc
import psutil

import serve_app.serving.protocol as protocol
from serve_app.config import LimitsConfig
from serve_app.errors import (
    BadRequest,
    Forbidden,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
)
from serve_app.serving.auth_middleware import GUARD
from serve_app.serving.grpc_service import service_pb2 as pb
from serve_app.serving.request_parsing import parse_off_loop, parse_top_k

# The InferTensorContents field that holds each datatype's elements (FP16 travels raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "INT8": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


# HTTP statuses with a gRPC code of their own; every other 4xx is the client's bad input.
STATUS_CODES = {
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_status(err: ServiceError) -> grpc.StatusCode:
    """The gRPC status code of a service error: a client's mistake is INVALID_ARGUMENT (never
    INTERNAL), a full queue RESOURCE_EXHAUSTED, a model not ready UNAVAILABLE."""
    if isinstance(err, Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if err.status in STATUS_CODES:
        return STATUS_CODES[err.status]
    if 400 <= err.status < 500:
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


def parameter_value(p: Any) -> Any:
    """The Python value of an InferParameter (None when none of its fields is set)."""
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def parse_grpc_infer_request(
    request: pb.ModelInferRequest, limits: LimitsConfig
) -> protocol.InferRequest:
    """A ModelInferRequest as the InferRequest the HTTP front parses, with the same checks: the
    message size against `max_body_bytes`, then each count and shape before its data is read."""
    size = request.ByteSize()
    if size > limits.max_body_bytes:
        raise PayloadTooLarge(
            f"the request message is {size} bytes, over the limit of {limits.max_body_bytes} "
            "(limits.max_body_bytes)"
        )
    if not request.inputs:
        raise BadRequest("`inputs` must be a non-empty list of tensors")
    protocol.check_input_count(len(request.inputs), limits)
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents holds {len(raw)} entries for {len(request.inputs)} inputs: "
            "send one per input, or none"
        )
    inputs = []
    for i, t in enumerate(request.inputs):
        where = f"inputs[{i}]"
        shape = protocol.tensor_shape(where, t.datatype, list(t.shape), limits)
        if raw:
            if t.HasField("contents"):
                raise BadRequest(f"{where} has contents, but the request sends raw_input_contents")
            inputs.append(protocol.tensor_from_raw(where, t.name, t.datatype, shape, raw[i]))
            continue
        field = CONTENTS_FIELD.get(t.datatype)
        if field is None:
            raise BadRequest(f"{where}: {t.datatype} travels only in raw_input_contents")
        values = list(getattr(t.contents, field))
        inputs.append(protocol.tensor_from_values(where, t.name, t.datatype, shape, values))
    outputs = [{"name": o.name} for o in request.outputs] or None
    parameters = {k: parameter_value(v) for k, v in request.parameters.items()}
    return protocol.InferRequest(
        request.id or None, inputs, protocol.requested_outputs(outputs, True), parameters
    )


def infer_response(
    model_name: str,
    model_version: str,
    request_id: str,
    outputs: dict[str, tuple[str, list[int], Any]],
    requested: dict[str, bool],
) -> pb.ModelInferResponse:
    """The requested outputs as a ModelInferResponse, each in raw_output_contents (as Triton
    answers, and tritonclient reads)."""
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request_id
    )
    for name in requested:
        datatype, shape, data = outputs[name]
        response.outputs.add(name=name, datatype=datatype, shape=shape)
        response.raw_output_contents.append(protocol.tensor_bytes(datatype, data))
    return response


def metadata_response(doc: dict) -> pb.ModelMetadataResponse:
    """The model metadata document of protocol.model_metadata as its protobuf."""
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=doc["name"],
        versions=doc["versions"],
        platform=doc["platform"],
        inputs=[tensor(**t) for t in doc["inputs"]],
        outputs=[tensor(**t) for t in doc["outputs"]],
    )


def _request_id() -> str:
    """The id Serve's gRPC proxy gave the call (the client's `request_id` metadata when sent)."""
    from ray.serve.context import _get_serve_request_context

    return _get_serve_request_context().request_id or uuid.uuid4().hex


@functools.cache
def host_addresses() -> frozenset[str]:
    """The IP addresses of this host's interfaces: HAProxy and the proxies reach a replica's
    direct-ingress port through the node's address, not only through 127.0.0.1."""
    return frozenset(
        a.address.split("%")[0]
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family in (socket.AF_INET, socket.AF_INET6)
    )


def peer_ip(peer: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client address in a gRPC peer string ("ipv4:10.0.0.7:5123", "ipv6:[::1]:5123")."""
    family, _, rest = (peer or "").partition(":")
    host = rest.rpartition(":")[0].strip("[]")
    if family not in ("ipv4", "ipv6") or not host:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped or ip


def is_local_peer(peer: str | None, local: frozenset[str] | None = None) -> bool:
    """Whether a gRPC peer string names a client on this host (loopback, one of this host's
    addresses, or a unix socket)."""
    if peer and peer.startswith("unix:"):
        return True
    ip = peer_ip(peer)
    if ip is None:
        return False
    return ip.is_loopback or str(ip) in (host_addresses() if local is None else local)


def admit(path: str, grpc_context: Any) -> str | None:
    """The API key check of the HTTP route at `path`, on the call's `authorization` metadata
    (`Bearer <key>`, as tritonclient sends `headers=`): the principal, or the refusal raised.

    Ray binds its gRPC ports (the fallback proxy's, each replica's direct-ingress port) on every
    interface, whatever `http_options.host` says. Without API keys the service is meant for this
    host only, so a call from another host is refused here instead of served anonymously (a
    cluster without keys would refuse its other nodes' proxies too: it needs keys anyway)."""
    if grpc_context is not None and not GUARD.keys_configured:
        peer = grpc_context.peer()
        if not is_local_peer(peer):
            raise Forbidden(
                "OIP over gRPC answers other hosts only with API keys configured "
                "(auth.keys_file, docs/SECURITY.md)"
            )
    metadata = dict(grpc_context.invocation_metadata()) if grpc_context is not None else {}
    principal, refusal = GUARD.admit(path, metadata.get("authorization"))
    if refusal is not None:
        raise refusal
    return principal


def _refuse(grpc_context: Any, err: ServiceError, empty: Any) -> Any:
    """Answer the call with the error's status code and message, and an empty message."""
    if grpc_context is not None:
        grpc_context.set_code(grpc_status(err))
        grpc_context.set_details(err.message)
    return empty


class _Answered:
    """What the Ingress's request accounting reads from a successful call."""

    status_code = 200


class OipGrpcMethods:
    """The GRPCInferenceService methods Serve's gRPC proxy calls by name on the Ingress. Uses the
    Ingress's model table (`_model`), readiness, metadata, answering path (`_answer`) and request
    metrics."""

    async def ServerLive(self, request: pb.ServerLiveRequest, grpc_context=None):
        try:
            admit("/v2/health/live", grpc_context)
        except ServiceError as err:
            return _refuse(grpc_context, err, pb.ServerLiveResponse())
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, grpc_context=None):
        try:
            admit("/v2/health/ready", grpc_context)
        except ServiceError as err:
            return _refuse(grpc_context, err, pb.ServerReadyResponse())
        return pb.ServerReadyResponse(ready=all((await self._readiness()).values()))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, grpc_context=None):
        try:
            admit("/v2", grpc_context)
        except ServiceError as err:
            return _refuse(grpc_context, err, pb.ServerMetadataResponse())
        doc = await self.v2_server()
        return pb.ServerMetadataResponse(
            name=doc["name"], version=doc["version"], extensions=doc["extensions"]
        )

    def _versioned_model(self, name: str, version: str):
        model = self._model(name)
        if version and version != model.version:
            raise ModelNotFound(f"model {name!r} has no version {version!r}")
        return model

    async def ModelReady(self, request: pb.ModelReadyRequest, grpc_context=None):
        try:
            admit(f"/v2/models/{request.name}/ready", grpc_context)
            self._versioned_model(request.name, request.version)
        except ServiceError as err:
            return _refuse(grpc_context, err, pb.ModelReadyResponse())
        ready = (await self._readiness()).get(request.name, False)
        return pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, grpc_context=None):
        try:
            admit(f"/v2/models/{request.name}", grpc_context)
            self._versioned_model(request.name, request.version)
            return metadata_response(await self.v2_model(request.name))
        except ServiceError as err:
            return _refuse(grpc_context, err, pb.ModelMetadataResponse())

    async def ModelInfer(self, request: pb.ModelInferRequest, grpc_context=None):
        request_id = _request_id()
        name = request.model_name
        try:
            # Refused before any accounting, as the HTTP front's key check does.
            principal = admit(f"/v2/models/{name}/infer", grpc_context)
        except ServiceError as err:
            return _refuse(grpc_context, err, pb.ModelInferResponse())
        answered: dict[str, pb.ModelInferResponse] = {}

        async def handle() -> tuple[_Answered, list[int]]:
            model = self._versioned_model(name, request.model_version)
            limits = self.config.limits
            # The whole message was read by the proxy; its size only bounds the parse's cost.
            req = await parse_off_loop(
                request.ByteSize(), parse_grpc_infer_request, request, limits
            )
            k = parse_top_k(req.parameters.get("top_k"), limits)
            images = protocol.images_from_tensors(
                req.inputs, self.preprocess[name].crop, limits.max_images_per_request
            )
            self.metrics[name].observe_images_per_request(len(images))
            result, _ = await self._answer(name, principal, request_id, images, k)
            outputs = protocol.prediction_outputs(result["predictions"], self.labels[name], k)
            answered["response"] = infer_response(
                name, model.version, req.id or request_id, outputs, req.requested_outputs
            )
            return _Answered(), result["batch_sizes"]

        reply = await self._measured(name if name in self.models else "unknown", request_id, handle)
        if "response" in answered:
            return answered["response"]
        # The accounting answered the error as the HTTP front does; read the error back from it.
        return _refuse(grpc_context, _error_of(reply), pb.ModelInferResponse())


def _error_of(reply: Any) -> ServiceError:
    """The ServiceError an error reply of errors.py carries."""
    try:
        return ServiceError.from_wire(json.loads(reply.body)["error"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return ServiceError("internal error")


SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


def _unserved(method: str, response_type: type) -> Any:
    """A method of the service this server does not offer: UNIMPLEMENTED, as a gRPC server answers
    a method it does not know. Serve's proxy registers every method of the service and would call
    the Ingress for it, which has no such method."""

    async def answer(self, request, grpc_context=None):
        if grpc_context is not None:
            grpc_context.set_code(grpc.StatusCode.UNIMPLEMENTED)
            grpc_context.set_details(f"{method} is not served here (docs/API.md)")
        return response_type()

    answer.__name__ = method
    return answer


# Unary methods only: a streaming one cannot be answered by a plain coroutine.
for _method in SERVICE.methods:
    if not hasattr(OipGrpcMethods, _method.name) and not _method.client_streaming:
        setattr(
            OipGrpcMethods,
            _method.name,
            _unserved(_method.name, getattr(pb, _method.output_type.name)),
        )
