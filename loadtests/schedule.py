"""Load plans kept as data (loadtests/plans/*.yaml, trace CSVs) and the users they ask for at a run
time.

A plan maps plan time (seconds) to a user count and spawn rate. A run may be longer or shorter than
the plan's natural duration: the plan is then stretched or squeezed to the run, so a 24-hour trace
replayed "for 10 minutes" is compressed 144x. Pure: no locust import (it monkey-patches the
process), no clock, so every function here is unit-tested directly; loadtests/shapes.py wraps it for
locust.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence
from zoneinfo import ZoneInfo

import yaml

# One parser for traces across the project, so a replay and a backtest of the same file agree.
from serve_app.autoscaling.rate_history import parse_timestamp, read_csv

PLANS_DIR = Path(__file__).parent / "plans"

Tick = tuple[int, float]


class Plan(Protocol):
    """Anything that says how many users to run at a given plan time."""

    duration: float

    def at(self, plan_time: float) -> Tick:
        """(users, spawn_rate) at `plan_time` seconds into the plan (0 <= plan_time < duration)."""
        ...


@dataclass(frozen=True)
class Stage:
    """Run `users` until plan time `until`, adding or removing them at `spawn_rate` users per
    second."""

    until: float
    users: int
    spawn_rate: float


@dataclass(frozen=True)
class StagePlan:
    """Consecutive stages; the plan ends when the last one does."""

    stages: tuple[Stage, ...]

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a stage plan needs at least one stage")
        previous = 0.0
        for number, stage in enumerate(self.stages, start=1):
            if stage.until <= previous:
                raise ValueError(
                    f"stage {number} ends at {stage.until} s, not after the previous one "
                    f"({previous} s): list stages in time order with increasing 'until'"
                )
            if stage.users < 0 or stage.spawn_rate <= 0:
                raise ValueError(
                    f"stage {number} has users={stage.users}, spawn_rate={stage.spawn_rate}: "
                    "users must be >= 0 and spawn_rate > 0"
                )
            previous = stage.until

    @property
    def duration(self) -> float:
        """Plan time at which the last stage ends."""
        return self.stages[-1].until

    def at(self, plan_time: float) -> Tick:
        """The stage running at `plan_time` (the last one past the end)."""
        ends = [stage.until for stage in self.stages]
        index = min(bisect_right(ends, plan_time), len(self.stages) - 1)
        stage = self.stages[index]
        return stage.users, stage.spawn_rate


@dataclass(frozen=True)
class ReplayPlan:
    """A request-rate trace replayed with time compressed, each trace rps turned into users."""

    # (seconds since the first trace sample, requests per second), strictly increasing in time
    points: tuple[tuple[float, float], ...]
    compression: float
    users_per_rps: float
    rps_scale: float = 1.0
    min_users: int = 1
    max_users: int = 1000
    spawn_rate: float = 5.0

    def __post_init__(self) -> None:
        if len(self.points) < 2:
            raise ValueError(f"a replay trace needs at least two samples, got {len(self.points)}")
        for name in ("compression", "users_per_rps", "rps_scale", "spawn_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0")
        if not 0 <= self.min_users <= self.max_users:
            raise ValueError(
                f"need 0 <= min_users <= max_users, got {self.min_users} and {self.max_users}"
            )

    @property
    def trace_span(self) -> float:
        """Seconds of real traffic the trace covers."""
        return self.points[-1][0] - self.points[0][0]

    @property
    def duration(self) -> float:
        """Seconds the replay takes at its compression factor."""
        return self.trace_span / self.compression

    def trace_time(self, plan_time: float) -> float:
        """Seconds into the trace that `plan_time` seconds of replay correspond to."""
        return plan_time * self.compression

    def rps_at(self, plan_time: float) -> float:
        """Trace rps at `plan_time`, linearly interpolated between samples and scaled by
        rps_scale."""
        return interpolate(self.points, self.trace_time(plan_time)) * self.rps_scale

    def at(self, plan_time: float) -> Tick:
        """Users that offer the trace's rps at `plan_time`."""
        users = round_half_up(self.rps_at(plan_time) * self.users_per_rps)
        return min(max(users, self.min_users), self.max_users), self.spawn_rate


def round_half_up(value: float) -> int:
    """Round .5 up (Python's round() goes to even, which would make 2.5 and 3.5 rps alike)."""
    return math.floor(value + 0.5)


