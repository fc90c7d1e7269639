"""Batch-latency profiles for the backtest simulator (lab/profiles/*.csv), written from a bench run:
`bench --update-profile` (cpu.csv) and `bench --device cuda --update-profile` or
`bench_gpu --profile-from` (gpu.csv)."""

from __future__ import annotations

from pathlib import Path

from serve_app.paths import REPO_ROOT

CPU_PROFILE_NOTE = (
    "Measured by `make profile` (serve_app/devtools/bench.py --update-profile): ONNX "
    "Runtime, 1 thread, EfficientNet-Lite0, this CPU."
)


def write_profile(
    runtimes: dict, path: Path, runtime: str = "onnxruntime", note: str = CPU_PROFILE_NOTE
) -> None:
    """The batch-latency curve of one measured runtime, for the backtest simulator."""
    curve = sorted(runtimes[runtime].items(), key=lambda kv: int(kv[0]))  # JSON keys are strings
    rows = ["batch_size,latency_ms"] + [f"{bs},{v['batch_latency_ms']}" for bs, v in curve]
    path.write_text(f"# {note}\n" + "\n".join(rows) + "\n")


def update_simulator_profile(runtimes: dict, path: Path, **curve) -> dict:
    """Overwrite a backtest profile; the record keeps the curve it replaced, so a distorted
    measurement can be seen."""
    replaced = path.read_text() if path.exists() else ""
    write_profile(runtimes, path, **curve)
    where = path.resolve()
    return {
        "path": str(where.relative_to(REPO_ROOT) if where.is_relative_to(REPO_ROOT) else where),
        "written": path.read_text(),
        "replaced": replaced,
    }
