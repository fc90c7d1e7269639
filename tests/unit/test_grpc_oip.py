"""OIP v2 over gRPC: requests as tritonclient.grpc builds them, read with the HTTP front's checks;
responses as tritonclient.grpc reads them; service errors as gRPC status codes."""

from unittest.mock import Mock

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from ray.serve.config import gRPCOptions
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc._utils import _get_inference_request
from tritonclient.http._utils import _get_inference_request as _http_request

import serve_app.errors as errors
from serve_app.config import LimitsConfig
from serve_app.errors import BadRequest, PayloadTooLarge, ServiceError
from serve_app.paths import CONFIGS_DIR
from serve_app.serving.grpc_oip import (
    grpc_status,
    infer_response,
    metadata_response,
    parse_grpc_infer_request,
)
from serve_app.serving.grpc_service import SERVICER_FUNCTION
from serve_app.serving.protocol import (
    model_metadata,
    parse_infer_request,
    prediction_outputs,
)

LIMITS = LimitsConfig(max_images_per_request=8, max_body_bytes=64 * 1024)


def grpc_request(inputs, outputs=None, parameters=None) -> pb.ModelInferRequest:
    return _get_inference_request(
        "m", inputs, "", "", outputs, 0, False, False, 0, None, parameters
    )


def bytes_input(images: list[bytes]):
    t = grpcclient.InferInput("image", [len(images)], "BYTES")
    t.set_data_from_numpy(np.array(images, dtype=np.object_))
    return t


def test_bytes_input_as_tritonclient_sends_it():
    images = [b"\xff\xd8\xffjpeg-one", b"\x89PNGtwo"]
    req = parse_grpc_infer_request(grpc_request([bytes_input(images)]), LIMITS)
    assert req.inputs[0].name == "image" and req.inputs[0].data == images
    assert req.requested_outputs == {"scores": True, "class_ids": True, "labels": True}


def test_same_tensors_as_the_http_front_reads():
    pixels = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    g = grpcclient.InferInput("pixels", [2, 3, 4, 4], "FP32")
    g.set_data_from_numpy(pixels)
    h = httpclient.InferInput("pixels", [2, 3, 4, 4], "FP32")
    h.set_data_from_numpy(pixels, binary_data=True)
    body, header_length = _http_request([h], "", None, 0, False, False, 0, None, None)
    over_grpc = parse_grpc_infer_request(grpc_request([g]), LIMITS).inputs[0]
    over_http = parse_infer_request(body, header_length, LIMITS).inputs[0]
    assert over_grpc.shape == over_http.shape == [2, 3, 4, 4]
    np.testing.assert_array_equal(over_grpc.data, over_http.data)
    np.testing.assert_array_equal(over_grpc.data, pixels)


def test_typed_contents_instead_of_raw():
    request = pb.ModelInferRequest(model_name="m")
    t = request.inputs.add(name="pixels", datatype="UINT8", shape=[1, 3])
    t.contents.uint_contents.extend([0, 128, 255])
    b = request.inputs.add(name="image", datatype="BYTES", shape=[1])
    b.contents.bytes_contents.append(b"\xff\xd8jpeg")
    req = parse_grpc_infer_request(request, LIMITS)
    assert req.inputs[0].data.dtype == np.uint8 and req.inputs[0].data.tolist() == [[0, 128, 255]]
    assert req.inputs[1].data == [b"\xff\xd8jpeg"]


def test_uint8_contents_out_of_range_is_refused_by_the_shared_check():
    request = pb.ModelInferRequest(model_name="m")
    t = request.inputs.add(name="pixels", datatype="UINT8", shape=[2])
    t.contents.uint_contents.extend([1, 256])
    with pytest.raises(BadRequest, match=r"inputs\[0\].data\[1\] is outside the UINT8 range"):
        parse_grpc_infer_request(request, LIMITS)


