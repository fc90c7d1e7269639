"""The HTTP front: the REST /v1 and Open Inference Protocol /v2 routes of every served model.

A route parses the request (request_parsing, protocol), hands the encoded images to the model's
Recognizer, which decodes them beside its inference thread, and shapes the reply. Handlers only
raise typed errors; http_front's handlers turn them into the one error reply of errors.py.
"""

import asyncio
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

import serve_app.serving.openapi_bodies as bodies
import serve_app.serving.protocol as protocol
from serve_app.config import AppConfig, ModelConfig
from serve_app.errors import (
    ModelNotFound,
    NotReady,
    Overloaded,
    ServiceError,
    UnprocessableEntity,
    UnsupportedMediaType,
)
from serve_app.monitoring.dashboard import router as dashboard_router
from serve_app.monitoring.metric_groups import ServiceMetrics
from serve_app.monitoring.metrics import STATUS_SUCCESS
from serve_app.quality.feedback import parse_feedback
from serve_app.quality.wire import raise_wired_error
from serve_app.request_ids import bound_request_id
from serve_app.serving.auth import bound_items, is_json_media_type, unbound_result
from serve_app.serving.auth_middleware import ApiKeyCheck, configure_keys, principal_of
from serve_app.serving.grpc_oip import OipGrpcMethods
from serve_app.serving.http_front import (
    current_request_id,
    install_error_handling,
    readiness_reply,
)
from serve_app.serving.logs import log_request, outcome_of, request_logger
from serve_app.serving.models import default_preprocess, load_labels
from serve_app.serving.prediction_sender import PredictionSender
from serve_app.serving.replica_retry import predict_on_live_replica
from serve_app.serving.request_parsing import (
    check_image_count,
    decode_json,
    images_from_request,
    parse_off_loop,
    parse_top_k,
    read_body,
)
from serve_app.serving.shadow_service import ShadowDispatcher
from serve_app.serving.transport import CallTransport, payload_bytes

log = request_logger()

SERVICE_NAME = "recognition-serve"
SERVICE_VERSION = "0.1.0"
READY_TIMEOUT_S = 2.0
# Inside what is left of Serve's graceful shutdown once requests are drained (20 s by default; 35 s
# behind HAProxy, whose 30 s deregistration window comes first).
RECORDS_DRAIN_TIMEOUT_S = 3.0

api = FastAPI(
    title=SERVICE_NAME,
    version=SERVICE_VERSION,
    description="Image recognition on Ray Serve. "
    "REST under /v1, Open Inference Protocol v2 under /v2.",
)

# /dashboard: live charts from Prometheus, proxied here so the page needs no CORS.
api.include_router(dashboard_router)


install_error_handling(api)
# Added last, so it runs first: a request without its key is refused before anything else.
api.add_middleware(ApiKeyCheck)


