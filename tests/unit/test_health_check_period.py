"""Every deployment is health-checked often enough that a dead one is replaced
within seconds, not at Serve's default 10 s period (docs/RELIABILITY.md, faults under load)."""

from __future__ import annotations

from serve_app.config import HEALTH_CHECK_PERIOD_S
from serve_app.quality.monitor import QualityMonitor
from serve_app.serving.shadow_service import ShadowMonitor


def test_the_period_is_shorter_than_serves_default():
    from ray.serve._private.constants import DEFAULT_HEALTH_CHECK_PERIOD_S

    assert HEALTH_CHECK_PERIOD_S < DEFAULT_HEALTH_CHECK_PERIOD_S


def test_quality_and_shadow_monitors_use_it():
    for deployment in (QualityMonitor, ShadowMonitor):
        config = deployment._deployment_config
        assert config.health_check_period_s == HEALTH_CHECK_PERIOD_S


def test_the_forecaster_uses_it():
    from serve_app.autoscaling.forecaster_config import ForecasterConfig
    from serve_app.autoscaling.forecaster_service import build_forecaster

    app = build_forecaster(ForecasterConfig())
    config = app._bound_deployment._deployment_config
    assert config.health_check_period_s == HEALTH_CHECK_PERIOD_S


def test_recognizers_use_it():
    from serve_app.app import recognizer_options
    from serve_app.config import ModelConfig

    options = recognizer_options(ModelConfig(name="m"), gpu_available=False)
    assert options["health_check_period_s"] == HEALTH_CHECK_PERIOD_S