def test_limits_are_the_http_fronts_and_named():
    with pytest.raises(PayloadTooLarge, match="declares 9 images, over the limit of 8"):
        parse_grpc_infer_request(grpc_request([bytes_input([b"x"] * 9)]), LIMITS)
    big = grpc_request([bytes_input([b"x" * (LIMITS.max_body_bytes + 1)])])
    with pytest.raises(PayloadTooLarge, match=r"over the limit of 65536 \(limits.max_body_bytes\)"):
        parse_grpc_infer_request(big, LIMITS)
    many = grpc_request([bytes_input([b"x"]) for _ in range(9)])
    with pytest.raises(PayloadTooLarge, match="9 tensors, over the limit of 8"):
        parse_grpc_infer_request(many, LIMITS)
    huge = pb.ModelInferRequest(model_name="m")
    huge.inputs.add(name="pixels", datatype="FP32", shape=[1 << 20, 1 << 20])
    with pytest.raises(PayloadTooLarge, match="over the limit of"):
        parse_grpc_infer_request(huge, LIMITS)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda r: None, "non-empty list of tensors"),
        (
            lambda r: r.inputs.add(name="x", datatype="COMPLEX64", shape=[1]),
            "unsupported datatype",
        ),
        (lambda r: r.inputs.add(name="x", datatype="FP32", shape=[-1]), "non-negative integer"),
        (
            lambda r: r.inputs.add(
                name="x", datatype="FP32", shape=[2]
            ).contents.fp32_contents.append(1.0),
            "shape says 2 elements, data holds 1",
        ),
        (
            lambda r: (
                r.inputs.add(name="x", datatype="FP32", shape=[1]),
                r.raw_input_contents.extend([b"\0" * 4, b"\0" * 4]),
            ),
            "raw_input_contents holds 2 entries for 1 inputs",
        ),
        (
            lambda r: (
                r.inputs.add(name="x", datatype="FP32", shape=[2]),
                r.raw_input_contents.append(b"\0" * 4),
            ),
            "needs 8 bytes, got 4",
        ),
        (
            lambda r: (
                r.inputs.add(name="x", datatype="FP32", shape=[1]),
                r.raw_input_contents.append(b"\0" * 4),
                r.outputs.add(name="logits"),
            ),
            "unknown output 'logits'",
        ),
    ],
)
def test_malformed_requests_are_bad_requests(build, message):
    request = pb.ModelInferRequest(model_name="m")
    build(request)
    with pytest.raises(BadRequest, match=message):
        parse_grpc_infer_request(request, LIMITS)


def test_parameters_and_requested_outputs():
    out = grpcclient.InferRequestedOutput("labels")
    req = parse_grpc_infer_request(
        grpc_request([bytes_input([b"x"])], outputs=[out], parameters={"top_k": 3}), LIMITS
    )
    assert req.parameters == {"top_k": 3}
    assert list(req.requested_outputs) == ["labels"]


def test_response_reads_back_with_tritonclient():
    predictions = [
        {"class_ids": [967, 504], "scores": [0.75, 0.125]},
        {"class_ids": [281, 282], "scores": [0.5, 0.25]},
    ]
    labels = [f"class{i}" for i in range(1000)]
    outputs = prediction_outputs(predictions, labels, 2)
    requested = {"scores": True, "class_ids": True, "labels": True}
    response = infer_response("m", "1", "req-1", outputs, requested)
    result = grpcclient.InferResult(pb.ModelInferResponse.FromString(response.SerializeToString()))
    assert result.get_response().id == "req-1"
    assert result.as_numpy("class_ids").tolist() == [[967, 504], [281, 282]]
    assert result.as_numpy("class_ids").dtype == np.int64
    np.testing.assert_array_equal(
        result.as_numpy("scores"), np.array([[0.75, 0.125], [0.5, 0.25]], dtype=np.float32)
    )
    assert result.as_numpy("labels").tolist() == [
        [b"class967", b"class504"],
        [b"class281", b"class282"],
    ]
    only = infer_response("m", "1", "r", outputs, {"class_ids": True})
    assert [o.name for o in only.outputs] == ["class_ids"] and len(only.raw_output_contents) == 1


def test_metadata_response_mirrors_the_http_document():
    info = {"name": "m", "version": "2", "input": {"shape": [3, 224, 224]}}
    doc = model_metadata(info, platform="onnxruntime_cpu")
    meta = metadata_response(doc)
    assert meta.name == "m" and list(meta.versions) == ["2"] and meta.platform == doc["platform"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        (t["name"], t["datatype"], t["shape"]) for t in doc["inputs"]
    ]