@serve.deployment
@serve.ingress(api)
class Ingress(OipGrpcMethods):
    """Routes requests to the Recognizer of the named model and records predictions for quality
    tracking; answers OIP over gRPC too (grpc_oip)."""

    def __init__(
        self,
        config: dict,
        recognizers: dict[str, DeploymentHandle],
        quality: DeploymentHandle | None,
        forecaster: DeploymentHandle | None = None,
        shadow_monitor: DeploymentHandle | None = None,
    ):
        self.config = AppConfig.model_validate(config)
        configure_keys(self.config.auth)
        self.recognizers = recognizers
        self.quality = quality
        self.forecaster = forecaster
        self.models: dict[str, ModelConfig] = {m.name: m for m in self.config.models}
        self.labels = {m.name: load_labels(m.labels) for m in self.config.models}
        self.preprocess = {
            m.name: m.preprocess or default_preprocess(m.architecture) for m in self.config.models
        }
        self.metrics = {m.name: ServiceMetrics(m.name, m.version) for m in self.config.models}
        self._unknown_metrics = ServiceMetrics("unknown", "")
        self._infos: dict[str, dict] = {}
        self.transport = CallTransport(self.config.ingress.internal_transport)
        self.prediction_sender = (
            PredictionSender(
                quality,
                {m.name: m.version for m in self.config.models},
                self.transport,
                self.config.quality.record_flush_interval_s,
            )
            if quality is not None
            else None
        )
        self.shadows = ShadowDispatcher(
            self.config, shadow_monitor, recognizers, self.prediction_sender
        )

    async def __del__(self) -> None:
        # Serve calls this once the replica has drained its requests (scale-down, redeploy,
        # stop): the predictions of its last requests go to the quality monitor before it exits.
        if self.prediction_sender is not None:
            await self.prediction_sender.drain(RECORDS_DRAIN_TIMEOUT_S)

    # ---- helpers -------------------------------------------------------------------------------

    def _model(self, name: str) -> ModelConfig:
        try:
            return self.models[name]
        except KeyError:
            raise ModelNotFound(
                f"no model named {name!r}; served models: {sorted(self.models)}"
            ) from None

    def _quality_monitor(self) -> DeploymentHandle:
        """The QualityMonitor's handle; 422 when this deployment does not track quality."""
        if self.quality is None:
            raise UnprocessableEntity(
                "quality tracking is disabled in this deployment (quality.enabled: false)"
            )
        return self.quality

    async def _recognize(self, name: str, images: list, k: int) -> dict:
        """Run the model's Recognizer on encoded images or preprocessed arrays; map its errors and
        back-pressure."""
        try:
            recognizer = self.transport.handle(self.recognizers[name], payload_bytes(images))
            result = await predict_on_live_replica(recognizer, images, k)
        except BackPressureError:
            raise Overloaded(
                f"model {name!r} is overloaded: its queue is full, retry shortly",
                retry_after_s=self.config.ingress.overload_retry_after_s,
            ) from None
        if "error" in result:
            raise ServiceError.from_wire(result["error"])
        return result

    async def _answer(
        self, name: str, principal: str | None, request_id: str, images: list, k: int
    ) -> tuple[dict, float]:
        """The model's answer to the images, passed on to quality tracking and, for the sampled
        share, to the model's shadow candidate; with the seconds the Recognizer took, round
        trip. Every route that predicts (REST, OIP over HTTP and gRPC) answers through here, so
        none is left out of quality tracking or the shadow's sample."""
        sent = time.perf_counter()
        result = await self._recognize(name, images, k)
        round_trip = time.perf_counter() - sent
        stored_id = bound_request_id(principal, request_id)
        self._record(stored_id, name, result["predictions"])
        self.shadows.offer(name, stored_id, images, result["predictions"], round_trip)
        return result, round_trip

    def _record(self, request_id: str, name: str, predictions: list[dict]) -> None:
        """Pass the predictions on for quality tracking, when this deployment tracks quality."""
        if self.prediction_sender is not None:
            self.prediction_sender.send(request_id, name, predictions)

    async def _measured(self, name: str, request_id: str, handler) -> Response:
        """Run a predict/infer handler with request counting, latency, in-flight and the access log
        line."""
        metrics = self.metrics.get(name, self._unknown_metrics)
        started = time.perf_counter()
        err: ServiceError | None = None
        batch_sizes: list[int] = []
        with metrics.inflight():
            try:
                response, batch_sizes = await handler()
            except ServiceError as e:
                err, response = e, e.to_response()
            except Exception:
                log.exception("request %s failed", request_id)
                response = ServiceError(f"internal error (request {request_id})").to_response()
        latency = time.perf_counter() - started
        status = outcome_of(response.status_code)
        metrics.count_request(status)
        if status == STATUS_SUCCESS:
            metrics.observe_latency(latency)
        log_request(
            log,
            request_id=request_id,
            model=name,
            status=response.status_code,
            latency_ms=latency * 1000,
            batch_size=max(batch_sizes) if batch_sizes else None,
            outcome=status,
            error=err.code if err else None,
        )
        return response

    # ---- REST /v1 --------------------------------------------------------------------------------

    @api.get("/healthz", summary="Liveness of the HTTP front")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    async def _info(self, name: str) -> dict:
        if name not in self._infos:
            self._infos[name] = await asyncio.wait_for(
                self.recognizers[name].info.remote(), READY_TIMEOUT_S
            )
        return self._infos[name]

    async def _readiness(self) -> dict[str, bool]:
        async def one(name: str) -> bool:
            try:
                await asyncio.wait_for(self.recognizers[name].info.remote(), READY_TIMEOUT_S)
                return True
            except Exception:
                return False

        names = list(self.models)
        return dict(zip(names, await asyncio.gather(*(one(n) for n in names)), strict=True))

    @api.get("/readyz", summary="Ready when every model has a loaded, warmed-up replica")
    async def readyz(self) -> JSONResponse:
        ready = await self._readiness()
        ok = all(ready.values())
        return readiness_reply({"ready": ok, "models": ready}, ok)

    @api.get(
        "/v1/models", summary="Served models: names, versions, input spec, labels count, device"
    )
    async def list_models(self) -> dict:
        out = []
        for name, cfg in self.models.items():
            try:
                out.append(await self._info(name))
            except Exception:
                out.append(
                    {
                        "name": name,
                        "version": cfg.version,
                        "ready": False,
                        "labels_count": len(self.labels[name]),
                    }
                )
        return {"models": out}

    @api.post(
        "/v1/models/{name}/predict",
        summary="Top-k classes for one or several images",
        description="Send images as multipart files, as a raw image/* body, or as JSON "
        '{"images": ["<base64>", ...]}. `top_k` as query parameter or field (default 5).',
        openapi_extra=bodies.with_request_id(bodies.PREDICT),
    )
    async def predict(self, name: str, request: Request) -> Response:
        request_id = current_request_id()

        async def handle() -> tuple[Response, list[int]]:
            started = time.perf_counter()
            self._model(name)
            limits = self.config.limits
            body = await read_body(request, limits.max_body_bytes)
            images, fields = await images_from_request(request, body, limits)
            k = parse_top_k(request.query_params.get("top_k", fields.get("top_k")), limits)
            check_image_count(len(images), limits.max_images_per_request)
            self.metrics[name].observe_images_per_request(len(images))
            result, round_trip = await self._answer(
                name, principal_of(request), request_id, images, k
            )
            labels = self.labels[name]
            model = self.models[name]
            stages = result["timings_s"]
            # What the hop to the Recognizer itself costs: Ray's routing, serialisation, scheduling.
            handoff = max(0.0, round_trip - sum(stages.values()))
            timings = {**stages, "handoff": handoff, "total": time.perf_counter() - started}
            payload = {
                "request_id": request_id,
                "model_name": name,
                "model_version": model.version,
                "predictions": [
                    {
                        "index": i,
                        "top_k": [
                            {"label": labels[c], "class_id": c, "score": round(s, 6)}
                            for c, s in zip(p["class_ids"], p["scores"], strict=True)
                        ],
                    }
                    for i, p in enumerate(result["predictions"])
                ],
                "timings_ms": {stage: round(v * 1000, 3) for stage, v in timings.items()},
            }
            return JSONResponse(payload), result["batch_sizes"]

        return await self._measured(name if name in self.models else "unknown", request_id, handle)

    @api.post(
        "/v1/feedback",
        summary="True labels for earlier predictions (one, or a batch under `items`)",
        description="One item answers with its own result and status; a batch answers 200 with "
        "counts by status and the detail of the items that were not joined (the first 100).",
        openapi_extra=bodies.with_request_id(bodies.FEEDBACK),
    )
    async def feedback(self, request: Request) -> JSONResponse:
        quality = self._quality_monitor()
        if not is_json_media_type(request.headers.get("content-type")):
            # A web page can post a form or text/plain cross-site without a preflight; not JSON.
            raise UnsupportedMediaType(
                "feedback must be a JSON body (Content-Type: application/json)"
            )
        limits = self.config.limits
        body = await read_body(request, min(limits.max_body_bytes, limits.max_feedback_body_bytes))
        doc = await parse_off_loop(len(body), decode_json, body, limits.max_json_depth)
        items, single = parse_feedback(doc, limits.max_feedback_items)
        # Only this key's predictions can be found; the shadows get only what the monitor took.
        items = bound_items(items, principal := principal_of(request))
        if single:
            (r,) = raise_wired_error(await quality.feedback.remote(items, principal))
            self.shadows.feedback(items)
            return JSONResponse(unbound_result(r), status_code=r.get("http_status", 200))
        summary = raise_wired_error(await quality.feedback_summary.remote(items, principal))
        self.shadows.feedback(items)
        summary["not_joined"] = [unbound_result(r) for r in summary.get("not_joined", [])]
        return JSONResponse(summary)

    @api.get(
        "/v1/models/{name}/quality", summary="Accuracy, precision, recall, F1 and drift of a model"
    )
    async def quality_snapshot(self, name: str) -> dict:
        self._model(name)
        return await self._quality_monitor().snapshot.remote(name)

    @api.get(
        "/v1/models/{name}/shadow",
        summary="How a model's shadow candidate compares: agreement, overlap, latency, drops",
    )
    async def shadow_report(self, name: str) -> dict:
        self._model(name)
        return await self.shadows.report(name)

    @api.get(
        "/v1/autoscaling/forecast",
        summary="The forecaster's status: last fit, forecast QPS at now + lead time",
    )
    async def forecast_status(self) -> dict:
        if self.forecaster is None:
            raise UnprocessableEntity(
                "no forecaster in this deployment (set `forecaster:` in the config)"
            )
        return await self.forecaster.status.remote()

    # ---- Open Inference Protocol v2 -------------------------------------------------------------

    @api.get("/v2", summary="OIP server metadata")
    async def v2_server(self) -> dict:
        return {
            "name": SERVICE_NAME,
            "version": SERVICE_VERSION,
            "extensions": ["binary_tensor_data"],
        }

    @api.get("/v2/health/live", summary="OIP liveness")
    async def v2_live(self) -> dict:
        return {"live": True}

    @api.get("/v2/health/ready", summary="OIP readiness")
    async def v2_ready(self) -> JSONResponse:
        ready = all((await self._readiness()).values())
        return readiness_reply({"ready": ready}, ready)

    @api.get("/v2/models/{name}", summary="OIP model metadata")
    async def v2_model(self, name: str) -> dict:
        self._model(name)
        try:
            info = await self._info(name)
        except Exception:
            raise NotReady(f"model {name!r} is not ready yet") from None
        return protocol.model_metadata(info, platform=f"{info['runtime']}_{info['device']}")

    @api.get("/v2/models/{name}/ready", summary="OIP model readiness")
    async def v2_model_ready(self, name: str) -> JSONResponse:
        self._model(name)
        ready = (await self._readiness()).get(name, False)
        return readiness_reply({"name": name, "ready": ready}, ready)

    @api.get("/v2/models/{name}/versions/{version}", summary="OIP model metadata for a version")
    async def v2_model_version(self, name: str, version: str) -> dict:
        if self._model(name).version != version:
            raise ModelNotFound(f"model {name!r} has no version {version!r}")
        return await self.v2_model(name)

    @api.post(
        "/v2/models/{name}/infer",
        summary="OIP inference: BYTES `image` or FP32 `pixels` [N,3,H,W]",
        openapi_extra=bodies.with_request_id(bodies.INFER),
    )
    async def v2_infer(self, name: str, request: Request) -> Response:
        request_id = current_request_id()

        async def handle() -> tuple[Response, list[int]]:
            model = self._model(name)
            limits = self.config.limits
            body = await read_body(request, limits.max_body_bytes)
            header_length = protocol.parse_header_length(
                request.headers.get("inference-header-content-length")
            )
            req = await parse_off_loop(
                len(body), protocol.parse_infer_request, body, header_length, limits
            )
            k = parse_top_k(req.parameters.get("top_k"), limits)
            images = protocol.images_from_tensors(
                req.inputs, self.preprocess[name].crop, limits.max_images_per_request
            )
            self.metrics[name].observe_images_per_request(len(images))
            result, _ = await self._answer(name, principal_of(request), request_id, images, k)
            outputs = protocol.prediction_outputs(result["predictions"], self.labels[name], k)
            content, headers = protocol.encode_infer_response(
                name, model.version, req.id or request_id, outputs, req.requested_outputs
            )
            return Response(content, headers=headers, media_type=headers["Content-Type"]), result[
                "batch_sizes"
            ]

        return await self._measured(name if name in self.models else "unknown", request_id, handle)
