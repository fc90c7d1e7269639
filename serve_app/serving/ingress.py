"""The HTTP front: REST /v1 and Open Inference Protocol /v2 routes, request parsing, error mapping.

Every error becomes `{"error": {"code": ..., "message": ...}}` here and nowhere else. The ingress
checks what it can without decoding (sizes, counts, content types, OIP structure) and hands the
encoded images to the model's Recognizer, which decodes them beside its inference thread.
"""

import asyncio
import base64
import binascii
import json
import logging
import time
import uuid
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

import serve_app.serving.protocol as protocol
from serve_app.config import AppConfig, ModelConfig
from serve_app.errors import (
    BadRequest,
    ModelNotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    UnprocessableEntity,
    UnsupportedMediaType,
)
from serve_app.monitoring.dashboard import router as dashboard_router
from serve_app.monitoring.metrics import (
    STATUS_CLIENT_ERROR,
    STATUS_REJECTED,
    STATUS_SERVER_ERROR,
    STATUS_SUCCESS,
    ServiceMetrics,
)
from serve_app.serving.logs import log_request
from serve_app.serving.models import default_preprocess, load_labels

log = logging.getLogger("ray.serve")

# Serve's proxy gives every request an id (the client's X-Request-Id when it sends one), logs it,
# and returns it in this header; we use the same id for predictions and feedback so one id ties them
# all.
REQUEST_ID_HEADER = "X-Request-Id"
READY_TIMEOUT_S = 2.0
RECORD_FLUSH_INTERVAL_S = 0.02
MAX_PENDING_RECORDS = 10_000

api = FastAPI(
    title="recognition-serve",
    version="0.1.0",
    description="Image recognition on Ray Serve. REST under /v1, Open Inference Protocol v2 under /v2.",
)

# /dashboard: live charts from Prometheus, proxied here so the page needs no CORS.
api.include_router(dashboard_router)


def _error_response(err: ServiceError) -> JSONResponse:
    return JSONResponse(err.to_json(), status_code=err.status, headers=err.headers)


@api.exception_handler(ServiceError)
async def _service_error(_: Request, err: ServiceError) -> JSONResponse:
    return _error_response(err)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
    details = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
    return _error_response(UnprocessableEntity(f"invalid request: {details}"))


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
    return JSONResponse(
        {"error": {"code": code, "message": str(err.detail)}}, status_code=err.status_code
    )


@api.exception_handler(Exception)
async def _unexpected_error(_: Request, err: Exception) -> JSONResponse:
    log.exception("unexpected error")
    return JSONResponse(
        {"error": {"code": "internal_error", "message": "internal error"}}, status_code=500
    )


def current_request_id() -> str:
    """The id Serve assigned to the request being handled (a fresh uuid outside a request)."""
    from ray.serve.context import _get_serve_request_context

    return _get_serve_request_context().request_id or uuid.uuid4().hex


def _status_label(status_code: int, err: ServiceError | None) -> str:
    if isinstance(err, (Overloaded, NotReady)):
        return STATUS_REJECTED
    if status_code < 400:
        return STATUS_SUCCESS
    return STATUS_CLIENT_ERROR if status_code < 500 else STATUS_SERVER_ERROR


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
        try:
            doc = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from None
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
        f"content type {content_type or '(none)'!r} is not accepted: use multipart/form-data, image/*, "
        f"application/octet-stream or application/json"
    )


