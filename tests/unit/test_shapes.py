"""Load plans: users asked for at given run times, trace replay compression, plan files parse."""

from __future__ import annotations

import importlib
import math
import re

import pytest

from loadtests import schedule
from loadtests.schedule import ReplayPlan, Stage, StagePlan, load_plan, parse_duration, tick_at

# --- stage plans ------------------------------------------------------------------------------


# smoke.yaml: 2 users until 10 s, then 4 users until 40 s.
@pytest.mark.parametrize(
    "run_time, run_duration, expected",
    [
        (0.0, None, (2, 1.0)),
        (9.9, None, (2, 1.0)),
        (10.0, None, (4, 1.0)),  # a stage ends at its 'until': 10 s belongs to the next one
        (39.9, None, (4, 1.0)),
        (40.0, None, None),  # plan over: locust stops
        # fitted to a 20 s run: plan time = run time * 40/20, so 4.9 s -> 9.8 s (stage 1), 5 s -> 10
        # s (stage 2)
        (4.9, 20.0, (2, 1.0)),
        (5.0, 20.0, (4, 1.0)),
        (20.0, 20.0, None),
        # fitted to 80 s: 19 s -> 9.5 s (stage 1), 79 s -> 39.5 s (stage 2)
        (19.0, 80.0, (2, 1.0)),
        (79.0, 80.0, (4, 1.0)),
    ],
)
def test_smoke_plan_ticks(run_time, run_duration, expected):
    assert tick_at(load_plan("smoke"), run_time, run_duration) == expected


# step.yaml: start 2, +4 users every 60 s, 5 steps: 2, 6, 10, 14, 18 users; ends at 5*60 = 300 s.
@pytest.mark.parametrize(
    "run_time, users",
    [
        (0, 2),
        (59, 2),
        (60, 6),  # 2 + 1*4
        (150, 10),  # 150 // 60 = 2 -> 2 + 2*4
        (299, 18),  # 2 + 4*4
    ],
)
def test_step_plan_ticks(run_time, users):
    assert tick_at(load_plan("step"), run_time) == (users, 2.0)


def test_step_plan_ends_after_its_last_step():
    plan = load_plan("step")
    assert plan.duration == 300  # 5 steps * 60 s
    assert tick_at(plan, 300) is None


# spike.yaml: 4 users for 120 s, 24 users (spawned at 20/s) for 60 s, 4 users for 120 s.
@pytest.mark.parametrize(
    "run_time, run_duration, expected",
    [
        (119, None, (4, 2.0)),
        (120, None, (24, 20.0)),
        (179, None, (24, 20.0)),
        (180, None, (4, 20.0)),  # back down as fast as it went up
        (299, None, (4, 20.0)),
        # squeezed into 100 s (factor 3): the spike spans run time 40..60 s
        (39, 100, (4, 2.0)),  # 39*3 = 117 s of plan
        (41, 100, (24, 20.0)),  # 41*3 = 123 s
        (61, 100, (4, 20.0)),  # 61*3 = 183 s
    ],
)
def test_spike_plan_ticks(run_time, run_duration, expected):
    assert tick_at(load_plan("spike"), run_time, run_duration) == expected


def test_steady_plan_holds_its_users_then_stops():
    plan = load_plan("steady")
    assert [tick_at(plan, t) for t in (0, 150, 299.9)] == [(8, 2.0)] * 3
    assert tick_at(plan, 300) is None


# --- diurnal replay ---------------------------------------------------------------------------

# A tiny trace: 0 rps at 00:00, 10 rps at 12:00, 0 rps at 24:00 (86400 s of traffic).
DAY = ((0.0, 0.0), (43200.0, 10.0), (86400.0, 0.0))


def day_plan(**overrides) -> ReplayPlan:
    settings = dict(
        points=DAY, compression=144.0, users_per_rps=1.0, min_users=1, max_users=100, spawn_rate=5.0
    )
    settings.update(overrides)
    return ReplayPlan(**settings)


def test_replay_compresses_a_day_into_ten_minutes():
    plan = day_plan()
    assert plan.trace_span == 86400
    assert plan.duration == 600  # 86400 / 144
    assert plan.trace_time(300) == 43200  # 300 s of replay * 144 = noon


@pytest.mark.parametrize(
    "run_time, users",
    [
        (0, 1),  # 0 rps -> 0 users, raised to min_users = 1
        (
            75,
            3,
        ),  # trace 75*144 = 10800 s (03:00): 10 * 10800/43200 = 2.5 rps -> rounds half up to 3
        (150, 5),  # 21600 s (06:00): 5 rps
        (300, 10),  # noon: 10 rps
        (450, 5),  # 18:00: 10 - 10*(64800-43200)/43200 = 5 rps
        (599, 1),  # 86256 s: 10*(86400-86256)/43200 = 0.03 rps -> 0 -> min_users
    ],
)
def test_replay_maps_trace_rps_to_users(run_time, users):
    assert tick_at(day_plan(), run_time) == (users, 5.0)


