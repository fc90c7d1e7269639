"""The application builder `serve run` calls: the only place that binds deployments together."""

from __future__ import annotations

import logging

from ray.serve import Application

from serve_app.autoscaling.deployment_policy import app_forecaster, autoscaling_options
from serve_app.autoscaling.forecaster_config import ForecasterConfig
from serve_app.config import (
    HEALTH_CHECK_PERIOD_S,
    AppConfig,
    ModelConfig,
    recognizer_deployment_name,
)
from serve_app.serving.auth_middleware import missing_keys
from serve_app.serving.ingress import Ingress
from serve_app.serving.recognizer import Recognizer

log = logging.getLogger("ray.serve")

# glibc returns every large activation buffer to the OS and page-faults it back on the next batch;
# keeping freed memory in the heap removed up to a 2.7x slowdown of torch on CPU here
# (docs/PERFORMANCE.md).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def cluster_has_gpu() -> bool:
    """Whether the Ray cluster this builder runs in offers any GPU."""
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def recognizer_options(
    m: ModelConfig, gpu_available: bool, forecaster: ForecasterConfig | None = None
) -> dict:
    """Ray Serve options for one model's deployment: resources, queue bounds, replicas or
    autoscaling (with the forecast policy's kwargs completed; invalid ones raise)."""
    use_gpu = m.device == "cuda" or (m.device == "auto" and gpu_available)
    env = {**MALLOC_ENV, "OMP_NUM_THREADS": str(m.num_threads)}
    options: dict = {
        "name": recognizer_deployment_name(m.name),
        "ray_actor_options": {
            "num_cpus": m.num_cpus,
            "num_gpus": m.num_gpus if use_gpu else 0,
            "runtime_env": {"env_vars": env},
        },
        "max_ongoing_requests": m.max_ongoing_requests,
        "max_queued_requests": m.max_queued_requests,
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
    }
    autoscaling = autoscaling_options(m, forecaster)
    if autoscaling is not None:
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = m.num_replicas
    return options


def deployment_options(cfg: AppConfig, gpu_available: bool) -> dict[str, dict]:
    """Every model's Serve options by model name; invalid policy kwargs stop `serve run` here.

    (Inside the controller the policy never raises: it would hold the replica count instead.)
    """
    forecaster = app_forecaster(cfg)
    return {m.name: recognizer_options(m, gpu_available, forecaster) for m in cfg.models}


def cpu_shortfall(cfg: AppConfig, cluster_cpus: float) -> str | None:
    """Why the application at its max replicas asks for more CPUs than the cluster has, or None if
    it fits.

    Ray places a replica only where its logical CPUs are free: a scale-up past the cluster's CPUs
    leaves the extra replicas pending, and the policy's target is then never reached.
    """
    parts = [
        (
            f"{m.max_replicas()} x {recognizer_deployment_name(m.name)} at {m.num_cpus:g}",
            m.max_replicas() * m.num_cpus,
        )
        for m in cfg.models
    ]
    parts.append(
        (
            f"{cfg.ingress.num_replicas} x Ingress at {cfg.ingress.num_cpus:g}",
            cfg.ingress.num_replicas * cfg.ingress.num_cpus,
        )
    )
    forecaster = app_forecaster(cfg)
    if forecaster is not None:
        parts.append((f"Forecaster at {forecaster.num_cpus:g}", forecaster.num_cpus))
    demand = sum(cpus for _, cpus in parts)
    if demand <= cluster_cpus + 1e-9:
        return None
    detail = " + ".join(text for text, cpus in parts if cpus > 0)
    return (
        f"at max replicas the application asks for {demand:g} CPUs ({detail}) but the cluster has "
        f"{cluster_cpus:g}: replicas beyond that stay pending until nodes are added; lower "
        "num_cpus or max_replicas, or add nodes"
    )


def warn_if_replicas_do_not_fit(cfg: AppConfig) -> None:
    """One warning at start-up when max replicas cannot all be placed on the cluster as it is
    now."""
    import ray

    if ray.is_initialized():
        problem = cpu_shortfall(cfg, ray.cluster_resources().get("CPU", 0.0))
        if problem:
            log.warning(problem)


def build_app(args: dict) -> Application:
    """Build the whole application from the `args` of configs/serve_config.yaml."""
    cfg = AppConfig.model_validate(args)
    # Here the deploy fails with the reason in `serve status`; each Ingress replica checks again
    # on its own node, where the keys file has to be too.
    problem = missing_keys(cfg.auth)
    if problem:
        raise ValueError(problem)
    options = deployment_options(cfg, cluster_has_gpu())
    warn_if_replicas_do_not_fit(cfg)
    limits = cfg.limits.model_dump()
    recognizers = {
        m.name: Recognizer.options(**options[m.name]).bind(m.model_dump(), limits)
        for m in cfg.models
    }
    quality = None
    if cfg.quality.enabled:
        from serve_app.quality.monitor import QualityMonitor

        quality = QualityMonitor.options(name="QualityMonitor", num_replicas=1).bind(
            **quality_settings(cfg)
        )
    forecaster = None
    if cfg.forecaster:
        from serve_app.autoscaling.forecaster_service import build_forecaster

        forecaster = build_forecaster(cfg.forecaster)
    shadow = None
    if any(m.shadow is not None for m in cfg.models):
        from serve_app.serving.shadow_service import ShadowMonitor

        shadow = ShadowMonitor.options(name="ShadowMonitor").bind(cfg.model_dump(), quality)
    return Ingress.options(
        name="Ingress",
        num_replicas=cfg.ingress.num_replicas,
        max_ongoing_requests=cfg.ingress.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.ingress.num_cpus},
    ).bind(cfg.model_dump(), recognizers, quality, forecaster, shadow)


def quality_settings(cfg: AppConfig) -> dict:
    """The QualityMonitor's arguments: the quality section, each model's class names, and each
    key's feedback rate (held there across Ingress replicas)."""
    from serve_app.serving.models import load_labels

    return {
        "config": cfg.quality.model_dump(exclude={"enabled"}),
        "labels": {m.name: load_labels(m.labels) for m in cfg.models},
        "feedback_rate": {
            "rate_per_s": cfg.auth.feedback_rate_per_s,
            "burst": cfg.auth.feedback_burst,
        },
    }
