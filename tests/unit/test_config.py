from pathlib import Path

import pytest
from pydantic import ValidationError

from serve_app.app import deployment_options, recognizer_options
from serve_app.autoscaling.deployment_policy import POLICY_FUNCTION
from serve_app.config import (
    AppConfig,
    AutoscalingPolicySpec,
    AutoscalingSpec,
    ModelConfig,
    QualityConfig,
    load_config,
)
from serve_app.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", ["configs/serve_config.yaml", "configs/serve_config.test.yaml"])
def test_shipped_configs_validate(path):
    cfg = load_config(ROOT / path)
    assert cfg.models[0].name == "efficientnet_lite0"


def test_unknown_key_is_an_error_that_names_it():
    with pytest.raises(ValidationError, match="max_batch"):
        AppConfig.model_validate({"models": [{"name": "m", "max_batch": 8}]})


def test_bad_model_name_quotes_the_value():
    with pytest.raises(ValidationError, match="'Bad Name!'"):
        ModelConfig(name="Bad Name!")


def test_duplicate_model_names_refused():
    with pytest.raises(ValidationError, match="repeated: \\['a'\\]"):
        AppConfig.model_validate({"models": [{"name": "a"}, {"name": "a"}]})


def test_crop_larger_than_resize_refused():
    with pytest.raises(ValidationError, match="crop \\(300\\) must not exceed resize \\(256\\)"):
        ModelConfig(name="m", preprocess={"crop": 300})


@pytest.mark.parametrize(
    "device, gpu_in_cluster, num_gpus",
    [
        ("auto", False, 0),  # CPU-only cluster: no GPU requested
        ("auto", True, 0.25),  # a GPU exists: ask for the configured fraction
        ("cpu", True, 0),  # pinned to CPU even where GPUs exist
        ("cuda", False, 0.25),  # asked explicitly: Ray will wait for a GPU node
    ],
)
def test_gpu_requested_only_where_it_will_be_used(device, gpu_in_cluster, num_gpus):
    opts = recognizer_options(ModelConfig(name="m", device=device, num_gpus=0.25), gpu_in_cluster)
    assert opts["ray_actor_options"]["num_gpus"] == num_gpus
    assert opts["name"] == "Recognizer_m"


def test_autoscaling_config_reaches_serve_with_rays_defaults_instead_of_num_replicas():
    from ray.serve.config import AutoscalingConfig

    auto = {"min_replicas": 1, "max_replicas": 3}
    opts = recognizer_options(ModelConfig(name="m", autoscaling_config=auto), False)
    assert "num_replicas" not in opts and opts["autoscaling_config"]["max_replicas"] == 3
    # Every key written out, and Serve reads it exactly as it reads the two keys alone.
    assert AutoscalingConfig(**opts["autoscaling_config"]) == AutoscalingConfig(**auto)
    assert recognizer_options(ModelConfig(name="m", num_replicas=2), False)["num_replicas"] == 2


def test_autoscaling_defaults_are_rays_own():
    from ray.serve.config import AutoscalingConfig, AutoscalingPolicy

    pairs = ((AutoscalingSpec, AutoscalingConfig), (AutoscalingPolicySpec, AutoscalingPolicy))
    for ours, theirs in pairs:
        for name, field in ours.model_fields.items():
            if name in ("policy", "policy_function"):
                continue  # empty means Serve's policy; a custom one must be named
            expected = theirs.model_fields[name].get_default(call_default_factory=True)
            assert field.get_default(call_default_factory=True) == expected, name


@pytest.mark.parametrize(
    "auto, message",
    [
        ({"min_replicas": 3, "max_replicas": 2}, "got 3, None, 2"),
        ({"min_replicas": 1, "max_replicas": 3, "initial_replicas": 4}, "got 1, 4, 3"),
        ({"max_replicas": 3, "target_ongoing": 8}, "target_ongoing"),  # a typo, not a pass-through
    ],
)
def test_bad_autoscaling_config_is_refused(auto, message):
    with pytest.raises(ValidationError, match=message):
        ModelConfig(name="m", autoscaling_config=auto)


