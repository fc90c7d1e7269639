"""Configuration: one pydantic model per YAML section of `args` in configs/serve_config.yaml.

Every field carries a description so docs/CONFIG.md is generated from this file
(`recserve config-doc`), never kept by hand. Validation errors quote the bad value.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from serve_app.config_base import Section
from serve_app.overload_config import OverloadConfig
from serve_app.quality_config import QualityConfig

MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
# A replica killed while no call was in flight to it is noticed only at its next health check
# (Serve's default period: 10 s); the replacement's start then waits that long.
HEALTH_CHECK_PERIOD_S = 2.0


class PreprocessSpec(Section):
    """How an image becomes the model's input tensor."""

    resize: int = Field(
        256, ge=16, le=4096, description="Shorter side is resized to this many pixels (bilinear)."
    )
    crop: int = Field(
        224, ge=16, le=4096, description="Centre crop to a square of this many pixels."
    )
    mean: tuple[float, float, float] = Field(
        (0.485, 0.456, 0.406),
        description="Per-channel mean subtracted after scaling pixels to [0, 1].",
    )
    std: tuple[float, float, float] = Field(
        (0.229, 0.224, 0.225),
        description="Per-channel standard deviation divided after subtracting the mean.",
    )

    @model_validator(mode="after")
    def _crop_fits(self) -> "PreprocessSpec":
        if self.crop > self.resize:
            raise ValueError(f"crop ({self.crop}) must not exceed resize ({self.resize})")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        return self


class AutoscalingPolicySpec(Section):
    """The policy Serve runs for the deployment instead of its own request-based one."""

    policy_function: str = Field(
        ...,
        description="Import path `module:Class` of the policy. This service's forecast policy is "
        "`serve_app.autoscaling.serve_policy:ForecastPolicy` (docs/AUTOSCALING.md).",
    )
    policy_kwargs: dict[str, Any] = Field(
        {},
        description="Keyword arguments Serve builds the policy with; for the forecast policy see "
        "`policy_kwargs` below, checked when the application is built.",
    )


class AutoscalingSpec(Section):
    """Ray Serve's `autoscaling_config` of one model's deployment, the keys this service uses.

    Defaults are those of Ray's own `ray.serve.config.AutoscalingConfig`, so a key left out means
    what it means to Serve.
    """

    min_replicas: int = Field(1, ge=0, description="Fewest replicas.")
    max_replicas: int = Field(1, ge=1, description="Most replicas.")
    initial_replicas: int | None = Field(
        None, ge=0, description="Replicas at first deployment; empty means min_replicas."
    )
    upscale_delay_s: float = Field(
        30.0, ge=0, description="How long Serve waits before acting on a scale-up decision."
    )
    downscale_delay_s: float = Field(
        600.0, ge=0, description="How long Serve waits before acting on a scale-down decision."
    )
    metrics_interval_s: float = Field(
        10.0, gt=0, description="How often replicas report their ongoing requests to Serve."
    )
    look_back_period_s: float = Field(
        30.0, gt=0, description="Window over which Serve averages the ongoing requests."
    )
    target_ongoing_requests: float = Field(
        2.0,
        gt=0,
        description="Ongoing requests per replica that Serve's own request-based policy aims at.",
    )
    policy: AutoscalingPolicySpec | None = Field(
        None, description="A custom policy; empty means Serve's request-based policy."
    )

    @model_validator(mode="after")
    def _replicas_ordered(self) -> "AutoscalingSpec":
        initial = self.initial_replicas
        if self.max_replicas < self.min_replicas or (
            initial is not None and not self.min_replicas <= initial <= self.max_replicas
        ):
            raise ValueError(
                "replicas must satisfy min_replicas <= initial_replicas <= max_replicas, got "
                f"{self.min_replicas}, {initial}, {self.max_replicas}"
            )
        return self

    def start_replicas(self) -> int:
        """Replicas at first deployment: initial_replicas, else min_replicas (as Serve does)."""
        return self.initial_replicas if self.initial_replicas is not None else self.min_replicas

    def serve_options(self) -> dict[str, Any]:
        """The `autoscaling_config` dict handed to Serve, every key written out."""
        return self.model_dump(exclude_none=True)


class ShadowSpec(Section):
    """A candidate model that sees a share of this model's live traffic; its answers are compared
    with this model's and never returned."""

    model: str = Field(..., description="Name of another model in `models:`, the candidate.")
    fraction: float = Field(
        0.1, ge=0.0, le=1.0, description="Share of this model's requests also sent to it."
    )


def recognizer_deployment_name(model_name: str) -> str:
    """Deployment name of a model's Recognizer (the `deployment` label of its metrics)."""
    return f"Recognizer_{model_name}"


