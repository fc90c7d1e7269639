import pytest
import yaml

from serve_app.config import AppConfig
from serve_app.devtools.promote import main, promote_args

ARGS = {
    "models": [
        {
            "name": "lite0",
            "version": "1",
            "num_cpus": 2,
            "max_batch_size": 8,
            "shadow": {"model": "lite0_int8", "fraction": 0.2},
        },
        {
            "name": "lite0_int8",
            "version": "2-int8",
            "precision": "int8",
            "device": "cpu",
            "num_cpus": 0.5,
        },
    ],
    "quality": {"window_size": 10},
}


def test_promoted_model_takes_the_candidates_model_and_keeps_its_serving():
    out = promote_args(ARGS, "lite0")
    cfg = AppConfig.model_validate(out)
    lite0 = cfg.model("lite0")
    assert (lite0.version, lite0.precision, lite0.device) == ("2-int8", "int8", "cpu")
    assert lite0.shadow is None
    assert (lite0.num_cpus, lite0.max_batch_size) == (2, 8)  # how it is served stays
    assert out["quality"] == ARGS["quality"]
    assert ARGS["models"][0]["shadow"]  # the input is left as it was


@pytest.mark.parametrize("name, problem", [("nope", "no model"), ("lite0_int8", "no `shadow:`")])
def test_promote_refuses_what_it_cannot_do(name, problem):
    with pytest.raises(ValueError, match=problem):
        promote_args(ARGS, name)


def test_cli_writes_a_new_file_and_leaves_the_original(tmp_path, capsys):
    src = tmp_path / "serve.yaml"
    text = yaml.safe_dump({"applications": [{"name": "recognition", "args": ARGS}]})
    src.write_text(text)
    assert main(["lite0", "--config", str(src)]) == 0
    assert src.read_text() == text
    doc = yaml.safe_load((tmp_path / "serve.promoted.yaml").read_text())
    assert doc["applications"][0]["args"]["models"][0]["precision"] == "int8"
    assert "serve deploy" in capsys.readouterr().out
