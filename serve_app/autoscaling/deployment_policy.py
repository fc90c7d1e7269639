"""How a model entry's `autoscaling_config` reaches Serve when it names the forecast policy.

The YAML leaves out what the application already knows: the policy's `model_name` and `deployment`
come from the model entry, and `predictive.lead_time_s` and `predictive.landing` from the
Forecaster that publishes the forecast at that lead, planned into steps or not.
`policy_kwargs_for` fills them in and validates the result, so a mistake stops `serve run` with the
key named instead of surfacing inside the controller.
"""

from __future__ import annotations

import copy
from typing import Any

from serve_app.autoscaling.forecaster_config import ForecasterConfig
from serve_app.autoscaling.rules import PolicyRules
from serve_app.config import AppConfig, AutoscalingSpec, ModelConfig, recognizer_deployment_name
from serve_app.errors import ConfigError

# The `policy_function` of the forecast policy: the leaf module Serve may pickle by value.
POLICY_FUNCTION = "serve_app.autoscaling.serve_policy:ForecastPolicy"


def uses_forecast_policy(scaling: AutoscalingSpec | None) -> bool:
    """Whether this autoscaling_config runs the forecast policy."""
    return (
        scaling is not None
        and scaling.policy is not None
        and scaling.policy.policy_function == POLICY_FUNCTION
    )


def app_forecaster(cfg: AppConfig) -> ForecasterConfig | None:
    """The application's validated `forecaster:` section, or None when it runs no Forecaster."""
    return ForecasterConfig.from_dict(cfg.forecaster) if cfg.forecaster else None


def policy_kwargs_for(model: ModelConfig, forecaster: ForecasterConfig | None) -> dict[str, Any]:
    """The forecast policy's kwargs for `model` as Serve receives them: the YAML's, completed.

    Raises pydantic's ValidationError for invalid kwargs and ConfigError when the YAML's
    `predictive.lead_time_s` contradicts `forecaster.lead_time_s`.
    """
    policy = model.autoscaling_config.policy if model.autoscaling_config else None
    kwargs = copy.deepcopy(policy.policy_kwargs) if policy else {}
    kwargs.setdefault("model_name", model.name)
    kwargs.setdefault("deployment", recognizer_deployment_name(model.name))
    # Only a predictive section already written gets the lead time: adding one would switch the
    # forecast floor on.
    predictive = kwargs.get("predictive")
    if forecaster is not None and kwargs["model_name"] in forecaster.models and predictive:
        written = predictive.get("lead_time_s")
        if written is not None and written != forecaster.lead_time_s:
            raise ConfigError(
                f"model {model.name!r}: policy_kwargs.predictive.lead_time_s ({written}) differs "
                f"from forecaster.lead_time_s ({forecaster.lead_time_s:g}), the lead the forecast "
                "is published at; leave the policy's out (the application copies the "
                "forecaster's)"
            )
        predictive["lead_time_s"] = forecaster.lead_time_s
        landing = "target_fill" if forecaster.plan_changes_per_day is None else "floor"
        written = predictive.get("landing")
        if written is not None and written != landing:
            raise ConfigError(
                f"model {model.name!r}: policy_kwargs.predictive.landing ({written}) does not fit "
                f"forecaster.plan_changes_per_day ({forecaster.plan_changes_per_day}): a planned "
                "forecast lands on its steps (floor), an unplanned one at target_fill; leave the "
                "policy's out (the application sets it)"
            )
        predictive["landing"] = landing
    PolicyRules.model_validate(kwargs)
    return kwargs


def autoscaling_options(
    model: ModelConfig, forecaster: ForecasterConfig | None
) -> dict[str, Any] | None:
    """The `autoscaling_config` Serve receives for `model`, or None for fixed replicas."""
    scaling = model.autoscaling_config
    if scaling is None:
        return None
    options = scaling.serve_options()
    if uses_forecast_policy(scaling):
        options["policy"]["policy_kwargs"] = policy_kwargs_for(model, forecaster)
    return options