class ModelConfig(Section):
    """One served model: becomes its own Recognizer deployment with its own replicas and
    autoscaling."""

    name: str = Field(
        ..., description="Name in the API: /v1/models/{name}/predict, /v2/models/{name}/infer."
    )
    version: str = Field("1", description="Version reported in responses and metric labels.")
    architecture: str = Field(
        "efficientnet_lite0",
        description="`efficientnet_lite0` (embedded weights) or any torchvision classification "
        "model name (e.g. `resnet50`, `mobilenet_v3_large`).",
    )
    weights: str | None = Field(
        None,
        description="Path to a local state-dict file (.pth/.pt). Empty means the embedded "
        "weights, which only `efficientnet_lite0` has. Relative paths are resolved against the "
        "working directory.",
    )
    labels: str = Field(
        "imagenet",
        description="`imagenet` (the 1,000 ImageNet class names that ship with torchvision) or a "
        "path to a text file with one label per line, in class-id order.",
    )
    preprocess: PreprocessSpec | None = Field(
        None,
        description="Preprocessing; empty means the architecture's default (see docs/MODELS.md).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="`auto` uses a GPU when the cluster has one, else the CPU."
    )
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp16",
        description="fp16 applies on CUDA only; the CPU runs fp32. `int8`: ONNX Runtime static "
        "quantization on CPU (needs `device: cpu`; docs/MODELS.md), built once and cached.",
    )
    runtime: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto",
        description="`auto`: ONNX Runtime on CPU when its outputs agree with torch on real "
        "photos, torch otherwise and on CUDA.",
    )
    num_threads: int = Field(
        1, ge=1, le=64, description="Intra-op threads of the model runtime in each replica."
    )
    decode_threads: int = Field(
        2, ge=1, le=64, description="Threads decoding images in each replica, beside inference."
    )
    num_gpus: float = Field(
        0.25, gt=0, le=8, description="GPUs each replica asks Ray for when running on CUDA."
    )
    num_cpus: float = Field(1.0, gt=0, le=64, description="CPUs each replica asks Ray for.")
    max_batch_size: int = Field(16, ge=1, le=256, description="Largest batch @serve.batch forms.")
    batch_wait_timeout_s: float = Field(
        0.002,
        ge=0,
        le=5,
        description="How long a batch waits to fill before it runs anyway (raise it on GPU, where "
        "batching pays).",
    )
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests one replica holds at once (Ray Serve)."
    )
    max_queued_requests: int = Field(
        256,
        ge=-1,
        description="Requests waiting for a replica beyond which new ones are shed with 503 (-1: "
        "unbounded).",
    )
    num_replicas: int = Field(
        1, ge=1, description="Fixed replica count, used when `autoscaling_config` is empty."
    )
    autoscaling_config: AutoscalingSpec | None = Field(
        None, description="Ray Serve autoscaling; empty means `num_replicas` fixed replicas."
    )
    overload: OverloadConfig = Field(
        default_factory=OverloadConfig,
        description="Tiered circuit breaking: smaller batches, then shedding, under overload.",
    )
    shadow: ShadowSpec | None = Field(
        None,
        description="Send a share of this model's requests also to another configured model, "
        "off the response path, and compare their answers (GET /v1/models/{name}/shadow).",
    )

    def max_replicas(self) -> int:
        """The most replicas this model's deployment may run."""
        if self.autoscaling_config is not None:
            return self.autoscaling_config.max_replicas
        return self.num_replicas

    @model_validator(mode="after")
    def _int8_runs_on_cpu_onnxruntime(self) -> "ModelConfig":
        if self.precision == "int8" and (self.device != "cpu" or self.runtime == "torch"):
            raise ValueError(
                f"model {self.name!r}: precision int8 is ONNX Runtime's static quantization on the "
                f"CPU; set `device: cpu` and `runtime: auto` or `onnxruntime` (got device "
                f"{self.device!r}, runtime {self.runtime!r}); on a GPU use fp16"
            )
        return self

    @field_validator("name")
    @classmethod
    def _name_is_url_safe(cls, v: str) -> str:
        if not re.match(MODEL_NAME_PATTERN, v):
            raise ValueError(
                f"model name {v!r} must match {MODEL_NAME_PATTERN} (it appears in URLs and labels)"
            )
        return v


