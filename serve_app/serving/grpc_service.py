"""The KServe / Triton `inference.GRPCInferenceService` protobufs, from tritonclient's generated
modules, as Serve's gRPC proxy and the Ingress both load them.

tritonclient generated `tritonclient.grpc.service_pb2` from `grpc_service.proto`, and its message
classes say they live in a module `grpc_service_pb2`, which nothing installs. Serve's Python proxy
(and HAProxy's fallback to it) pickles each request message to hand it to a replica, and pickle
finds a class by that module name: without the alias below every call through it fails with
"Can't pickle <class 'grpc_service_pb2.ModelInferRequest'>". Both ends import this module (the
proxy through `grpc_servicer_functions`, the replica through the Ingress), so both find it.

Kept apart from grpc_oip so that Serve's proxy imports only this and tritonclient.
"""

from __future__ import annotations

import sys

from tritonclient.grpc import service_pb2, service_pb2_grpc

GENERATED_MODULE = "grpc_service_pb2"
sys.modules.setdefault(GENERATED_MODULE, service_pb2)

# What `grpc_options.grpc_servicer_functions` names in configs/serve_config*.yaml.
SERVICER_FUNCTION = "serve_app.serving.grpc_service.add_inference_servicer"


def add_inference_servicer(servicer, server) -> None:
    """Register GRPCInferenceService on Serve's gRPC server (Serve routes each method to the
    Ingress method of the same name)."""
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
