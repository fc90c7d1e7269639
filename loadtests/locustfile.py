"""Locust users that send real photos to recognition-serve and report ground-truth feedback.

    locust -f loadtests/locustfile.py --users 50 --spawn-rate 5            # web UI on :8089
    LOADTEST_SCENARIO=spike locust -f loadtests/locustfile.py --headless --run-time 5m

Each task is one recognition request: POST /v1/models/{model}/predict (multipart) or, for a share of
them, POST /v2/models/{model}/infer (Open Inference Protocol, JSON with a BYTES tensor). For a share
of the answered predictions the user then posts the photo's true class to /v1/feedback. Statistics
are grouped per endpoint; a 503 (load shedding) is recorded under "shed (503)" instead of as a
failure. Options below are locust arguments and environment variables alike (e.g. --model or
LOADTEST_MODEL).
"""

from __future__ import annotations

import os
import random
import sys

from locust import HttpUser, events, task
from locust.user.wait_time import constant_throughput

from loadtests import checks
from loadtests.images import DEFAULT_LONG_SIDE, load_photos
from loadtests.shapes import SCENARIO_ENV, shape_class_for

DEFAULT_HOST = "http://127.0.0.1:8000"


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    """Load-test settings, each also readable from its LOADTEST_* environment variable."""
    group = parser.add_argument_group("recognition-serve", "What each simulated user sends")
    group.add_argument(
        "--model",
        env_var="LOADTEST_MODEL",
        default="efficientnet_lite0",
        help="model name in the URL",
    )
    group.add_argument(
        "--oip-share",
        env_var="LOADTEST_OIP_SHARE",
        type=float,
        default=0.2,
        help="share of requests sent to the OIP v2 infer endpoint instead of /v1 predict (0..1)",
    )
    group.add_argument(
        "--feedback-share",
        env_var="LOADTEST_FEEDBACK_SHARE",
        type=float,
        default=0.3,
        help="share of answered predictions followed by a feedback label (0..1)",
    )
    group.add_argument(
        "--user-rps",
        env_var="LOADTEST_USER_RPS",
        type=float,
        default=1.0,
        help="recognition requests per second each user aims for (constant throughput)",
    )
    group.add_argument(
        "--images-per-request",
        env_var="LOADTEST_IMAGES_PER_REQUEST",
        type=int,
        default=1,
        help="photos sent in one request",
    )
    group.add_argument(
        "--top-k", env_var="LOADTEST_TOP_K", type=int, default=5, help="top_k asked of /v1 predict"
    )
    group.add_argument(
        "--image-side",
        env_var="LOADTEST_IMAGE_SIDE",
        type=int,
        default=DEFAULT_LONG_SIDE,
        help="long side in pixels the photos are re-encoded at",
    )
    group.add_argument(
        "--seed",
        env_var="LOADTEST_SEED",
        type=int,
        default=0,
        help="seed for photo and share choices",
    )


@events.init.add_listener
def check_settings(environment, **_kwargs) -> None:
    """Refuse bad settings before any traffic is sent, and encode the photos once up front."""
    options = environment.parsed_options
    if options is None:
        return
    problems = checks.settings_problems(
        options.oip_share,
        options.feedback_share,
        options.user_rps,
        options.images_per_request,
        options.top_k,
        options.image_side,
    )
    if problems:
        # SystemExit passes through locust's event hooks, so the run never starts.
        sys.exit("loadtests/locustfile.py: " + "; ".join(problems))
    # Encoding here rather than in the first users' tasks keeps it out of the measured latency.
    load_photos(options.image_side)


class RecognitionUser(HttpUser):
    """Sends photos for recognition at a constant rate and labels a share of the answers."""

    host = DEFAULT_HOST  # --host (or LOCUST_HOST) overrides it
    _instances = 0

    def on_start(self) -> None:
        """Read the settings and prepare this user's photo choices."""
        options = self.environment.parsed_options
        self.model = options.model
        self.oip_share = options.oip_share
        self.feedback_share = options.feedback_share
        self.images_per_request = options.images_per_request
        self.top_k = options.top_k
        self.photos = load_photos(options.image_side)
        RecognitionUser._instances += 1
        # One generator per user: reproducible for a given seed, independent across users.
        self.rng = random.Random(options.seed * 100_003 + RecognitionUser._instances)
        self._pacer = constant_throughput(options.user_rps)

    def wait_time(self) -> float:
        """Pace tasks so each user offers --user-rps requests per second whatever the latency (up to
        1/rate)."""
        return self._pacer(self)

    @task
    def recognize(self) -> None:
        """One recognition request, then feedback for a share of the answered ones."""
        photos = [self.rng.choice(self.photos) for _ in range(self.images_per_request)]
        if self.rng.random() < self.oip_share:
            answer = self._infer(photos)
        else:
            answer = self._predict(photos)
        if answer is not None and self.rng.random() < self.feedback_share:
            self._feedback(answer, photos)

    def _predict(self, photos):
        files = checks.multipart_files([(photo.name, photo.jpeg) for photo in photos])
        with self.client.post(
            f"/v1/models/{self.model}/predict",
            params={"top_k": self.top_k},
            files=files,
            name=checks.PREDICT_NAME,
            catch_response=True,
        ) as response:
            return self._judge(response, checks.predict_problem, len(photos))

    def _infer(self, photos):
        body = checks.oip_infer_request([photo.jpeg for photo in photos])
        with self.client.post(
            f"/v2/models/{self.model}/infer", json=body, name=checks.INFER_NAME, catch_response=True
        ) as response:
            return self._judge(response, checks.infer_problem, len(photos))

    def _judge(self, response, find_problem, expected_images):
        """Mark the response success, shed or failure; return (body, headers) of a good answer, else
        None."""
        outcome = checks.status_outcome(response.status_code)
        if outcome == "shed":
            # Recorded under its own name so shedding is visible but never mistaken for a bad
            # payload.
            response.request_meta["name"] = checks.SHED_NAME
            response.request_meta["request_type"] = checks.SHED_TYPE
            response.success()
            return None
        if outcome == "failure":
            response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            return None
        try:
            body = response.json()
        except ValueError:
            response.failure("response is not JSON")
            return None
        problem = find_problem(body, expected_images)
        if problem:
            response.failure(f"wrong payload: {problem}")
            return None
        response.success()
        return body, response.headers

    def _feedback(self, answer, photos) -> None:
        body, headers = answer
        request_id = checks.request_id_of(body, headers)
        if request_id is None:
            # Nothing to join on: an OIP answer without an id cannot be labelled; not a failure of
            # the service.
            return
        items = [
            {
                "request_id": request_id,
                "index": index,
                "label": photo.feedback_label(checks.top1_class_id(body, index)),
            }
            for index, photo in enumerate(photos)
        ]
        payload = items[0] if len(items) == 1 else {"items": items}
        with self.client.post(
            "/v1/feedback", json=payload, name=checks.FEEDBACK_NAME, catch_response=True
        ) as response:
            outcome = checks.status_outcome(response.status_code)
            if outcome == "ok":
                response.success()
            elif outcome == "shed":
                response.request_meta["name"] = checks.SHED_NAME
                response.request_meta["request_type"] = checks.SHED_TYPE
                response.success()
            else:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")


# The shape is chosen by name so one locustfile serves every scenario; without it,
# --users/--spawn-rate rule.
if os.environ.get(SCENARIO_ENV):
    ScenarioShape = shape_class_for(os.environ[SCENARIO_ENV])
