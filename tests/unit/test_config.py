from pathlib import Path

import pytest
from pydantic import ValidationError

from serve_app.app import recognizer_options
from serve_app.config import AppConfig, ModelConfig, load_config

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


def test_autoscaling_config_passes_through_instead_of_num_replicas():
    auto = {"min_replicas": 1, "max_replicas": 3}
    opts = recognizer_options(ModelConfig(name="m", autoscaling_config=auto), False)
    assert opts["autoscaling_config"] == auto and "num_replicas" not in opts
    assert recognizer_options(ModelConfig(name="m", num_replicas=2), False)["num_replicas"] == 2


def test_shipped_policy_and_forecaster_settings_validate():
    from serve_app.app import check_policy_kwargs
    from serve_app.autoscaling.forecaster_service import ForecasterConfig

    cfg = load_config(ROOT / "configs/serve_config.yaml")
    model = cfg.models[0]
    assert (
        model.autoscaling_config["policy"]["policy_function"]
        == "serve_app.autoscaling.policy:ForecastPolicy"
    )
    check_policy_kwargs(model)
    forecaster = ForecasterConfig.from_dict(cfg.forecaster)
    lead = model.autoscaling_config["policy"]["policy_kwargs"]["predictive"]["lead_time_s"]
    assert (
        forecaster.lead_time_s == lead
    )  # the floor is looked up where the forecaster publishes it


def test_bad_policy_kwargs_stop_start_up_with_the_key_named():
    from serve_app.app import check_policy_kwargs

    auto = {
        "policy": {
            "policy_function": "serve_app.autoscaling.policy:ForecastPolicy",
            "policy_kwargs": {"step_upp": 2},
        }
    }
    with pytest.raises(ValidationError, match="step_upp"):
        check_policy_kwargs(ModelConfig(name="m", autoscaling_config=auto))


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
