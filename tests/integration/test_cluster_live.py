"""The application on a real two-node Ray cluster on this machine, and a node and a replica lost.

Two raylets (`ray start`, one CPU each, their own temp folders and ports, the worker joined with the
head's token), the cluster config deployed with `serve deploy`; then the worker node SIGKILLed and a
replica on the head SIGKILLed, each under ~10 requests/s (serve_app/devtools/cluster_demo.py, which
`make cluster-demo` runs by hand). Ports: 1000 from 25000 + 20 x RECSERVE_TEST_PORT_OFFSET (offset
500: 35000..35999), so a second session with another offset runs beside this one.
Runs in a pytest session of its own (the Makefile's ISOLATED list).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from serve_app.devtools.cluster_demo import ESPRESSO, run_scenario, summary
from serve_app.devtools.local_cluster import ClusterPlan
from tests.integration.scratch import discard_unless_failed, scratch_dir

OFFSET = int(os.environ.get("RECSERVE_TEST_PORT_OFFSET", "0"))
MAX_FIRST_ATTEMPT_FAILURES = 0.01  # of the requests sent while a node or a replica is lost


@pytest.fixture(scope="module")
def report(request):
    root = scratch_dir("rs-cl-")
    result = run_scenario(
        ClusterPlan(25000 + 20 * OFFSET, root), rps=10, load_s=15, runtime="torch"
    )
    print(summary(result))
    if os.environ.get("RECSERVE_CLUSTER_REPORT"):  # keep the run's figures (docs/DEPLOYMENT.md)
        Path(os.environ["RECSERVE_CLUSTER_REPORT"]).write_text(json.dumps(result, indent=2) + "\n")
    yield result  # the cluster is stopped by now: run_scenario stops what it started
    discard_unless_failed(request.session, root)


def test_replicas_spread_over_both_nodes_and_answer_through_each_proxy(report):
    assert report["replica_nodes"] == ["head", "worker"]
    assert report["top1_via_head_proxy"] == ESPRESSO
    assert report["top1_via_worker_proxy"] == ESPRESSO


def test_a_photo_over_the_replicas_grpc_message_limit_is_answered(report):
    """Small predicts cross between deployments by value over gRPC, whose replica servers take at
    most 4 MiB a message; a larger photo must go as an actor call and be answered all the same."""
    from ray.serve._private.constants import RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH

    big = report["large_photo"]
    assert big["bytes"] > RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH
    assert big["top1_via_head_proxy"] == ESPRESSO
    assert big["top1_via_worker_proxy"] == ESPRESSO


@pytest.mark.parametrize("fault", ["worker_kill", "replica_kill"])
def test_a_lost_node_or_replica_costs_at_most_one_percent_and_none_with_the_retry(report, fault):
    r = report[fault]
    assert r["sent"] >= 100
    assert r["first_attempt_failed"] <= MAX_FIRST_ATTEMPT_FAILURES * r["sent"], r
    assert r["failed_after_retry"] == 0, r


def test_the_controller_reschedules_and_the_service_answers_afterwards(report):
    assert report["worker_kill"]["processes_killed"] >= 2  # the raylet and at least one worker
    # a replacement node got the pending replica: replicas on two nodes again
    assert report["replacement_join_to_replica_running_s"] > 0
    assert report["top1_after_worker_kill"] == ESPRESSO
    assert report["replica_kill"]["replaced"] is True
    assert report["top1_at_end"] == ESPRESSO


def test_everything_started_was_stopped(report):
    assert report["processes_left_running"] == 0