def test_replay_applies_users_per_rps_scale_and_bounds():
    # noon: 10 rps * rps_scale 1.5 * users_per_rps 2 = 30 users, capped at max_users 25
    assert tick_at(day_plan(rps_scale=1.5, users_per_rps=2.0, max_users=25), 300) == (25, 5.0)
    # 06:00: 5 rps * 0.5 users per rps = 2.5 -> 3 users
    assert tick_at(day_plan(users_per_rps=0.5), 150) == (3, 5.0)


def test_replay_fitted_to_a_run_sets_the_compression():
    plan = day_plan()
    # fitted to a 300 s run the day passes twice as fast: effective compression 86400/300 = 288,
    # so run time 150 s is noon (150 * 288 = 43200) and 10 rps -> 10 users
    assert tick_at(plan, 150, run_duration=300) == (10, 5.0)
    assert tick_at(plan, 300, run_duration=300) is None


def test_shipped_diurnal_plan_replays_one_day_of_the_backtest_trace_at_144x():
    plan = load_plan("diurnal")
    assert isinstance(plan, ReplayPlan)
    assert plan.trace_span == 86400  # 00:00 .. 24:00 of 2024-06-12
    assert len(plan.points) == 289  # 5-minute samples, both midnights included
    assert plan.compression == 144
    assert plan.duration == 600
    night, evening = (
        tick_at(plan, 4 * 3600 / 144),
        tick_at(plan, 20 * 3600 / 144),
    )  # 04:00 and 20:00
    assert night[0] < evening[0]


def test_interpolation_is_linear_between_samples_and_clamped_outside():
    points = ((0.0, 2.0), (10.0, 4.0))
    assert schedule.interpolate(points, 2.5) == pytest.approx(2.5)  # 2 + (4-2)*2.5/10
    assert schedule.interpolate(points, -5) == 2.0
    assert schedule.interpolate(points, 50) == 4.0


# --- plans as data ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["smoke", "steady", "step", "spike", "diurnal"])
def test_shipped_plans_parse_and_start_with_users(name):
    plan = load_plan(name)
    assert plan.duration > 0
    users, spawn_rate = tick_at(plan, 0)
    assert users >= 1 and spawn_rate > 0


def test_every_plan_file_is_a_known_scenario():
    assert set(schedule.available_scenarios()) >= {"smoke", "steady", "step", "spike", "diurnal"}


def test_a_trace_csv_is_replayed_directly(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("timestamp,rps\n2024-05-06T00:00:00,1\n2024-05-06T00:10:00,3\n")
    plan = load_plan(str(trace))
    assert plan.trace_span == 600
    assert tick_at(plan, 300) == (2, 5.0)  # halfway between 1 and 3 rps, no compression


@pytest.mark.parametrize(
    "content, message",
    [
        ("time,rps\n0,1\n1,2\n", "header `timestamp,rps`"),
        ("timestamp,rps\n0,1\n", "holds 1 samples"),
        ("timestamp,rps\n0,1\n10,x\n", "trace.csv:3"),
        ("timestamp,rps\n0,1\n10,-2\n", "non-negative number"),
        ("timestamp,rps\n10,1\n10,2\n", "appears more than once"),
        ("timestamp,rps\nyesterday,1\n5,2\n", "neither unix seconds nor ISO 8601"),
    ],
)
def test_bad_traces_are_refused_with_the_line(tmp_path, content, message):
    trace = tmp_path / "trace.csv"
    trace.write_text(content)
    with pytest.raises(ValueError, match=re.escape(message)):
        schedule.read_trace(trace)


HOURLY = tuple((3600.0 * h, float(h)) for h in range(49))  # two days, rps = hours since the start


def test_trace_window_keeps_one_day_rebased_to_its_start():
    day_two = schedule.trace_window(HOURLY, start=24 * 3600.0, hours=24)
    assert len(day_two) == 25  # 24:00 .. 48:00 inclusive
    assert day_two[0] == (0.0, 24.0) and day_two[-1] == (86400.0, 48.0)


def test_trace_window_defaults_to_the_whole_trace():
    assert schedule.trace_window(HOURLY) == HOURLY


def test_trace_window_outside_the_trace_says_where_the_trace_is():
    with pytest.raises(ValueError, match="holds 0 samples; the trace covers 0..172800"):
        schedule.trace_window(HOURLY, start=500000.0, hours=1)


def test_replay_window_is_read_from_the_plan(tmp_path):
    rows = "\n".join(f"2024-06-0{3 + h // 24}T{h % 24:02d}:00:00+08:00,{h}" for h in range(48))
    (tmp_path / "t.csv").write_text("timestamp,rps\n" + rows + "\n")
    (tmp_path / "p.yaml").write_text(
        "kind: replay\ntrace: t.csv\n"
        'window_start: "2024-06-04T00:00:00+08:00"\n'
        "window_hours: 12\ncompression: 3600\n"
    )
    plan = load_plan(str(tmp_path / "p.yaml"))
    assert plan.trace_span == 12 * 3600  # 00:00 .. 12:00 of the second day
    assert plan.duration == 12  # one trace hour per second
    assert tick_at(plan, 2) == (26, 5.0)  # 02:00 of day two: 24 + 2 = 26 rps -> 26 users


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"kind": "ramp"}, "unknown kind 'ramp'"),
        ({"kind": "step", "start_users": 1}, "missing key 'step_users'"),
        (
            {"kind": "stages", "stages": [{"until": 10, "users": 1}, {"until": 5, "users": 2}]},
            "stage 2 ends at 5",
        ),
        ({"kind": "stages", "stages": []}, "at least one stage"),
        ({"kind": "stages", "stages": [{"users": 1}]}, "malformed 'stages' plan"),
        (["not", "a", "mapping"], "must be a mapping"),
    ],
)
def test_bad_plans_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        schedule.plan_from_dict(spec, "test plan")