def interpolate(points: tuple[tuple[float, float], ...], t: float) -> float:
    """Value of a piecewise-linear series at t, clamped to the first/last sample outside it."""
    times = [p[0] for p in points]
    if t <= times[0]:
        return points[0][1]
    if t >= times[-1]:
        return points[-1][1]
    right = bisect_right(times, t)
    (t0, v0), (t1, v1) = points[right - 1], points[right]
    return v0 + (v1 - v0) * (t - t0) / (t1 - t0)


def tick_at(plan: Plan, run_time: float, run_duration: float | None = None) -> Tick | None:
    """(users, spawn_rate) at `run_time` seconds of a run lasting `run_duration` (default: the
    plan's), None after."""
    duration = plan.duration if run_duration is None else run_duration
    if duration <= 0:
        raise ValueError(f"run duration must be > 0 seconds, got {duration}")
    if run_time >= duration:
        return None
    # Stretch or squeeze the plan so it spans exactly the run.
    plan_time = run_time * plan.duration / duration
    return plan.at(plan_time)


# ---------------------------------------------------------------------------------------------
# Plans as data: YAML files and trace CSVs


def step_stages(
    start_users: int, step_users: int, steps: int, step_seconds: float, spawn_rate: float
) -> tuple[Stage, ...]:
    """Stages that add `step_users` every `step_seconds`, `steps` times in all (the first at
    start_users)."""
    if steps < 1 or step_seconds <= 0:
        raise ValueError(
            "step plan needs steps >= 1 and step_seconds > 0, "
            f"got steps={steps}, step_seconds={step_seconds}"
        )
    return tuple(
        Stage(
            until=(i + 1) * step_seconds, users=start_users + i * step_users, spawn_rate=spawn_rate
        )
        for i in range(steps)
    )


def spike_stages(
    base_users: int,
    spike_users: int,
    before_seconds: float,
    spike_seconds: float,
    after_seconds: float,
    spawn_rate: float,
    spike_spawn_rate: float,
) -> tuple[Stage, ...]:
    """Base load, a sudden spike, then base load again to watch the scale-down."""
    return (
        Stage(until=before_seconds, users=base_users, spawn_rate=spawn_rate),
        Stage(until=before_seconds + spike_seconds, users=spike_users, spawn_rate=spike_spawn_rate),
        Stage(
            until=before_seconds + spike_seconds + after_seconds,
            users=base_users,
            spawn_rate=spike_spawn_rate,
        ),
    )


def trace_window(
    points: Sequence[tuple[float, float]], start: float | None = None, hours: float | None = None
) -> tuple[tuple[float, float], ...]:
    """Samples with start <= t <= start + hours (default: the whole trace), re-based to seconds
    since `start`."""
    if not points:
        raise ValueError("the trace is empty")
    first, last = points[0][0], points[-1][0]
    begin = first if start is None else start
    end = last if hours is None else begin + hours * 3600.0
    if hours is not None and hours <= 0:
        raise ValueError(f"window_hours={hours} must be > 0")
    kept = tuple((t - begin, rps) for t, rps in points if begin <= t <= end)
    if len(kept) < 2:
        raise ValueError(
            f"the window {begin:.0f}..{end:.0f} (unix s) holds {len(kept)} samples; "
            f"the trace covers {first:.0f}..{last:.0f}: "
            "move window_start inside it or widen window_hours"
        )
    return kept


def read_trace(
    path: Path, window_start: str | float | None = None, window_hours: float | None = None
):
    """(seconds since the window start, rps) from a `timestamp,rps` CSV, read as the backtest reads
    it."""
    history = read_csv(path)
    points = tuple(zip(history.timestamps.tolist(), history.rps.tolist(), strict=True))
    start = None if window_start is None else parse_timestamp(str(window_start), ZoneInfo("UTC"))
    return trace_window(points, start, window_hours)


def _require(spec: dict, key: str, source: str):
    if key not in spec:
        raise ValueError(f"{source}: missing key {key!r}")
    return spec[key]


