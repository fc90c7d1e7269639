"""Locust LoadTestShapes for the plans in loadtests/plans/: steady, step, spike, diurnal replay (and
any plan file).

Select one for `locust -f loadtests/locustfile.py` with LOADTEST_SCENARIO=<name or path>. The shape
reads the plan once and then depends only on the run time; the arithmetic lives in
loadtests/schedule.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from locust import LoadTestShape

from loadtests.schedule import Plan, Tick, load_plan, parse_duration, tick_at

SCENARIO_ENV = "LOADTEST_SCENARIO"
RUN_TIME_ENV = "LOADTEST_RUN_TIME"


class PlanShape(LoadTestShape):
    """Runs a plan from loadtests/plans/, fitted to --run-time (or LOADTEST_RUN_TIME) when one is
    given."""

    abstract = True
    # Lets --run-time reach the shape instead of being ignored with a warning.
    use_common_options = True
    scenario: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self._plan: Plan | None = None
        self._run_duration: float | None = None

    def _options(self):
        environment = getattr(self.runner, "environment", None)
        return getattr(environment, "parsed_options", None)

    def _resolve(self) -> tuple[Plan, float | None]:
        if self._plan is None:
            options = self._options()
            user_rps = float(getattr(options, "user_rps", 1.0) or 1.0)
            self._plan = load_plan(self.scenario, users_per_rps=1.0 / user_rps)
            self._run_duration = parse_duration(
                getattr(options, "run_time", None) or os.environ.get(RUN_TIME_ENV)
            )
        return self._plan, self._run_duration

    def tick(self) -> Tick | None:
        """The plan's users at the current run time; None ends the test."""
        plan, run_duration = self._resolve()
        return tick_at(plan, self.get_run_time(), run_duration)


def shape_class_for(scenario: str) -> type[PlanShape]:
    """A concrete LoadTestShape for a scenario name or plan path (validated now, so typos fail at
    start)."""
    load_plan(scenario)
    if scenario in NAMED_SHAPES:
        return NAMED_SHAPES[scenario]
    stem = Path(scenario).stem
    class_name = (
        "".join(part.capitalize() for part in stem.replace("-", "_").split("_") if part) + "Shape"
    )
    return type(
        class_name, (PlanShape,), {"scenario": scenario, "abstract": False, "__module__": __name__}
    )


class SteadyShape(PlanShape):
    """Constant users (loadtests/plans/steady.yaml)."""

    scenario = "steady"


class StepShape(PlanShape):
    """Users added in equal steps (loadtests/plans/step.yaml)."""

    scenario = "step"


class SpikeShape(PlanShape):
    """Base load with one sudden spike (loadtests/plans/spike.yaml)."""

    scenario = "spike"


class DiurnalShape(PlanShape):
    """A day of traffic replayed at compressed time (loadtests/plans/diurnal.yaml)."""

    scenario = "diurnal"


NAMED_SHAPES: dict[str, type[PlanShape]] = {
    shape.scenario: shape for shape in (SteadyShape, StepShape, SpikeShape, DiurnalShape)
}