@serve.deployment
@serve.ingress(api)
class Ingress:
    """Routes requests to the Recognizer of the named model and records predictions for quality
    tracking."""

    def __init__(
        self,
        config: dict,
        recognizers: dict[str, DeploymentHandle],
        quality: DeploymentHandle | None,
        forecaster: DeploymentHandle | None = None,
    ):
        self.config = AppConfig.model_validate(config)
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
        self._pending_records: list[dict] = []
        self._flusher: asyncio.Task | None = None

    # ---- helpers -------------------------------------------------------------------------------

    def _model(self, name: str) -> ModelConfig:
        try:
            return self.models[name]
        except KeyError:
            raise ModelNotFound(
                f"no model named {name!r}; served models: {sorted(self.models)}"
            ) from None

    def _top_k(self, raw: Any) -> int:
        limits = self.config.limits
        if raw is None or raw == "":
            return limits.default_top_k
        try:
            k = int(raw)
        except (TypeError, ValueError):
            raise UnprocessableEntity(f"top_k must be an integer, got {raw!r}") from None
        if not 1 <= k <= limits.max_top_k:
            raise UnprocessableEntity(f"top_k must be between 1 and {limits.max_top_k}, got {k}")
        return k

    def _check_count(self, n: int) -> None:
        limit = self.config.limits.max_images_per_request
        if n > limit:
            raise PayloadTooLarge(f"{n} images in one request, over the limit of {limit}")

    async def _recognize(self, name: str, images: list, k: int) -> dict:
        """Run the model's Recognizer on encoded images or preprocessed arrays; map its errors and
        back-pressure."""
        try:
            result = await self.recognizers[name].predict.remote(images, k)
        except BackPressureError:
            raise Overloaded(
                f"model {name!r} is overloaded: its queue is full, retry shortly",
                retry_after_s=self.config.ingress.overload_retry_after_s,
            ) from None
        if "error" in result:
            raise ServiceError.from_wire(result["error"])
        return result

    def _record(self, request_id: str, name: str, predictions: list[dict]) -> None:
        """Queue top-1 predictions for the QualityMonitor; sent in small batches off the request
        path."""
        if self.quality is None:
            return
        version = self.models[name].version
        self._pending_records.extend(
            {
                "request_id": request_id,
                "index": i,
                "model_name": name,
                "model_version": version,
                "class_id": p["class_ids"][0],
                "score": p["scores"][0],
            }
            for i, p in enumerate(predictions)
        )
        overflow = len(self._pending_records) - MAX_PENDING_RECORDS
        if overflow > 0:
            # Only when the monitor is unreachable for long: say what is dropped rather than grow
            # forever.
            del self._pending_records[:overflow]
            log.warning(
                "quality monitor unreachable: dropped %d oldest predictions from the send queue",
                overflow,
            )
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_records())

    async def _flush_records(self) -> None:
        # One call per short interval instead of one per request: the monitor hop costs CPU on both
        # sides. Loops until nothing is pending, so records queued during a send are not left
        # behind.
        while self._pending_records:
            await asyncio.sleep(RECORD_FLUSH_INTERVAL_S)
            batch, self._pending_records = self._pending_records, []
            try:
                await self.quality.record.remote(batch)
            except Exception:
                log.exception("sending %d predictions to the quality monitor failed", len(batch))

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
                err, response = e, _error_response(e)
            except Exception:
                log.exception("request %s failed", request_id)
                err = None
                response = JSONResponse(
                    {
                        "error": {
                            "code": "internal_error",
                            "message": f"internal error (request {request_id})",
                        }
                    },
                    status_code=500,
                )
        latency = time.perf_counter() - started
        status = _status_label(response.status_code, err)
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
        return dict(zip(names, await asyncio.gather(*(one(n) for n in names))))

    @api.get("/readyz", summary="Ready when every model has a loaded, warmed-up replica")
    async def readyz(self) -> JSONResponse:
        ready = await self._readiness()
        ok = all(ready.values())
        return JSONResponse({"ready": ok, "models": ready}, status_code=200 if ok else 503)

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
    )
    async def predict(self, name: str, request: Request) -> Response:
        request_id = current_request_id()

        async def handle() -> tuple[Response, list[int]]:
            started = time.perf_counter()
            self._model(name)
            body = await read_body(request, self.config.limits.max_body_bytes)
            images, fields = await images_from_request(request, body)
            k = self._top_k(request.query_params.get("top_k", fields.get("top_k")))
            self._check_count(len(images))
            self.metrics[name].observe_images_per_request(len(images))
            sent = time.perf_counter()
            result = await self._recognize(name, images, k)
            round_trip = time.perf_counter() - sent
            self._record(request_id, name, result["predictions"])
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
                            for c, s in zip(p["class_ids"], p["scores"])
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
    )
    async def feedback(self, request: Request) -> JSONResponse:
        if self.quality is None:
            raise UnprocessableEntity(
                "quality tracking is disabled in this deployment (quality.enabled: false)"
            )
        body = await read_body(request, self.config.limits.max_body_bytes)
        try:
            doc = json.loads(body) if body else None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from None
        single = isinstance(doc, dict) and "items" not in doc
        items = [doc] if single else (doc.get("items") if isinstance(doc, dict) else doc)
        if not isinstance(items, list) or not items:
            raise BadRequest(
                'send {"request_id": "...", "label": "tabby" | 281, "index": 0} or {"items": [...]}'
            )
        for i, item in enumerate(items):
            if (
                not isinstance(item, dict)
                or not isinstance(item.get("request_id"), str)
                or "label" not in item
            ):
                raise BadRequest(
                    f"items[{i}] needs a string request_id and a label (name or class id)"
                )
            if not isinstance(item.get("label"), (str, int)) or isinstance(item.get("label"), bool):
                raise UnprocessableEntity(
                    f"items[{i}].label must be a label name or an integer class id"
                )
            if not isinstance(item.get("index", 0), int) or item.get("index", 0) < 0:
                raise UnprocessableEntity(f"items[{i}].index must be a non-negative integer")
        results = await self.quality.feedback.remote(items)
        if single:
            r = results[0]
            return JSONResponse(r, status_code=r.get("http_status", 200))
        return JSONResponse({"results": results})

    @api.get(
        "/v1/models/{name}/quality", summary="Accuracy, precision, recall, F1 and drift of a model"
    )
    async def quality_snapshot(self, name: str) -> dict:
        self._model(name)
        if self.quality is None:
            raise UnprocessableEntity(
                "quality tracking is disabled in this deployment (quality.enabled: false)"
            )
        return await self.quality.snapshot.remote(name)

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

    # ---- Open Inference Protocol v2
    # ---------------------------------------------------------------

    @api.get("/v2", summary="OIP server metadata")
    async def v2_server(self) -> dict:
        return {
            "name": "recognition-serve",
            "version": "0.1.0",
            "extensions": ["binary_tensor_data"],
        }

    @api.get("/v2/health/live", summary="OIP liveness")
    async def v2_live(self) -> dict:
        return {"live": True}

    @api.get("/v2/health/ready", summary="OIP readiness")
    async def v2_ready(self) -> JSONResponse:
        ready = all((await self._readiness()).values())
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

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
        return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)

    @api.get("/v2/models/{name}/versions/{version}", summary="OIP model metadata for a version")
    async def v2_model_version(self, name: str, version: str) -> dict:
        if self._model(name).version != version:
            raise ModelNotFound(f"model {name!r} has no version {version!r}")
        return await self.v2_model(name)

    @api.post(
        "/v2/models/{name}/infer", summary="OIP inference: BYTES `image` or FP32 `pixels` [N,3,H,W]"
    )
    async def v2_infer(self, name: str, request: Request) -> Response:
        request_id = current_request_id()

        async def handle() -> tuple[Response, list[int]]:
            model = self._model(name)
            body = await read_body(request, self.config.limits.max_body_bytes)
            header_length = request.headers.get("inference-header-content-length")
            try:
                header_length_int = int(header_length) if header_length is not None else None
            except ValueError:
                raise BadRequest(
                    f"Inference-Header-Content-Length {header_length!r} is not a number"
                ) from None
            req = protocol.parse_infer_request(body, header_length_int)
            k = self._top_k(req.parameters.get("top_k"))
            images = self._images_from_tensors(name, req.inputs)
            self.metrics[name].observe_images_per_request(len(images))
            result = await self._recognize(name, images, k)
            self._record(request_id, name, result["predictions"])
            labels = self.labels[name]
            preds = result["predictions"]
            n = len(preds)
            outputs = {
                protocol.OUTPUT_SCORES: ("FP32", [n, k], [p["scores"] for p in preds]),
                protocol.OUTPUT_CLASS_IDS: ("INT64", [n, k], [p["class_ids"] for p in preds]),
                protocol.OUTPUT_LABELS: (
                    "BYTES",
                    [n, k],
                    [labels[c].encode() for p in preds for c in p["class_ids"]],
                ),
            }
            content, headers = protocol.encode_infer_response(
                name, model.version, req.id or request_id, outputs, req.requested_outputs
            )
            return Response(content, headers=headers, media_type=headers["Content-Type"]), result[
                "batch_sizes"
            ]

        return await self._measured(name if name in self.models else "unknown", request_id, handle)

    def _images_from_tensors(self, name: str, inputs: list[protocol.InputTensor]) -> list:
        """Encoded images from BYTES inputs and preprocessed rows from FP32 inputs, checked for
        shape and count."""
        crop = self.preprocess[name].crop
        images: list = []
        for t in inputs:
            if t.datatype == "BYTES":
                if t.name != protocol.IMAGE_INPUT and len(inputs) > 1:
                    raise BadRequest(
                        f"unknown input {t.name!r}: use {protocol.IMAGE_INPUT!r} (BYTES)"
                    )
                images.extend(t.data)
            elif t.datatype == "FP32":
                if len(t.shape) != 4 or t.shape[1:] != [3, crop, crop]:
                    raise BadRequest(
                        f"input {t.name!r}: FP32 input must have shape [N, 3, {crop}, {crop}], got {t.shape}"
                    )
                if not np.isfinite(t.data).all():
                    raise BadRequest(f"input {t.name!r}: FP32 data contains NaN or infinity")
                images.extend(np.ascontiguousarray(row, dtype=np.float32) for row in t.data)
            else:
                raise BadRequest(
                    f"input {t.name!r}: datatype {t.datatype} is not accepted; send BYTES `image` or FP32 `pixels`"
                )
            self._check_count(len(images))
        if not images:
            raise BadRequest("the request holds no images")
        if any(len(i) == 0 for i in images if isinstance(i, bytes)):
            raise BadRequest("an image element is empty")
        return images