def test_start_replicas_default_to_the_minimum_as_in_serve():
    assert AutoscalingSpec(min_replicas=2, max_replicas=4).start_replicas() == 2
    assert AutoscalingSpec(min_replicas=2, max_replicas=4, initial_replicas=3).start_replicas() == 3


def test_the_policy_function_named_in_the_schema_is_the_one_serve_loads():
    from ray._common.utils import import_attr

    from serve_app.autoscaling.ray_policy import ForecastPolicy

    assert POLICY_FUNCTION in AutoscalingPolicySpec.model_fields["policy_function"].description
    assert import_attr(POLICY_FUNCTION) is ForecastPolicy


@pytest.mark.parametrize("path", ["configs/serve_config.yaml", "configs/serve_config.test.yaml"])
def test_shipped_policy_kwargs_are_completed_from_the_model_and_the_forecaster(path):
    from serve_app.autoscaling.forecaster_config import ForecasterConfig

    cfg = load_config(ROOT / path)
    forecaster = ForecasterConfig.from_dict(cfg.forecaster)
    options = deployment_options(cfg, gpu_available=False)
    for model in cfg.models:
        scaling = model.autoscaling_config
        if scaling is None:
            continue
        assert scaling.policy.policy_function == POLICY_FUNCTION
        kwargs = options[model.name]["autoscaling_config"]["policy"]["policy_kwargs"]
        assert kwargs["model_name"] == model.name
        assert kwargs["deployment"] == f"Recognizer_{model.name}"
        if "predictive" in kwargs:
            # the floor is looked up where the forecaster publishes it
            assert kwargs["predictive"]["lead_time_s"] == forecaster.lead_time_s


def forecast_policy(**kwargs) -> dict:
    return {
        "max_replicas": 3,
        "policy": {"policy_function": POLICY_FUNCTION, "policy_kwargs": kwargs},
    }


def test_bad_policy_kwargs_stop_start_up_with_the_key_named():
    auto = forecast_policy(step_upp=2)
    with pytest.raises(ValidationError, match="step_upp"):
        recognizer_options(ModelConfig(name="m", autoscaling_config=auto), False)


def test_each_model_policy_reads_its_own_model():
    cfg = AppConfig.model_validate(
        {
            "models": [
                {"name": "a", "autoscaling_config": forecast_policy(model_name="a")},
                {"name": "b", "autoscaling_config": forecast_policy()},  # model_name left out
            ]
        }
    )
    options = deployment_options(cfg, gpu_available=False)
    kwargs = {
        name: o["autoscaling_config"]["policy"]["policy_kwargs"] for name, o in options.items()
    }
    assert (kwargs["a"]["model_name"], kwargs["b"]["model_name"]) == ("a", "b")
    assert (kwargs["a"]["deployment"], kwargs["b"]["deployment"]) == (
        "Recognizer_a",
        "Recognizer_b",
    )


@pytest.mark.parametrize(
    "predictive, forecast_models, lead_time_s",
    [
        ({"enabled": True}, ["m"], 180),  # left out: the forecaster's lead
        ({"enabled": True, "lead_time_s": 180}, ["m"], 180),  # written the same: accepted
        ({"enabled": True, "lead_time_s": 120}, ["other"], 120),  # m not forecast here: as written
        (None, ["m"], None),  # no forecast floor: none is switched on
    ],
)
def test_the_policy_reads_the_forecast_at_the_forecasters_lead(
    predictive, forecast_models, lead_time_s
):
    kwargs = {"predictive": predictive} if predictive else {}
    cfg = AppConfig.model_validate(
        {
            "models": [{"name": "m", "autoscaling_config": forecast_policy(**kwargs)}],
            "forecaster": {"models": forecast_models, "lead_time_s": 180},
        }
    )
    options = deployment_options(cfg, gpu_available=False)["m"]
    completed = options["autoscaling_config"]["policy"]["policy_kwargs"]
    assert (completed.get("predictive") or {}).get("lead_time_s") == lead_time_s


