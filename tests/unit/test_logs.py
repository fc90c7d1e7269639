"""The request log line, formatted by Ray Serve's own JSON logging setup (no Ray worker needed)."""

from __future__ import annotations

import json
import logging

import pytest

from serve_app.serving.logs import log_request, outcome_of, request_fields, request_logger


@pytest.fixture
def serve_json_log(tmp_path):
    """Configure the `ray.serve` logger exactly as a replica does with `encoding: JSON`.

    Uses Serve's private configure_component_logger: the public path (logging_config in the
    Serve config) only runs inside a replica. Restores the logger afterwards.
    """
    from ray.serve._private.common import ServeComponentType
    from ray.serve._private.logging_utils import configure_component_logger
    from ray.serve.schema import LoggingConfig

    logger = logging.getLogger("ray.serve")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    configure_component_logger(
        component_name="Ingress",
        component_id="x7k2p9qd",
        component_type=ServeComponentType.REPLICA,
        logging_config=LoggingConfig(encoding="JSON", logs_dir=str(tmp_path), log_level="INFO"),
        max_bytes=10_000_000,
        backup_count=1,
    )
    # as the proxy does for an HTTP request: request id and route in the request context
    import ray.serve.context as ctx

    token = ctx._serve_request_context.set(
        ctx._RequestContext(
            route="/v1/models/efficientnet_lite0/predict",
            request_id="7f3c2a",
            app_name="recognition",
        )
    )
    try:
        yield logger, tmp_path
    finally:
        ctx._serve_request_context.reset(token)
        for h in logger.handlers:
            h.flush()
            h.close()
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


def test_request_line_is_one_json_object_with_the_fields(serve_json_log):
    logger, logs_dir = serve_json_log
    log_request(
        logger,
        request_id="7f3c2a",
        model="efficientnet_lite0",
        status=200,
        latency_ms=31.4159,
        batch_size=4,
        model_version="1",
        images=1,
    )
    for h in logger.handlers:
        h.flush()
    (log_file,) = logs_dir.glob("replica_*.log")
    lines = log_file.read_text().splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    print(lines[0])  # the example line in docs/METRICS.md comes from here
    assert line["request_id"] == "7f3c2a"
    assert line["model_name"] == "efficientnet_lite0" and line["model_version"] == "1"
    assert line["status"] == "success" and line["status_code"] == 200
    assert line["latency_ms"] == 31.416 and line["batch_size"] == 4 and line["images"] == 1
    assert line["levelname"] == "INFO"
    assert line["deployment"] == "Ingress" and line["replica"] == "x7k2p9qd"
    assert (
        line["route"] == "/v1/models/efficientnet_lite0/predict"
        and line["application"] == "recognition"
    )
    assert (
        line["message"]
        == "request 7f3c2a model=efficientnet_lite0 status=200 latency_ms=31.4 batch_size=4"
    )


@pytest.mark.parametrize(
    "code, outcome",
    [
        (200, "success"),
        (400, "client_error"),
        (404, "client_error"),
        (413, "client_error"),
        (429, "rejected"),
        (503, "rejected"),
        (500, "server_error"),
    ],
)
def test_outcome_from_status_code(code, outcome):
    assert outcome_of(code) == outcome


def test_rejected_request_without_a_batch():
    fields = request_fields("r1", "m", 503, 1.0, None, error="overloaded")
    assert (
        fields["batch_size"] is None
        and fields["status"] == "rejected"
        and fields["error"] == "overloaded"
    )
    # an explicit outcome wins over the code (e.g. a 503 the service caused itself)
    assert request_fields("r1", "m", 503, 1.0, outcome="server_error")["status"] == "server_error"


@pytest.mark.parametrize("key", ["message", "process", "route", "replica", "asctime"])
def test_reserved_field_names_are_refused(key):
    with pytest.raises(ValueError, match="reserved"):
        log_request(request_logger(), "r", "m", 200, 1.0, **{key: "x"})


def test_text_encoding_still_shows_the_key_fields(caplog):
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        log_request(request_logger(), "r9", "efficientnet_lite0", 404, 2.25)
    assert (
        "request r9 model=efficientnet_lite0 status=404 latency_ms=2.2 batch_size=-" in caplog.text
    )