class LimitsConfig(Section):
    """Bounds on what one request may ask of the service."""

    max_body_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="Largest request body; more gets 413."
    )
    max_image_pixels: int = Field(
        40_000_000,
        ge=1,
        description="Largest width*height, checked from the header before decoding (413).",
    )
    max_aspect_ratio: float = Field(
        20.0,
        ge=1,
        description="Largest long side / short side, checked from the header before decoding "
        "(422).",
    )
    max_jpeg_scans: int = Field(
        64,
        ge=1,
        description="Most scans in a JPEG, counted from its markers before decoding (422): each "
        "scan of a progressive JPEG is a pass over the whole image. Encoders write 1 (baseline), "
        "about 10 (progressive), at most 60 (libjpeg's progression of 10 components).",
    )
    max_decoded_bytes: int = Field(
        128 * 1024 * 1024,
        ge=1024,
        description="Largest decoded size of one image: width x height x bands x bytes per "
        "sample of the mode it decodes to (after JPEG's reduced-scale decoding), checked from "
        "the header before decoding (413).",
    )
    max_request_decoded_bytes: int = Field(
        512 * 1024 * 1024,
        ge=1024,
        description="Largest sum of decoded sizes over all images of one request, checked from "
        "their headers before any is decoded (413).",
    )
    max_images_per_request: int = Field(
        32, ge=1, description="Most images in one request; more gets 413."
    )
    max_top_k: int = Field(100, ge=1, description="Largest allowed top_k; out of range gets 422.")
    default_top_k: int = Field(5, ge=1, description="top_k when the request does not say.")
    max_json_depth: int = Field(
        32, ge=2, description="Deepest nesting of arrays and objects in a JSON body; more gets 400."
    )
    max_tensor_elements: int = Field(
        16_777_216,
        ge=1,
        description="Most elements one OIP input may declare in its shape, checked before any "
        "allocation; more gets 413.",
    )
    max_feedback_items: int = Field(
        1000, ge=1, description="Most feedback items in one request; more gets 413."
    )
    max_feedback_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest feedback request body; more gets 413."
    )

    @model_validator(mode="after")
    def _request_budget_holds_one_image(self) -> "LimitsConfig":
        if self.max_request_decoded_bytes < self.max_decoded_bytes:
            raise ValueError(
                f"max_request_decoded_bytes ({self.max_request_decoded_bytes}) must be at least "
                f"max_decoded_bytes ({self.max_decoded_bytes}), or no image at the limit fits"
            )
        return self


class IngressConfig(Section):
    """The HTTP front deployment."""

    num_replicas: int = Field(
        1, ge=1, description="Ingress replicas (each decodes images in its own process)."
    )
    num_cpus: float = Field(0.5, gt=0, description="CPUs each ingress replica asks Ray for.")
    max_ongoing_requests: int = Field(
        256, ge=1, description="Requests one ingress replica holds at once."
    )
    overload_retry_after_s: int = Field(
        1, ge=1, description="Retry-After seconds sent with a 503 when shedding."
    )
    internal_transport: Literal["grpc", "actor"] = Field(
        "grpc",
        description="How the Ingress sends what each request causes to the deployments behind it "
        "(the predict to the model's replicas and its shadow, the prediction records to the "
        "quality monitor). `grpc`: by value over Serve's gRPC transport when the arguments are "
        "under 3 MiB, larger ones as Ray actor calls; it costs less CPU per request "
        "(docs/PERFORMANCE.md). `actor`: always Ray actor calls (arguments over 100 KB through "
        "the object store), for clusters whose nodes cannot reach each other's replica gRPC "
        "ports.",
    )


class AuthConfig(Section):
    """API keys: who may predict, send feedback, and open the admin pages (docs/SECURITY.md)."""

    keys_file: str | None = Field(
        None,
        description="JSON file of hashed API keys (`recserve keys add`); unset: "
        "$RECSERVE_API_KEYS_FILE; neither: no keys, and the API serves loopback only.",
    )
    require_keys: bool = Field(
        False,
        description="Refuse to start without a keys file holding at least one key: the "
        "application fails to build, and an Ingress replica to start, naming this setting. Set "
        "wherever the API listens beyond loopback (the cluster config does).",
    )
    reload_interval_s: float = Field(
        2.0, gt=0, description="How often the ingress looks for a changed keys file (revocations)."
    )
    feedback_rate_per_s: float = Field(
        5.0, gt=0, description="Feedback requests per second each key may send (token bucket)."
    )
    feedback_burst: int = Field(
        50, ge=1, description="Feedback requests a key may send at once before the rate applies."
    )


class AppConfig(Section):
    """Everything under `args:` of the application in configs/serve_config.yaml."""

    models: list[ModelConfig] = Field(
        ..., min_length=1, description="The models to serve, each a deployment."
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Request bounds.")
    ingress: IngressConfig = Field(default_factory=IngressConfig, description="The HTTP front.")
    quality: QualityConfig = Field(
        default_factory=QualityConfig, description="Model quality tracking."
    )
    auth: AuthConfig = Field(
        default_factory=AuthConfig, description="API keys and their rate limits."
    )
    forecaster: dict[str, Any] | None = Field(
        None,
        description="Forecaster deployment settings (see docs/AUTOSCALING.md); empty: no "
        "forecaster.",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> "AppConfig":
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique, repeated: {dupes}")
        for m in self.models:
            if m.shadow is not None and (m.shadow.model == m.name or m.shadow.model not in names):
                raise ValueError(
                    f"model {m.name!r}: shadow.model {m.shadow.model!r} must name another model "
                    f"in `models:` ({names})"
                )
        return self

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)


def load_config(path: str | Path, app_name: str | None = None) -> AppConfig:
    """Read a Serve config YAML and return the validated `args` of one application."""
    doc = yaml.safe_load(Path(path).read_text())
    apps = doc.get("applications") or []
    for app in apps:
        if app_name is None or app.get("name") == app_name:
            return AppConfig.model_validate(app.get("args") or {})
    raise ValueError(f"{path}: no application named {app_name!r} under `applications:`")
