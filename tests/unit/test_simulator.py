"""The trace simulator: service model arithmetic, queueing, start-up lag, Ray's control step,
latency accounting."""

from __future__ import annotations

import numpy as np
import pytest

from lab.controllers import (
    ForecastPolicyController,
    RayDefaultController,
    autoscaling_context,
    ray_control_step,
)
from lab.service_model import LatencyCurve, ServiceModel
from lab.simulator import (
    Observation,
    SimConfig,
    capacity_at_slo,
    latency_quantile,
    share_within,
    simulate,
)
from lab.yardsticks import oracle_schedule

# l(b) = 10 ms + 30/7 ms per extra image up to 8: max throughput 8 / 0.040 s = 200 req/s.
LINEAR = LatencyCurve((1.0, 8.0), (10.0, 40.0))


def model(**kw) -> ServiceModel:
    return ServiceModel(LINEAR, batch_wait_ms=10.0, overhead_ms=5.0, **kw)


# --- curve + service ------------------------------------------------------------------------------


def test_curve_reads_csv_with_comments(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("# an estimate\nbatch_size,latency_ms\n1,10\n8,40\n")
    assert LatencyCurve.from_csv(path) == LINEAR


@pytest.mark.parametrize(
    "text, message",
    [
        ("size,ms\n1,10\n", "expected the header batch_size,latency_ms"),
        ("batch_size,latency_ms\n1,ten\n", "every row needs two numbers"),
        ("batch_size,latency_ms\n1,10\n1,12\n", "strictly increasing"),
        ("batch_size,latency_ms\n1,-3\n", "latencies must be positive"),
    ],
)
def test_curve_refuses_bad_profiles(tmp_path, text, message):
    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        LatencyCurve.from_csv(path)


def test_bundled_profiles_load():
    assert LatencyCurve.profile("cpu").batch_sizes[0] == 1
    assert LatencyCurve.profile("gpu").latency(1) > 0


def test_max_batch_is_the_most_efficient_one():
    # 16 images take 3x as long as 8: 8 / 0.040 = 200/s beats 16 / 0.120 = 133/s, so batches stop at
    # 8.
    curve = LatencyCurve((1.0, 8.0, 16.0), (10.0, 40.0, 120.0))
    assert ServiceModel(curve).max_batch == 8.0


@pytest.mark.parametrize(
    "rate, batch",
    [
        (10.0, 1.0),  # 10/s * (10 + 10) ms = 0.2 images gathered <= 1: batches of one
        # b = 0.15 * (10 + 30/7 (b - 1) + 10) -> b (1 - 0.15 * 30/7) = 0.15 * (20 - 30/7) -> b =
        # 2.357 / 0.357 = 6.6
        (150.0, 6.6),
        (400.0, 8.0),  # beyond 200/s the batch is full
    ],
)
def test_batch_size_settles_where_a_batch_gathers_what_arrives(rate, batch):
    assert model()._batch_at(rate) == pytest.approx(batch, abs=0.01)


def test_throughput_limit():
    assert model().mu_max == pytest.approx(200.0)  # 8 / 0.040


# --- queueing -------------------------------------------------------------------------------------


def run_fixed(arrivals, replicas, config: SimConfig | None = None):
    arrivals = np.asarray(arrivals)
    config = config or SimConfig()
    return simulate(
        "fixed",
        arrivals.astype(float),
        arrivals,
        model(),
        config,
        0.0,
        schedule=np.full(len(arrivals), replicas, dtype=np.int32),
    )


def test_light_load_is_served_within_the_second():
    run = run_fixed([10] * 5, 1)
    # Batches of one: fastest l(1) + overhead = 15 ms, slowest 2 l(1) + wait + overhead = 20 + 10 +
    # 5 = 35 ms.
    assert run.lat_lo_ms.tolist() == pytest.approx([15.0] * 5)
    assert run.lat_hi_ms.tolist() == pytest.approx([35.0] * 5)


def test_overload_builds_a_backlog_that_waits():
    # One replica serves 200/s; 300/s arrive: 100 more queue every second.
    run = run_fixed([300] * 10, 1)
    # After 10 s the backlog is 1000 requests = 5 s of work: the slowest request waits ~5 s.
    assert run.lat_hi_ms[-1] == pytest.approx(1000 / 200 * 1000 + 2 * 40 + 15)
    assert run.lat_lo_ms[-1] == pytest.approx(
        900 / 200 * 1000 + 40 + 5
    )  # the backlog at the second's start
    # Two replicas drain it: capacity 400/s.
    assert run_fixed([300] * 10, 2).lat_hi_ms.max() < 200


def test_no_replica_means_timeouts_not_a_crash():
    run = run_fixed([5, 5], 0)
    assert run.lat_lo_ms.tolist() == [30_000.0, 30_000.0]  # the client timeout


def test_clients_give_up_so_the_queue_holds_at_most_a_timeout_of_work():
    # 1000/s against 200/s with a 5 s timeout: the queue stops at 200 * 5 = 1000 requests; waits cap
    # at 5 s.
    config = SimConfig(client_timeout_s=5.0)
    run = run_fixed([1000] * 60, 1, config)
    assert run.lat_hi_ms.max() == 5000.0
    # One replica then recovers within 1000 / 200 = 5 s once arrivals stop, not after minutes of
    # backlog.
    recovery = run_fixed([1000] * 60 + [0] * 6 + [10], 1, config)
    assert recovery.lat_hi_ms[-1] == pytest.approx(35.0)


# --- latency accounting ---------------------------------------------------------------------------


def test_share_within_and_quantile_arithmetic():
    counts = np.array([100, 100])
    lo, hi = np.array([0.0, 100.0]), np.array([100.0, 200.0])
    # within 50 ms: half of the first second's 100 requests -> 50 / 200 = 0.25
    assert share_within(counts, lo, hi, 50.0) == pytest.approx(0.25)
    assert share_within(counts, lo, hi, 150.0) == pytest.approx(0.75)  # (100 + 50) / 200
    assert latency_quantile(counts, lo, hi, 0.5) == pytest.approx(100.0, abs=1e-6)
    assert latency_quantile(counts, lo, hi, 0.99) == pytest.approx(
        198.0, abs=1e-6
    )  # 0.98 of the second second


def test_capacity_at_slo_is_where_p99_meets_the_slo():
    m = model()
    capacity = capacity_at_slo(m, slo_ms=200.0, seconds=600)
    assert 0 < capacity < m.mu_max

    def p99(rate):
        arrivals = np.random.default_rng(1).poisson(rate, 600)
        run = simulate(
            "c",
            np.full(600, rate),
            arrivals,
            m,
            SimConfig(),
            0.0,
            schedule=np.ones(600, dtype=np.int32),
        )
        return latency_quantile(run.arrivals, run.lat_lo_ms, run.lat_hi_ms, 0.99)

    assert p99(capacity) <= 200.0
    assert p99(min(capacity * 1.05, m.mu_max)) > 200.0


def test_capacity_refuses_an_impossible_slo():
    with pytest.raises(ValueError, match="raise --slo-ms"):
        capacity_at_slo(model(), slo_ms=20.0, seconds=60)


# --- start-up lag ---------------------------------------------------------------------------------


class AskOnce:
    """A controller that asks for a fixed target from a given second on."""

    def __init__(self, at: int, target: int):
        self.at, self.target, self.calls = at, target, 0

    def decide(self, obs: Observation) -> int:
        self.calls += 1
        return self.target if obs.now >= self.at else obs.target


def test_replicas_cost_from_the_ask_and_serve_after_startup():
    config = SimConfig(startup_s=5)
    arrivals = np.zeros(12, dtype=int)
    run = simulate(
        "x",
        arrivals.astype(float),
        arrivals,
        model(),
        config,
        0.0,
        controller=AskOnce(2, 3),
        initial_replicas=1,
    )
    assert run.allocated.tolist() == [1, 1, 1] + [3] * 9  # asked at t=2, counted from t=3 on
    assert run.ready.tolist() == [1] * 7 + [3] * 5  # ready at 2 + 5 = 7


def test_scale_down_removes_starting_replicas_first():
    config = SimConfig(startup_s=100)

    class UpThenDown:
        def decide(self, obs):
            return 4 if obs.now < 3 else 2

    arrivals = np.zeros(6, dtype=int)
    run = simulate(
        "x",
        arrivals.astype(float),
        arrivals,
        model(),
        config,
        0.0,
        controller=UpThenDown(),
        initial_replicas=2,
    )
    # 2 ready + 2 starting; going back to 2 drops the starting ones, both ready replicas keep
    # serving.
    assert run.ready.tolist() == [2] * 6
    assert run.allocated.tolist()[-1] == 2


def test_oracle_schedule_pays_for_startup_ahead():
    # fleet capacities 100, 200, 300: rates 50, 250, 50 need 1, 3, 1; starting 2 s ahead, 3 are
    # allocated from t=0 to t=1.
    capacities = np.array([0.0, 100.0, 200.0, 300.0])
    ready, allocated = oracle_schedule(np.array([50.0, 50.0, 250.0, 50.0, 50.0]), capacities, 2, 1)
    assert ready.tolist() == [1, 1, 3, 1, 1]
    assert allocated.tolist() == [3, 3, 3, 1, 1]


# --- Ray's control step ---------------------------------------------------------------------------


def obs(now=0.0, ready=2, target=2, ongoing=0.0, qps=None, p99=None):
    return Observation(
        now=now,
        ready=ready,
        allocated=ready,
        target=target,
        qps=qps,
        p99_ms=p99,
        gpu_utilization=None,
        ongoing=ongoing,
    )


@pytest.mark.parametrize(
    "ready, ongoing, expected",
    [
        (2, 12.0, 6),  # 12 ongoing / target 2 per replica = 6
        (4, 2.0, 1),  # 2 / 2 = 1 (downscale delay 0 here)
        (3, 6.0, 3),  # exactly on target
        (2, 100.0, 10),  # 50 -> max_replicas 10
    ],
)
def test_ray_control_step_matches_rays_own_wrapper(ready, ongoing, expected):
    """With zero delays Ray's wrapper ignores the clock, so ours and Ray's must agree exactly."""
    from ray.serve.autoscaling_policy import (
        _apply_autoscaling_config,
        replica_queue_length_autoscaling_policy,
    )
    from ray.serve.config import AutoscalingConfig

    config = AutoscalingConfig(
        min_replicas=1, max_replicas=10, upscale_delay_s=0, downscale_delay_s=0
    )
    ctx = autoscaling_context(obs(ready=ready, target=ready, ongoing=ongoing), {}, config)
    ours, _ = ray_control_step(replica_queue_length_autoscaling_policy, ctx, 0.0)
    theirs, _ = _apply_autoscaling_config(replica_queue_length_autoscaling_policy)(
        autoscaling_context(obs(ready=ready, target=ready, ongoing=ongoing), {}, config)
    )
    bounded = max(1, min(10, theirs))  # the controller's apply_bounds
    assert ours == bounded == expected


def test_ray_default_waits_its_upscale_delay_in_simulated_time():
    controller = RayDefaultController(SimConfig(min_replicas=1, max_replicas=10))
    decisions = [controller.decide(obs(now=float(t), ongoing=12.0)) for t in range(0, 31)]
    # Serve's default upscale_delay_s is 30: the wish (12 / 2 = 6) waits until 30 s after it first
    # appeared.
    assert decisions[:30] == [2] * 30
    assert decisions[30] == 6


def test_our_policy_in_the_loop_scales_like_the_seeds_example():
    kwargs = {
        "deployment": "recognizer",
        "model_name": "m",
        "thresholds": {"qps": {"up": 100, "down": 20}},
    }
    controller = ForecastPolicyController(SimConfig(min_replicas=1, max_replicas=10), kwargs)
    assert controller.decide(obs(ready=1, target=1, qps=132.0, p99=100.0)) == 3
    assert controller.changes[0][1:] == (3, "scale_up_threshold")


def test_control_period_of_one_second_decides_like_the_controllers_tenth():
    """Signals change every few seconds and delays are in seconds: 1 s and 0.1 s periods make the
    same moves."""
    rate = np.concatenate([np.full(600, 150.0), np.full(900, 600.0), np.full(900, 150.0)])
    arrivals = np.random.default_rng(3).poisson(rate)
    kwargs = {
        "deployment": "recognizer",
        "model_name": "m",
        "cooldown_down_s": 120,
        "thresholds": {"qps": {"up": 150, "down": 60}, "p99_ms": {"up": 500, "down": 150}},
    }
    runs = {}
    for period in (1.0, 0.1):
        config = SimConfig(startup_s=30, control_period_s=period, min_replicas=1, max_replicas=10)
        runs[period] = simulate(
            "p",
            rate,
            arrivals,
            model(),
            config,
            1.7e9,
            controller=ForecastPolicyController(config, kwargs),
            initial_replicas=1,
        )
    a, b = runs[1.0].allocated, runs[0.1].allocated
    assert a.max() > 1 and a[-1] < a.max()  # it scaled up and back down
    changes = lambda x: np.flatnonzero(np.diff(x))  # noqa: E731
    assert len(changes(a)) == len(changes(b))
    assert np.abs(changes(a) - changes(b)).max() <= 1  # the same moves, at most a second apart


class Recorder:
    """A controller that records when it was asked and holds its target."""

    def __init__(self):
        self.moments: list[float] = []

    def decide(self, obs: Observation) -> int:
        self.moments.append(obs.now)
        return obs.target


@pytest.mark.parametrize(
    "period, expected",
    [
        (1.0, [0.0, 1.0, 2.0]),  # once per simulated second
        (0.5, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]),  # twice, at the half second too
        (0.1, [k / 10 for k in range(30)]),  # Serve's controller loop: ten times a second
        (2.0, [0.0, 2.0]),  # a slower controller skips seconds
    ],
)
def test_the_control_period_is_real(period, expected):
    recorder = Recorder()
    arrivals = np.zeros(3, dtype=int)
    simulate(
        "x",
        arrivals.astype(float),
        arrivals,
        model(),
        SimConfig(control_period_s=period),
        0.0,
        controller=recorder,
    )
    assert recorder.moments == pytest.approx(expected)


def test_a_replica_asked_for_within_a_second_serves_from_the_first_whole_second_after_startup():
    # Asked at 2.3 s with a 5 s start-up: ready at 7.3 s, so it serves from second 8.
    class AskAt:
        def decide(self, obs):
            return 2 if obs.now >= 2.3 - 1e-9 else obs.target

    arrivals = np.zeros(10, dtype=int)
    run = simulate(
        "x",
        arrivals.astype(float),
        arrivals,
        model(),
        SimConfig(startup_s=5, control_period_s=0.1),
        0.0,
        controller=AskAt(),
        initial_replicas=1,
    )
    assert run.ready.tolist() == [1] * 8 + [2] * 2
    assert run.allocated.tolist() == [1] * 3 + [2] * 7  # paid for from the ask
