"""Fuzzing every route of the running service from its own OpenAPI document (schemathesis).

Bodies, query strings and headers are generated from the schema, both fitting it (positive) and
breaking it (negative); the pass mark is no response >= 500 and every 4xx in the one error shape
`{"error": {"code": ..., "message": ...}}`. The path's model name is narrowed to the served models
and one unknown name, so that the generated bodies reach the parsers instead of stopping at 404.
"""

from __future__ import annotations

import copy
import json

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

UNKNOWN_MODEL = "no-such-model"
# Examples per route and mode: 17 routes x 2 modes x 25 stays well under 90 s on 2 cores.
EXAMPLES = 25
REQUEST_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def api_schema(service_url):
    """The service's OpenAPI document, with path parameters narrowed to what is served."""
    raw = requests.get(f"{service_url}/openapi.json", timeout=10).json()
    served = requests.get(f"{service_url}/v1/models", timeout=10).json()["models"]
    # lite0_canary's quality counts are test_metrics_live's to compute by hand: fuzz the others.
    names = [m["name"] for m in served if m["name"] != "lite0_canary"] + [UNKNOWN_MODEL]
    versions = sorted({str(m["version"]) for m in served}) + ["0"]
    doc = copy.deepcopy(raw)
    for operations in doc["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] == "name":
                    parameter["schema"] = {"type": "string", "enum": names}
                elif parameter["in"] == "path" and parameter["name"] == "version":
                    parameter["schema"] = {"type": "string", "enum": versions}
    return schemathesis.openapi.from_dict(doc)


def problem_with(response: requests.Response) -> str | None:
    """What is wrong with a response to a generated request, or None."""
    if response.status_code >= 500:
        return f"{response.status_code}: {response.text[:300]}"
    if 400 <= response.status_code < 500:
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            return f"{response.status_code} without the JSON error shape: {response.text[:300]}"
        if not (isinstance(error.get("code"), str) and isinstance(error.get("message"), str)):
            return f"{response.status_code} with an error missing code or message: {error}"
    return None


def fuzz(operation, mode: GenerationMode, base_url: str) -> tuple[int, list[str]]:
    """Send EXAMPLES generated requests of one mode to one operation; the count sent and what
    went wrong."""
    sent, problems = [0], []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: every problem is kept as found
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        response = case.call(base_url=base_url, timeout=REQUEST_TIMEOUT_S)
        sent[0] += 1
        problem = problem_with(response)
        if problem is not None:
            body = case.body if isinstance(case.body, (str, int, float, list, dict)) else "..."
            problems.append(
                f"{mode} {case.method} {case.formatted_path} query={case.query} "
                f"headers={case.headers} media={case.media_type} body={json.dumps(body)[:200]}"
                f" -> {problem}"
            )

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        # a route without parameters or body has nothing negative mode could break
    return sent[0], problems


def test_no_generated_request_gets_a_5xx_or_a_4xx_outside_the_error_shape(api_schema, service_url):
    problems, sent_by_route = [], {}
    for result in api_schema.get_all_operations():
        operation = result.ok()
        route = f"{operation.method.upper()} {operation.path}"
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            count, found = fuzz(operation, mode, service_url)
            sent_by_route[route] = sent_by_route.get(route, 0) + count
            problems.extend(found)
    sent = sum(sent_by_route.values())
    # every route got requests (one without parameters has a single positive request); the three
    # that take a body got the full number of both modes
    assert all(count >= 1 for count in sent_by_route.values()), sent_by_route
    for route in (
        "POST /v1/models/{name}/predict",
        "POST /v1/feedback",
        "POST /v2/models/{name}/infer",
    ):
        assert sent_by_route[route] >= 2 * EXAMPLES, sent_by_route
    assert problems == [], f"{len(problems)} of {sent} requests:\n" + "\n".join(problems[:40])
    # the service is still up and ready after the fuzzing
    assert requests.get(f"{service_url}/readyz", timeout=10).status_code == 200