def test_status_codes_of_service_errors():
    assert grpc_status(errors.ModelNotFound("x")) == grpc.StatusCode.NOT_FOUND
    assert grpc_status(errors.Overloaded("x")) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_status(errors.NotReady("x")) == grpc.StatusCode.UNAVAILABLE
    assert grpc_status(errors.PayloadTooLarge("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_status(errors.InvalidImage("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_status(errors.ModelExecutionError("x")) == grpc.StatusCode.INTERNAL
    # A client's error never reads as the server's: no 4xx maps to INTERNAL or UNKNOWN.
    client_errors = [
        c
        for c in ServiceError.__subclasses__() + BadRequest.__subclasses__()
        if 400 <= c.status < 500
    ]
    assert len(client_errors) >= 5
    for cls in client_errors:
        err = ServiceError.__new__(cls)
        ServiceError.__init__(err, "x")
        assert grpc_status(err) not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), cls


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.test.yaml"])
def test_configs_register_the_inference_service(name):
    doc = yaml.safe_load((CONFIGS_DIR / name).read_text())
    options = gRPCOptions(**doc["grpc_options"])
    assert options.grpc_servicer_functions == [SERVICER_FUNCTION]
    (add_servicer,) = options.grpc_servicer_func_callable
    server = grpc.server(thread_pool=None)
    add_servicer(Mock(), server)  # as Serve's proxy registers it: the Ingress answers
    from serve_app.serving.grpc_oip import SERVICE, OipGrpcMethods

    unary = [m.name for m in SERVICE.methods if not m.client_streaming]
    assert len(unary) == 19 and all(callable(getattr(OipGrpcMethods, m)) for m in unary)


def test_request_messages_survive_the_pickle_of_serves_python_proxy():
    import pickle

    t = grpcclient.InferInput("image", [1], "BYTES")
    t.set_data_from_numpy(np.array([b"\xff\xd8jpeg"], dtype=np.object_))
    request = grpc_request([t], parameters={"top_k": 2})
    for message in (request, pb.ServerLiveRequest(), pb.ModelMetadataRequest(name="m")):
        assert pickle.loads(pickle.dumps(message)) == message


class CallContext:
    """The part of Serve's gRPC call context the methods use: metadata in, code and details out."""

    def __init__(self, metadata, peer="ipv4:127.0.0.1:50123"):
        self.metadata, self.code, self.details, self._peer = metadata, None, None, peer

    def invocation_metadata(self):
        return self.metadata

    def peer(self):
        return self._peer

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details


@pytest.fixture()
def keyed_guard(tmp_path):
    """The ingress's key guard holding a predict-only and an admin-only key."""
    from serve_app.api_keys import ApiKey, KeysFile, hash_token, new_token
    from serve_app.config import AuthConfig
    from serve_app.serving.auth_middleware import GUARD

    tokens, keys = {}, []
    for scope in ("predict", "admin"):
        key_id, token = new_token(f"only{scope}")
        keys.append(ApiKey(key_id, hash_token(key_id, token), frozenset([scope])))
        tokens[scope] = token
    path = tmp_path / "keys.json"
    KeysFile(path, keys).write()
    saved = (GUARD.path, GUARD.ring, GUARD.config, GUARD.buckets)
    GUARD.configure(AuthConfig(keys_file=str(path)), {})
    try:
        yield tokens
    finally:
        GUARD.path, GUARD.ring, GUARD.config, GUARD.buckets = saved


def test_calls_need_the_key_of_their_http_route(keyed_guard):
    import asyncio

    from serve_app.serving.grpc_oip import OipGrpcMethods, admit

    servicer = OipGrpcMethods()  # refused before any of the Ingress's state is touched
    for metadata, code in [
        ([], grpc.StatusCode.UNAUTHENTICATED),
        ([("authorization", "Bearer rsk_not-a-key")], grpc.StatusCode.UNAUTHENTICATED),
        ([("authorization", f"Bearer {keyed_guard['admin']}")], grpc.StatusCode.PERMISSION_DENIED),
    ]:
        for call, request in [
            (servicer.ModelInfer, pb.ModelInferRequest(model_name="m")),
            (servicer.ModelMetadata, pb.ModelMetadataRequest(name="m")),
        ]:
            ctx = CallContext(metadata)
            asyncio.run(call(request, grpc_context=ctx))
            assert ctx.code == code, (call.__name__, metadata)
            assert keyed_guard["admin"] not in (ctx.details or "")
    live = CallContext([])
    assert asyncio.run(servicer.ServerLive(pb.ServerLiveRequest(), grpc_context=live)).live
    assert live.code is None  # health stays open, as over HTTP
    bearer = CallContext([("authorization", f"Bearer {keyed_guard['predict']}")])
    assert admit("/v2/models/m/infer", bearer) == "onlypredict"


def test_peers_on_this_host_are_told_from_other_hosts():
    from serve_app.serving.grpc_oip import is_local_peer

    here = frozenset({"10.1.2.3", "fd00::2"})
    for peer in (
        "ipv4:127.0.0.1:5123",
        "ipv6:[::1]:5123",
        "ipv6:[::ffff:127.0.0.1]:5123",
        "unix:/tmp/s",
        "ipv4:10.1.2.3:40000",  # HAProxy reaching a replica through the node's address
        "ipv6:[fd00::2]:40000",
    ):
        assert is_local_peer(peer, here), peer
    for peer in (
        "ipv4:10.1.2.4:5123",
        "ipv6:[2001:db8::1]:5123",
        "ipv4:128.0.0.1:1",
        "ipv4:garbage:1",
        "",
        None,
    ):
        assert not is_local_peer(peer, here), peer


def test_without_keys_only_this_host_is_answered():
    """Ray binds its gRPC ports on every interface: without keys, another host is refused."""
    import asyncio

    from serve_app.serving.auth_middleware import GUARD
    from serve_app.serving.grpc_oip import OipGrpcMethods, admit

    assert not GUARD.keys_configured
    servicer = OipGrpcMethods()
    remote = CallContext([], peer="ipv4:203.0.113.10:40000")
    asyncio.run(servicer.ModelInfer(pb.ModelInferRequest(model_name="m"), grpc_context=remote))
    assert remote.code == grpc.StatusCode.PERMISSION_DENIED
    assert "auth.keys_file" in remote.details
    assert admit("/v2/models/m/infer", CallContext([])) is None  # this host: anonymous, served
