"""API keys: token format and hash at rest, the keys file, scopes of paths, the bearer check, the
feedback rate limit, and the ingress's middleware refusing every protected route in-process."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from serve_app.api_keys import (
    ApiKey,
    KeysFile,
    KeysFileError,
    hash_token,
    key_id_of,
    keys_file_path,
    new_token,
)
from serve_app.config import AuthConfig
from serve_app.feedback_rate import TokenBuckets, retry_after_s
from serve_app.request_ids import bound_request_id, request_id_problem, unbound_request_id
from serve_app.serving.auth import (
    KeyRing,
    bearer_token,
    is_json_media_type,
    required_scope,
    unbound_result,
)
from serve_app.serving.auth_middleware import KeyGuard, missing_keys


def make_key(scopes, key_id=None) -> tuple[ApiKey, str]:
    key_id, token = new_token(key_id)
    return ApiKey(key_id, hash_token(key_id, token), frozenset(scopes)), token


# ---- tokens, hashes, the keys file ------------------------------------------------------------


def test_a_token_names_its_key_and_its_hash_depends_on_id_and_secret():
    key_id, token = new_token()
    assert key_id_of(token) == key_id
    assert key_id_of(token + "!") is None and key_id_of("Bearer " + token) is None
    other_id, other = new_token()
    assert token != other
    assert hash_token(key_id, token) != hash_token(other_id, token)
    assert hash_token(key_id, token) == hash_token(key_id, token)
    assert token not in hash_token(key_id, token)


def test_the_keys_file_keeps_hashes_only_and_is_private(tmp_path):
    key, token = make_key(["predict", "feedback"])
    path = tmp_path / "keys.json"
    KeysFile(path, [key]).write()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert token not in text and key.sha256 in text
    assert KeysFile.read(path).keys == [key]


@pytest.mark.parametrize(
    "doc, problem",
    [
        ({"keys": [{"id": "ab12", "sha256": "x" * 64, "scopes": ["predict"]}]}, "64 hex"),
        ({"keys": [{"id": "AB", "sha256": "a" * 64, "scopes": ["predict"]}]}, "id must be"),
        ({"keys": [{"id": "ab12", "sha256": "a" * 64, "scopes": ["root"]}]}, "scopes must"),
        ({"keys": [{"id": "ab12", "sha256": "a" * 64, "scopes": []}]}, "scopes must"),
        ({"keys": [{"id": "ab12", "sha256": "a" * 64, "scopes": ["admin"]}] * 2}, "twice"),
        ([], "expected"),
    ],
)
def test_a_malformed_keys_file_is_refused_naming_the_entry(tmp_path, doc, problem):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(KeysFileError, match=problem):
        KeysFile.read(path)


def test_the_keys_file_comes_from_the_config_then_the_environment(tmp_path):
    assert keys_file_path(None, {}) is None
    assert keys_file_path(None, {"RECSERVE_API_KEYS_FILE": "/k.json"}).as_posix() == "/k.json"
    assert keys_file_path("/c.json", {"RECSERVE_API_KEYS_FILE": "/k.json"}).as_posix() == "/c.json"


# ---- scopes and the bearer check ------------------------------------------------------------


@pytest.mark.parametrize(
    "path, scope",
    [
        ("/healthz", None),
        ("/readyz", None),
        ("/v2/health/ready", None),
        ("/openapi.json", None),
        ("/v1/models/m/predict", "predict"),
        ("/v2/models/m/infer", "predict"),
        ("/v1/models", "predict"),
        ("/no/such/route", "predict"),
        ("/v1/feedback", "feedback"),
        ("/dashboard", "admin"),
        ("/dashboard/api/query_range", "admin"),
        ("/v1/autoscaling/forecast", "admin"),
        ("/v1/models/m/quality", "admin"),
        ("/healthz/../v1/feedback", "predict"),
        ("/dashboardx", "predict"),
    ],
)
def test_each_path_needs_its_scope(path, scope):
    assert required_scope(path) == scope


def test_the_check_tells_missing_unknown_wrong_and_scope_apart():
    key, token = make_key(["predict"])
    ring = KeyRing([key])
    assert ring.check(None, "predict").status == 401
    assert ring.check(f"Basic {token}", "predict").status == 401
    assert ring.check("Bearer rsk_ffff_" + "a" * 43, "predict").status == 401
    forged = token[:-1] + ("a" if token[-1] != "a" else "b")
    assert ring.check(f"Bearer {forged}", "predict").status == 401
    refused = ring.check(f"Bearer {token}", "feedback")
    assert (refused.status, refused.code) == (403, "forbidden")
    assert "'feedback'" in refused.message and token not in refused.message
    ok = ring.check(f"bearer  {token} ", "predict")
    assert (ok.status, ok.principal) == (200, key.key_id)
    assert bearer_token("Bearer ") is None


def test_feedback_buckets_refill_at_the_rate_per_key():
    buckets = TokenBuckets(rate_per_s=2.0, burst=3)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", 0.0) == pytest.approx(0.5)
    assert buckets.take("b", 0.0) == 0.0  # another key has its own bucket
    assert buckets.take("a", 0.5) == 0.0  # one token back after 1/rate
    assert buckets.take("a", 0.5) > 0
    assert retry_after_s(0.01) == 1
    assert retry_after_s(2.2) == 3


@pytest.mark.parametrize(
    "content_type, ok",
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("application/merge-patch+json", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
        (None, False),
    ],
)
def test_only_json_bodies_count_as_json(content_type, ok):
    assert is_json_media_type(content_type) is ok


def test_a_bound_id_is_never_a_client_id_and_unbinds_to_what_was_sent():
    bound = bound_request_id("k1", "abc")
    assert bound != bound_request_id("k2", "abc")
    assert request_id_problem(bound) is not None  # no client can send or ask for it
    assert unbound_request_id(bound) == "abc"
    assert bound_request_id(None, "abc") == "abc"  # without keys: stored as sent
    result = {"request_id": bound, "message": f"no prediction with request_id {bound!r}"}
    assert unbound_result(result) == {
        "request_id": "abc",
        "message": "no prediction with request_id 'abc'",
    }


# ---- the guard: reloads, fails closed --------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_revoked_key_stops_working_after_the_reload_interval(tmp_path):
    first, first_token = make_key(["predict"])
    second, second_token = make_key(["predict"])
    path = tmp_path / "keys.json"
    KeysFile(path, [first, second]).write()
    clock = Clock()
    guard = KeyGuard(clock)
    guard.configure(AuthConfig(keys_file=str(path), reload_interval_s=2.0), {})
    assert guard.admit("/v1/models", f"Bearer {first_token}") == (first.key_id, None)
    KeysFile(path, [second]).write()
    clock.now += 2.5
    principal, refusal = guard.admit("/v1/models", f"Bearer {first_token}")
    assert principal is None and refusal.status == 401
    assert guard.admit("/v1/models", f"Bearer {second_token}") == (second.key_id, None)
    path.write_text("{not json")  # a broken edit keeps the last good keys
    clock.now += 2.5
    assert guard.admit("/v1/models", f"Bearer {second_token}") == (second.key_id, None)


def test_a_configured_keys_file_that_cannot_be_read_stops_the_start(tmp_path):
    with pytest.raises(KeysFileError, match="no such keys file"):
        KeyGuard().configure(AuthConfig(keys_file=str(tmp_path / "missing.json")), {})


def test_required_keys_stop_the_start_until_a_key_is_there(tmp_path):
    path = tmp_path / "keys.json"
    required = AuthConfig(keys_file=str(path), require_keys=True)
    for prepare, problem in [
        (lambda: None, "no such keys file"),
        (lambda: KeysFile(path, []).write(), "holds no key"),
    ]:
        prepare()
        assert "auth.require_keys" in missing_keys(required, {})
        with pytest.raises(KeysFileError, match=problem):
            KeyGuard().configure(required, {})
    with pytest.raises(KeysFileError, match="auth.require_keys is true but no API keys file"):
        KeyGuard().configure(AuthConfig(require_keys=True), {})
    key, token = make_key(["predict"])
    KeysFile(path, [key]).write()
    guard = KeyGuard()
    guard.configure(required, {})
    assert guard.admit("/v1/models", None)[1].status == 401
    assert guard.admit("/v1/models", f"Bearer {token}") == (key.key_id, None)
    # the environment's keys file counts as configured
    env = {"RECSERVE_API_KEYS_FILE": str(path)}
    assert missing_keys(AuthConfig(require_keys=True), env) is None


def test_the_cluster_config_does_not_build_without_its_keys(tmp_path):
    from serve_app.app import build_app
    from serve_app.config import load_config
    from serve_app.paths import CONFIGS_DIR

    cfg = load_config(CONFIGS_DIR / "serve_config.cluster.yaml")
    assert cfg.auth.require_keys and not Path(cfg.auth.keys_file).exists()
    with pytest.raises(ValueError, match="auth.require_keys is true"):
        build_app(cfg.model_dump())
    # the same config builds once its keys file holds a key
    path = tmp_path / "keys.json"
    KeysFile(path, [make_key(["predict"])[0]]).write()
    args = cfg.model_dump()
    args["auth"]["keys_file"] = str(path)
    assert build_app(args) is not None


def test_without_keys_every_request_runs_anonymous():
    guard = KeyGuard()
    guard.configure(AuthConfig(), {})
    assert guard.admit("/v1/feedback", None) == (None, None)


def test_feedback_over_the_rate_is_answered_429_with_retry_after(tmp_path):
    key, token = make_key(["feedback"])
    path = tmp_path / "keys.json"
    KeysFile(path, [key]).write()
    guard = KeyGuard(Clock())
    cfg = AuthConfig(keys_file=str(path), feedback_rate_per_s=0.5, feedback_burst=2)
    guard.configure(cfg, {})
    auth = f"Bearer {token}"
    assert [guard.admit("/v1/feedback", auth)[1] for _ in range(2)] == [None, None]
    _, refusal = guard.admit("/v1/feedback", auth)
    assert refusal.status == 429 and refusal.headers == {"Retry-After": "2"}


# ---- the ingress app in-process: every protected route refuses --------------------------------


@pytest.fixture()
def keyed_ingress(tmp_path):
    """The ingress's FastAPI app with a keys file holding one key per scope."""
    from serve_app.serving.auth_middleware import GUARD
    from serve_app.serving.ingress import api

    made = {scope: make_key([scope], key_id=f"only{scope}") for scope in ("predict", "admin")}
    made["feedback"] = make_key(["feedback"], key_id="onlyfeedback")
    path = tmp_path / "keys.json"
    KeysFile(path, [key for key, _ in made.values()]).write()
    saved = (GUARD.path, GUARD.ring, GUARD.config, GUARD.buckets)
    GUARD.configure(AuthConfig(keys_file=str(path)), {})
    try:
        yield api, {scope: token for scope, (_, token) in made.items()}
    finally:
        GUARD.path, GUARD.ring, GUARD.config, GUARD.buckets = saved


