"""`recserve promote NAME`: the config in which model NAME serves its shadow candidate.

The candidate's model fields (architecture, weights, labels, preprocessing, precision, runtime,
device, version) replace NAME's; NAME keeps its API name, resources, batching, replicas and
autoscaling, and its `shadow:` is removed. The result is written to a new file (comments of the
original are not carried over, so the original stays as it was); `serve deploy` of that file makes
Serve replace the replicas in a rolling update (docs/MODELS.md, "Promotion").
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import yaml

from serve_app.config import AppConfig

# What makes a model the model it is; everything else of the entry is how it is served.
MODEL_FIELDS = (
    "version",
    "architecture",
    "weights",
    "labels",
    "preprocess",
    "precision",
    "runtime",
    "device",
)


def promote_args(args: dict[str, Any], name: str) -> dict[str, Any]:
    """The application `args` with model `name` serving its shadow candidate; raises ValueError
    when `name` is not served or has no shadow."""
    cfg = AppConfig.model_validate(args)
    try:
        primary = cfg.model(name)
    except KeyError:
        raise ValueError(f"no model named {name!r} in the config") from None
    if primary.shadow is None:
        raise ValueError(f"model {name!r} has no `shadow:` candidate to promote")
    candidate = cfg.model(primary.shadow.model).model_dump(include=set(MODEL_FIELDS))
    out = copy.deepcopy(args)
    entry = next(m for m in out["models"] if m["name"] == name)
    entry.pop("shadow")
    for key in MODEL_FIELDS:
        entry.pop(key, None)
    entry.update({k: v for k, v in candidate.items() if v is not None})
    AppConfig.model_validate(out)  # the promoted config must be valid as it stands
    return out


def promote_file(path: Path, name: str, app_name: str | None = None) -> dict:
    """The whole Serve config document of `path` with `name` promoted in its application."""
    doc = yaml.safe_load(path.read_text())
    for app in doc.get("applications") or []:
        if app_name is None or app.get("name") == app_name:
            app["args"] = promote_args(app.get("args") or {}, name)
            return doc
    raise ValueError(f"{path}: no application named {app_name!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recserve promote", description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the model whose shadow candidate takes its place")
    parser.add_argument("--config", default="configs/serve_config.yaml")
    parser.add_argument("--app", help="application name (default: the first)")
    parser.add_argument("--out", help="where to write (default: CONFIG with .promoted.yaml)")
    args = parser.parse_args(argv)
    src = Path(args.config)
    try:
        doc = promote_file(src, args.name, args.app)
    except ValueError as exc:
        parser.exit(2, f"recserve promote: {exc}\n")
    out = Path(args.out) if args.out else src.with_suffix(".promoted.yaml")
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    print(f"wrote {out}: {args.name} now serves its shadow candidate")
    print(f"apply it with a rolling update:  RAY_AUTH_MODE=token serve deploy {out}")
    return 0
