"""Whether requests of one kind reach a model's shadow: the report's count, read while nothing
else is sent, before and after a few of them."""

from __future__ import annotations

import time

import pytest
import requests

SENDS = 40  # at a sampled fraction of 0.25, all miss with a chance of 0.75**40 (1e-5)
QUIET_S = 1.5
SETTLE_TIMEOUT_S = 60.0
POLL_S = 2.0  # after every 4 sends: a compared copy is in the report within about a second


def shadow_seen(service_url: str, model: str) -> int:
    """Sampled requests the model's shadow report accounts for: compared, dropped or failed."""
    answer = requests.get(f"{service_url}/v1/models/{model}/shadow", timeout=30)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    return report["requests"] + report["dropped"] + report["errors"]


def shadow_settled(service_url: str, model: str) -> int:
    """The report's count once it has not moved for QUIET_S: copies of earlier requests are
    compared after their answers."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    last, since = shadow_seen(service_url, model), time.monotonic()
    while time.monotonic() - since < QUIET_S:
        assert time.monotonic() < deadline, f"shadow report still moving after {SETTLE_TIMEOUT_S}s"
        time.sleep(0.5)
        if (now := shadow_seen(service_url, model)) != last:
            last, since = now, time.monotonic()
    return last


def sends_until_shadowed(service_url: str, model: str, send) -> int:
    """`send()` four at a time until the shadow report counts more than before; nothing else is
    sent meanwhile, so only these can have moved it. The sends it took (fails after SENDS)."""
    start = shadow_settled(service_url, model)
    for sent in range(1, SENDS + 1):
        send()
        if sent % 4:
            continue
        deadline = time.monotonic() + POLL_S
        while time.monotonic() < deadline:
            if shadow_seen(service_url, model) > start:
                return sent
            time.sleep(0.25)
    pytest.fail(f"{SENDS} sends, none in {model}'s shadow report")
