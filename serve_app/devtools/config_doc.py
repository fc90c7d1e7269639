"""`recserve config-doc`: docs/CONFIG.md generated from the pydantic models of the application's
args (serve_app/config.py, the forecaster section and the policy's rules)."""

from __future__ import annotations

import inspect
import re
import sys
from typing import Literal, get_args, get_origin

from pydantic import BaseModel

from serve_app.autoscaling.forecaster_config import ForecasterConfig
from serve_app.autoscaling.rules import (
    PolicyRules,
    PredictiveRules,
    Threshold,
    Thresholds,
    TimeWindow,
)
from serve_app.config import (
    AppConfig,
    AuthConfig,
    AutoscalingPolicySpec,
    AutoscalingSpec,
    IngressConfig,
    LimitsConfig,
    ModelConfig,
    PreprocessSpec,
    QualityConfig,
    ShadowSpec,
)
from serve_app.overload_config import OverloadConfig, ReduceBatchLevels, ShedLevels

SECTIONS = [
    ("args", AppConfig),
    ("args.models[]", ModelConfig),
    ("args.models[].preprocess", PreprocessSpec),
    ("args.models[].shadow", ShadowSpec),
    ("args.models[].autoscaling_config", AutoscalingSpec),
    ("args.models[].autoscaling_config.policy", AutoscalingPolicySpec),
    ("args.models[].overload", OverloadConfig),
    ("args.models[].overload.reduce_batch_at", ReduceBatchLevels),
    ("args.models[].overload.shed_at", ShedLevels),
    ("args.limits", LimitsConfig),
    ("args.ingress", IngressConfig),
    ("args.quality", QualityConfig),
    ("args.forecaster", ForecasterConfig),
    ("args.auth", AuthConfig),
    ("args.models[].autoscaling_config.policy.policy_kwargs", PolicyRules),
    ("...policy_kwargs.thresholds", Thresholds),
    ("...policy_kwargs.thresholds.<signal>", Threshold),
    ("...policy_kwargs.windows[]", TimeWindow),
    ("...policy_kwargs.predictive", PredictiveRules),
]


def _type_name(annotation) -> str:
    if get_origin(annotation) is Literal:
        return " / ".join(f"`{a}`" for a in get_args(annotation))
    text = getattr(annotation, "__name__", None) or str(annotation)
    return re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", text)  # `serve_app.config.X` reads `X`


def _default(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return "(section defaults)"
    return f"`{field.default!r}`" if field.default is not None else "empty"


def section_table(path: str, model: type[BaseModel]) -> str:
    lines = [
        f"## `{path}`",
        "",
        " ".join(inspect.cleandoc(model.__doc__ or "").split()),
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, field in model.model_fields.items():
        desc = (field.description or "").replace("|", "\\|")
        type_name = _type_name(field.annotation).replace("|", "\\|")
        lines.append(f"| `{name}` | {type_name} | {_default(field)} | {desc} |")
    return "\n".join(lines)


def render() -> str:
    head = [
        "# Configuration",
        "",
        "Generated from `serve_app/config.py` by `recserve config-doc` (`make config-doc`); "
        "do not edit by hand.",
        "Everything below lives under `applications[].args` of `configs/serve_config.yaml`. "
        "The rest of that",
        "file (`http_options`, `logging_config`, ...) is Ray Serve's own schema. "
        "Unknown keys are errors.",
        "",
        "",
    ]
    return "\n".join(head) + "\n\n".join(section_table(p, m) for p, m in SECTIONS) + "\n"


def main(argv: list[str] | None = None) -> int:
    sys.stdout.write(render())
    return 0