def plan_from_dict(
    spec: dict, source: str = "plan", base_dir: Path = PLANS_DIR, users_per_rps: float = 1.0
) -> Plan:
    """Build a plan from its YAML mapping; `users_per_rps` is used when a replay plan leaves it
    out."""
    if not isinstance(spec, dict):
        raise ValueError(
            f"{source}: a plan must be a mapping with a 'kind' key, got {type(spec).__name__}"
        )
    kind = _require(spec, "kind", source)
    try:
        if kind == "stages":
            stages = _require(spec, "stages", source)
            return StagePlan(
                tuple(
                    Stage(float(s["until"]), int(s["users"]), float(s.get("spawn_rate", 1.0)))
                    for s in stages
                )
            )
        if kind == "step":
            return StagePlan(
                step_stages(
                    int(_require(spec, "start_users", source)),
                    int(_require(spec, "step_users", source)),
                    int(_require(spec, "steps", source)),
                    float(_require(spec, "step_seconds", source)),
                    float(spec.get("spawn_rate", 1.0)),
                )
            )
        if kind == "spike":
            spawn_rate = float(spec.get("spawn_rate", 1.0))
            return StagePlan(
                spike_stages(
                    int(_require(spec, "base_users", source)),
                    int(_require(spec, "spike_users", source)),
                    float(_require(spec, "before_seconds", source)),
                    float(_require(spec, "spike_seconds", source)),
                    float(_require(spec, "after_seconds", source)),
                    spawn_rate,
                    float(spec.get("spike_spawn_rate", spawn_rate)),
                )
            )
        if kind == "replay":
            trace = Path(_require(spec, "trace", source))
            if not trace.is_absolute():
                trace = base_dir / trace
            hours = spec.get("window_hours")
            return ReplayPlan(
                points=read_trace(
                    trace, spec.get("window_start"), None if hours is None else float(hours)
                ),
                compression=float(spec.get("compression", 1.0)),
                users_per_rps=float(spec.get("users_per_rps", users_per_rps)),
                rps_scale=float(spec.get("rps_scale", 1.0)),
                min_users=int(spec.get("min_users", 1)),
                max_users=int(spec.get("max_users", 1000)),
                spawn_rate=float(spec.get("spawn_rate", 5.0)),
            )
    except (KeyError, TypeError) as exc:
        raise ValueError(
            f"{source}: malformed {kind!r} plan ({exc!r}); see docs/LOADTESTS.md for the keys"
        ) from exc
    raise ValueError(f"{source}: unknown kind {kind!r}; use one of stages, step, spike, replay")


def available_scenarios() -> list[str]:
    """Names of the plans shipped in loadtests/plans/."""
    return sorted(p.stem for p in PLANS_DIR.glob("*.yaml"))


def resolve_plan_path(scenario: str) -> Path:
    """A scenario name (a file in loadtests/plans/) or a path to a plan YAML or trace CSV."""
    candidate = Path(scenario)
    if candidate.suffix in {".yaml", ".yml", ".csv"}:
        if not candidate.is_file():
            raise FileNotFoundError(f"plan file {candidate} does not exist")
        return candidate
    named = PLANS_DIR / f"{scenario}.yaml"
    if not named.is_file():
        raise ValueError(
            f"unknown scenario {scenario!r}; "
            f"choose one of {available_scenarios()} or give a .yaml/.csv path"
        )
    return named


def load_plan(scenario: str, users_per_rps: float = 1.0) -> Plan:
    """The plan for a scenario name or file; a bare CSV is replayed with the default replay
    settings."""
    path = resolve_plan_path(scenario)
    if path.suffix == ".csv":
        return plan_from_dict(
            {"kind": "replay", "trace": str(path.resolve())}, str(path), users_per_rps=users_per_rps
        )
    with path.open() as handle:
        spec = yaml.safe_load(handle)
    return plan_from_dict(spec, str(path), base_dir=path.parent, users_per_rps=users_per_rps)


def parse_duration(text: str | float | int | None) -> float | None:
    """Seconds from 90, "90", "90s", "10m", "1h30m" (locust's --run-time forms); None stays None."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        seconds, number = 0.0, ""
        units = {"h": 3600.0, "m": 60.0, "s": 1.0}
        for char in text.strip().lower():
            if char.isdigit() or char == ".":
                number += char
            elif char in units and number:
                seconds += float(number) * units[char]
                number = ""
            else:
                raise ValueError(
                    f"duration {text!r} not understood; write e.g. 90, 90s, 10m or 1h30m"
                )
        if number:
            seconds += float(number)
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be > 0 seconds")
    return seconds
