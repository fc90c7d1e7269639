"""The application builder `serve run` calls: the only place that binds deployments together."""

from __future__ import annotations

import logging

from ray.serve import Application

from serve_app.config import AppConfig, ModelConfig, recognizer_deployment_name
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


def recognizer_options(m: ModelConfig, gpu_available: bool) -> dict:
    """Ray Serve options for one model's deployment: resources, queue bounds, replicas or
    autoscaling."""
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
    }
    if m.autoscaling_config:
        options["autoscaling_config"] = m.autoscaling_config
    else:
        options["num_replicas"] = m.num_replicas
    return options


def check_policy_kwargs(m: ModelConfig) -> None:
    """Validate our policy's kwargs at `serve run`, where a mistake stops start-up with the key
    named.

    (Inside the controller the policy never raises: it would hold the replica count instead.)
    """
    policy = (m.autoscaling_config or {}).get("policy") or {}
    if str(policy.get("policy_function", "")).startswith("serve_app.autoscaling.policy"):
        from serve_app.autoscaling.policy import PolicyRules

        PolicyRules.model_validate(policy.get("policy_kwargs") or {})


def max_replicas(m: ModelConfig) -> int:
    """The most replicas this model's deployment may run."""
    if m.autoscaling_config:
        return int(m.autoscaling_config.get("max_replicas", 1))
    return m.num_replicas


def cpu_shortfall(cfg: AppConfig, cluster_cpus: float) -> str | None:
    """Why the application at its max replicas asks for more CPUs than the cluster has, or None if
    it fits.

    Ray places a replica only where its logical CPUs are free: a scale-up past the cluster's CPUs
    leaves the extra replicas pending, and the policy's target is then never reached.
    """
    parts = [
        (
            f"{max_replicas(m)} x {recognizer_deployment_name(m.name)} at {m.num_cpus:g}",
            max_replicas(m) * m.num_cpus,
        )
        for m in cfg.models
    ]
    parts.append(
        (
            f"{cfg.ingress.num_replicas} x Ingress at {cfg.ingress.num_cpus:g}",
            cfg.ingress.num_replicas * cfg.ingress.num_cpus,
        )
    )
    if cfg.forecaster:
        from serve_app.autoscaling.forecaster_service import ForecasterConfig

        forecaster_cpus = ForecasterConfig.from_dict(cfg.forecaster).num_cpus
        parts.append((f"Forecaster at {forecaster_cpus:g}", forecaster_cpus))
    demand = sum(cpus for _, cpus in parts)
    if demand <= cluster_cpus + 1e-9:
        return None
    detail = " + ".join(text for text, cpus in parts if cpus > 0)
    return (
        f"at max replicas the application asks for {demand:g} CPUs ({detail}) but the cluster has {cluster_cpus:g}: "
        "replicas beyond that stay pending until nodes are added; lower num_cpus or max_replicas, or add nodes"
    )


def warn_if_replicas_do_not_fit(cfg: AppConfig) -> None:
    """One warning at start-up when max replicas cannot all be placed on the cluster as it is now."""
    import ray

    if ray.is_initialized():
        problem = cpu_shortfall(cfg, ray.cluster_resources().get("CPU", 0.0))
        if problem:
            log.warning(problem)


def build_app(args: dict) -> Application:
    """Build the whole application from the `args` of configs/serve_config.yaml."""
    cfg = AppConfig.model_validate(args)
    for m in cfg.models:
        check_policy_kwargs(m)
    warn_if_replicas_do_not_fit(cfg)
    gpu = cluster_has_gpu()
    limits = cfg.limits.model_dump()
    recognizers = {
        m.name: Recognizer.options(**recognizer_options(m, gpu)).bind(m.model_dump(), limits)
        for m in cfg.models
    }
    quality = None
    if cfg.quality.enabled:
        from serve_app.quality.monitor import QualityMonitor

        quality = QualityMonitor.options(name="QualityMonitor", num_replicas=1).bind(
            quality_settings(cfg)
        )
    forecaster = None
    if cfg.forecaster:
        from serve_app.autoscaling.forecaster_service import build_forecaster

        forecaster = build_forecaster(cfg.forecaster)
    return Ingress.options(
        name="Ingress",
        num_replicas=cfg.ingress.num_replicas,
        max_ongoing_requests=cfg.ingress.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.ingress.num_cpus},
    ).bind(cfg.model_dump(), recognizers, quality, forecaster)


def quality_settings(cfg: AppConfig) -> dict:
    """The QualityMonitor's settings: the store bounds, windows, and each model's labels."""
    from serve_app.serving.models import load_labels

    return {
        **cfg.quality.model_dump(exclude={"enabled"}),
        "labels": {m.name: load_labels(m.labels) for m in cfg.models},
    }
