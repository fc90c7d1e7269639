"""The generated hostile corpus, decoded in this process: each case is a correct crop or its typed
4xx, and the memory a decode adds stays within a bound set by the limits.

The limits are the integration service's (configs/serve_config.test.yaml), so the same cases are
sized the same here and on the live service (tests/integration/test_hostile_images_live.py).
"""

import numpy as np
import pytest

from serve_app.errors import ServiceError
from serve_app.serving.image_limits import check_request
from serve_app.serving.imaging import decode_and_crop, read_header
from serve_app.serving.models import LITE_PREPROCESS as SPEC
from tests.decode_peaks import outcome, peak_rss_added
from tests.hostile_images import (
    at_the_limits,
    corpus,
    request_over_budget,
    service_test_limits,
)

LIMITS = service_test_limits()
# Pillow keeps 2- and 3-band pixels in 4 bytes, so a decode within max_decoded_bytes holds at most
# twice that (LA: 2 counted, 4 held); the crop and the libraries' own buffers fit in the slack.
# The incident's decode grew a replica by 20 GB.
PEAK_BOUND = 2 * LIMITS.max_decoded_bytes + 16 * 2**20


def _check(case) -> list[str]:
    result, peak = peak_rss_added(lambda: decode_and_crop(case.data, SPEC, LIMITS))
    got = outcome(result)
    problems = []
    if got not in case.expect:
        problems.append(
            f"{case.name}: got {got!r}, expected one of {sorted(map(str, case.expect))}"
        )
    if isinstance(result, np.ndarray):
        if result.shape != (SPEC.crop, SPEC.crop, 3) or result.dtype != np.uint8:
            problems.append(f"{case.name}: crop {result.shape} {result.dtype}")
        elif case.reference is not None:
            diff = np.abs(result.astype(int) - case.reference).mean()
            if diff > case.max_mean_diff:
                problems.append(f"{case.name}: mean |crop - reference| {diff:.2f}")
    if isinstance(result, ServiceError):
        if not 400 <= result.status < 500 or not result.message:
            problems.append(f"{case.name}: {result.status} {result.message!r}")
        if result.status in (413, 422) and "limits." not in result.message:
            problems.append(f"{case.name}: the refusal names no limit: {result.message}")
    if peak > PEAK_BOUND:
        problems.append(f"{case.name}: decode added {peak / 2**20:.0f} MiB > {PEAK_BOUND / 2**20}")
    return problems


def test_every_case_is_a_correct_crop_or_its_typed_4xx_within_the_memory_bound():
    cases = corpus(LIMITS, SPEC)
    assert len(cases) > 60
    problems = [p for case in cases for p in _check(case)]
    assert not problems, "\n".join(problems)


def test_the_costliest_accepted_decodes_stay_within_the_memory_bound():
    # Each mode at the largest square the limits let through, decoded for real.
    problems = [p for case in at_the_limits(LIMITS, SPEC) for p in _check(case)]
    assert not problems, "\n".join(problems)


def test_the_meter_sees_an_allocation():
    # The bound above is only as good as the meter: 64 MiB written must read as at least that.
    _, peak = peak_rss_added(lambda: np.ones(64 * 2**20, dtype=np.uint8))
    assert peak >= 60 * 2**20


def test_the_request_budget_is_judged_from_headers_before_any_decode():
    images = request_over_budget(LIMITS)
    headers = [read_header(data, SPEC, LIMITS) for data in images]  # each alone is accepted
    check_request(headers[:-1], LIMITS)
    with pytest.raises(ServiceError) as err:
        check_request(headers, LIMITS)
    assert err.value.status == 413
    assert "limits.max_request_decoded_bytes" in err.value.message