def test_two_lead_times_are_refused_naming_both_keys():
    cfg = AppConfig.model_validate(
        {
            "models": [
                {
                    "name": "m",
                    "autoscaling_config": forecast_policy(predictive={"lead_time_s": 120}),
                }
            ],
            "forecaster": {"models": ["m"], "lead_time_s": 180},
        }
    )
    with pytest.raises(ConfigError) as info:
        deployment_options(cfg, gpu_available=False)
    message = str(info.value)
    assert "policy_kwargs.predictive.lead_time_s (120)" in message
    assert "forecaster.lead_time_s (180)" in message


def test_another_policys_kwargs_pass_as_written():
    auto = {"policy": {"policy_function": "my.policies:Custom", "policy_kwargs": {"knob": 1}}}
    opts = recognizer_options(ModelConfig(name="m", autoscaling_config=auto), False)
    assert opts["autoscaling_config"]["policy"] == auto["policy"]


def test_the_shipped_config_fits_its_max_replicas_on_a_two_core_node():
    from serve_app.app import cpu_shortfall

    cfg = load_config(ROOT / "configs/serve_config.yaml")
    assert cpu_shortfall(cfg, 2.0) is None  # 3 recognizers x 0.5 + ingress 0.5 + forecaster 0
    problem = cpu_shortfall(cfg, 1.5)
    assert problem.startswith("at max replicas the application asks for 2 CPUs")
    assert (
        "3 x Recognizer_efficientnet_lite0 at 0.5 + 1 x Ingress at 0.5" in problem
        and "has 1.5" in problem
    )


def test_cpu_demand_counts_fixed_replicas_autoscaling_maximums_and_the_forecaster():
    from serve_app.app import cpu_shortfall

    cfg = AppConfig.model_validate(
        {
            "models": [
                {"name": "a", "num_cpus": 1, "num_replicas": 2},
                {
                    "name": "b",
                    "num_cpus": 0.5,
                    "autoscaling_config": {"min_replicas": 1, "max_replicas": 4},
                },
            ],
            "ingress": {"num_replicas": 1, "num_cpus": 0.5},
            "forecaster": {"models": ["a"], "num_cpus": 0.5},
        }
    )
    assert cpu_shortfall(cfg, 5.0) is None  # 2 + 2 + 0.5 + 0.5
    assert "asks for 5 CPUs" in cpu_shortfall(cfg, 4.99) and "Forecaster at 0.5" in cpu_shortfall(
        cfg, 4.99
    )


@pytest.mark.parametrize(
    "plan_changes, landing",
    [(16, "floor"), (None, "target_fill")],
)
def test_the_policy_lands_as_the_forecaster_plans(plan_changes, landing):
    cfg = AppConfig.model_validate(
        {
            "models": [
                {"name": "m", "autoscaling_config": forecast_policy(predictive={"enabled": True})}
            ],
            "forecaster": {"models": ["m"], "plan_changes_per_day": plan_changes},
        }
    )
    options = deployment_options(cfg, gpu_available=False)["m"]
    completed = options["autoscaling_config"]["policy"]["policy_kwargs"]
    assert completed["predictive"]["landing"] == landing


def test_a_landing_that_contradicts_the_forecaster_is_refused():
    cfg = AppConfig.model_validate(
        {
            "models": [
                {
                    "name": "m",
                    "autoscaling_config": forecast_policy(predictive={"landing": "target_fill"}),
                }
            ],
            "forecaster": {"models": ["m"], "plan_changes_per_day": 16},
        }
    )
    with pytest.raises(ConfigError) as info:
        deployment_options(cfg, gpu_available=False)
    assert "policy_kwargs.predictive.landing (target_fill)" in str(info.value)
    assert "forecaster.plan_changes_per_day (16)" in str(info.value)


def test_predictions_are_flushed_within_the_feedback_grace():
    assert QualityConfig().record_flush_interval_s < QualityConfig().feedback_grace_s
    with pytest.raises(ValueError, match="record_flush_interval_s"):
        QualityConfig(record_flush_interval_s=0.5, feedback_grace_s=0.5)