def every_route(routes):
    """Routes, with those of included routers (the Ingress's, the dashboard's) flattened."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from every_route(included.routes)
        elif isinstance(route, Route):
            yield route


def protected_routes(api) -> list[tuple[str, str, str]]:
    out = []
    for route in every_route(api.routes):
        if required_scope(route.path) is None:
            continue
        path = route.path.replace("{name}", "m").replace("{version}", "1")
        path = path.replace("{name:path}", "x")
        for method in sorted(route.methods - {"HEAD"}):
            out.append((method, path, required_scope(route.path)))
    return out


def test_every_protected_route_refuses_no_key_a_wrong_key_and_a_key_without_its_scope(
    keyed_ingress,
):
    api, tokens = keyed_ingress
    routes = protected_routes(api)
    scopes = {scope for _, _, scope in routes}
    assert scopes == {"predict", "feedback", "admin"}, routes
    assert len(routes) >= 12
    _, wrong = new_token("only" + "predict")  # the right id, not the right secret
    client = TestClient(api, raise_server_exceptions=False)
    for method, path, scope in routes:
        missing = client.request(method, path)
        assert missing.status_code == 401, (method, path, missing.text)
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert missing.json()["error"]["code"] == "unauthorized"
        bad = client.request(method, path, headers={"Authorization": f"Bearer {wrong}"})
        assert bad.status_code == 401, (method, path)
        other = "admin" if scope != "admin" else "predict"
        refused = client.request(method, path, headers={"Authorization": f"Bearer {tokens[other]}"})
        assert refused.status_code == 403, (method, path, refused.text)
        assert refused.json()["error"]["code"] == "forbidden"
        assert tokens[other] not in refused.text


def test_a_second_key_can_neither_label_nor_overwrite_the_first_keys_prediction():
    from serve_app.quality.feedback import FeedbackItem
    from serve_app.quality.tracker import QualityTracker

    tracker = QualityTracker()

    def record(key, request_id, class_id):
        stored = bound_request_id(key, request_id)
        prediction = {"request_id": stored, "index": 0, "model_name": "m", "model_version": "1"}
        tracker.record([{**prediction, "class_id": class_id, "score": 0.9}])

    def label(key, request_id):
        item = FeedbackItem(bound_request_id(key, request_id), 3)
        return unbound_result(tracker.feedback(item).as_dict())

    record("alice", "same-id", 1)
    record("bobby", "same-id", 2)  # the same X-Request-Id from another key
    record("alice", "only-alice", 5)
    stolen = label("bobby", "only-alice")
    assert (stolen["status"], stolen["http_status"]) == ("unknown_id", 404)
    assert stolen["request_id"] == "only-alice" and "alice/" not in stolen["message"]
    assert label("alice", "same-id")["predicted_class_id"] == 1  # not overwritten by bobby's
    assert label("bobby", "same-id")["predicted_class_id"] == 2
