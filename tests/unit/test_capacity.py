import pytest

from serve_app.devtools.capacity import capacity_from_steps


def step(rate, p99, errors=0):
    return {"rate_rps": rate, "p99_ms": p99, "errors": errors}


@pytest.mark.parametrize(
    "steps, replicas, expected",
    [
        ([step(5, 100), step(10, 200), step(15, 700)], 1, 10.0),  # 15 misses 500 ms: capacity 10
        ([step(5, 100), step(10, 200), step(15, 700)], 2, 5.0),  # 10 req/s over 2 replicas = 5 each
        (
            [step(5, 100), step(10, 200, errors=1), step(15, 300)],
            1,
            5.0,
        ),  # errors fail a step; 15 after it ignored
        ([step(5, 900)], 1, None),  # the first step already misses
        ([step(10, 100), step(5, 100)], 1, 10.0),  # order of measurement does not matter
    ],
)
def test_capacity_is_the_last_rate_within_the_slo(steps, replicas, expected):
    assert capacity_from_steps(steps, slo_ms=500, replicas=replicas) == expected