def test_unknown_scenario_names_the_choices():
    with pytest.raises(ValueError, match="choose one of .*smoke"):
        load_plan("smok")


@pytest.mark.parametrize(
    "text, seconds",
    [(90, 90.0), ("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("1h30m", 5400.0), (None, None)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["ten minutes", "0", "-5", "5x"])
def test_parse_duration_refuses_nonsense(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_stage_plan_validates_spawn_rate():
    with pytest.raises(ValueError, match="spawn_rate > 0"):
        StagePlan((Stage(until=10, users=1, spawn_rate=0),))


# --- the locust shape classes -----------------------------------------------------------------


@pytest.fixture
def shapes(monkeypatch):
    """loadtests.shapes imported without letting locust monkey-patch the test process."""
    monkeypatch.setenv("LOCUST_SKIP_MONKEY_PATCH", "1")
    monkeypatch.delenv("LOADTEST_RUN_TIME", raising=False)
    return importlib.import_module("loadtests.shapes")


class FixedOptions:
    """The two locust options a shape reads."""

    def __init__(self, run_time=None, user_rps=1.0):
        self.run_time = run_time
        self.user_rps = user_rps


class FixedRunner:
    """Just enough of a locust runner for a shape: its environment's parsed options."""

    def __init__(self, options):
        self.environment = type("Environment", (), {"parsed_options": options})()


def frozen(shape_class, run_time: float, options: FixedOptions):
    """A shape whose clock reads `run_time` seconds."""
    clocked = type(
        "Frozen" + shape_class.__name__, (shape_class,), {"get_run_time": lambda self: run_time}
    )
    shape = clocked()
    shape.runner = FixedRunner(options)
    return shape


def test_named_shapes_tick_from_their_plans(shapes):
    assert frozen(shapes.StepShape, 60, FixedOptions()).tick() == (6, 2.0)  # 2 + 1*4
    assert frozen(shapes.SpikeShape, 130, FixedOptions()).tick() == (24, 20.0)
    assert frozen(shapes.SteadyShape, 300, FixedOptions()).tick() is None


def test_shape_fits_the_plan_to_run_time(shapes):
    # --run-time 150 s for the 300 s step plan: run time 75 s is plan time 150 s -> 10 users
    assert frozen(shapes.StepShape, 75, FixedOptions(run_time=150)).tick() == (10, 2.0)


def test_diurnal_shape_uses_user_rps(shapes):
    plan = load_plan("diurnal")
    noon = 12 * 3600 / 144
    rps = plan.rps_at(noon)
    # each user sends 0.5 req/s, so twice as many users: round(rps * 2)
    expected = schedule.round_half_up(rps * 2)
    assert frozen(shapes.DiurnalShape, noon, FixedOptions(user_rps=0.5)).tick() == (expected, 5.0)
    assert expected > 1


def test_shape_class_for_builds_one_for_any_plan(shapes):
    smoke = shapes.shape_class_for("smoke")
    assert smoke.__name__ == "SmokeShape" and not smoke.abstract
    assert frozen(smoke, 12, FixedOptions()).tick() == (4, 1.0)
    assert shapes.shape_class_for("diurnal") is shapes.DiurnalShape
    with pytest.raises(ValueError, match="unknown scenario"):
        shapes.shape_class_for("nope")


def test_round_half_up_rounds_halves_up():
    # Python's round() would give 2 for 2.5 and 4 for 3.5
    assert [schedule.round_half_up(x) for x in (2.5, 3.5, 2.49)] == [3, 4, 2]
    assert math.isclose(day_plan().rps_at(75), 2.5)  # the 03:00 case above


def test_plan_paths_resolve_relative_to_the_plan_file(tmp_path):
    (tmp_path / "t.csv").write_text("timestamp,rps\n0,2\n100,2\n")
    (tmp_path / "p.yaml").write_text("kind: replay\ntrace: t.csv\ncompression: 10\n")
    plan = load_plan(str(tmp_path / "p.yaml"))
    assert plan.duration == 10  # 100 s / 10
    assert tick_at(plan, 5) == (2, 5.0)
