"""Stopping a process tree by PID, and the launcher's stop on SIGTERM, SIGHUP and SIGINT: the
pure parts by tables, the rest with real (tiny) processes."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from serve_app import launcher
from serve_app.launcher import StopSignals, parent_took, stop_started
from serve_app.process_tree import ProcessRef, ProcessTree, descendants, stop_tree
from serve_app.processes import StopStep, start_process

HUP, INT, TERM = (1 << (int(s) - 1) for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM))


@pytest.mark.parametrize(
    ("parent_of", "roots", "expected"),
    [
        # 1 -> 2 -> 3, and 4 elsewhere: the chain below 1, nothing of 4
        ({2: 1, 3: 2, 4: 9}, [1], {1, 2, 3}),
        # two roots, one of them inside the other's tree: each PID once
        ({2: 1, 3: 2, 5: 4}, [4, 2], {2, 3, 4, 5}),
        # a root with no children is itself
        ({2: 1}, [7], {7}),
        # a cycle (cannot happen in /proc, must not loop forever)
        ({1: 2, 2: 1}, [1], {1, 2}),
    ],
)
def test_descendants(parent_of, roots, expected):
    assert descendants(parent_of, roots) == expected


@pytest.mark.parametrize(
    ("before", "now", "expected"),
    [
        # make caught HUP, INT and TERM; its handler reset HUP to default: it got SIGHUP
        (HUP | INT | TERM, INT | TERM, signal.SIGHUP),
        (HUP | INT | TERM, HUP | TERM, signal.SIGINT),
        (HUP | INT | TERM, HUP | INT, signal.SIGTERM),
        # nothing changed
        (HUP | INT | TERM, HUP | INT | TERM, None),
        # INT was never caught (make started in the background ignores it): no change to read
        (HUP | TERM, HUP | TERM, None),
        # a newly caught signal is not a signal taken
        (TERM, HUP | TERM, None),
    ],
)
def test_parent_took(before, now, expected):
    assert parent_took(before, now) == expected


# A parent that starts a grandchild and exits at once: the grandchild is orphaned (reparented away
# from the tree) as HAProxy is when Ray's proxy worker dies.
ORPHANING = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


def test_stop_tree_stops_what_the_leader_orphaned(tmp_path):
    log = tmp_path / "leader.log"
    leader = start_process("leader", [sys.executable, "-c", ORPHANING], log)
    leader.wait_ready(lambda: log.read_text().strip() != "", 60, "prints its child's PID", 0.05)
    child = int(log.read_text().split()[0])
    tree = ProcessTree(leader.pid)
    tree.refresh()
    assert {ref.pid for ref in tree.members} == {leader.pid, child}
    # SIGKILL to the leader alone: nothing of it runs to stop its child, which is orphaned.
    result = stop_tree(leader, (StopStep(signal.SIGKILL, 30.0),), tree)
    assert result.exit_code == -signal.SIGKILL
    assert result.leftovers == 1 and not result.killed  # the orphan went on SIGTERM
    assert not any(ref.alive() for ref in tree.members)


def test_a_reused_pid_does_not_pass_for_a_tree_member():
    proc = subprocess.Popen(["sleep", "60"])
    try:
        tree = ProcessTree(proc.pid)
        tree.refresh()
        (ref,) = tree.members
        assert ref.alive()
        # Same PID, other start time: another process that got the PID later.
        assert not ProcessRef(ref.pid, ref.start_ticks + 1).alive()
    finally:
        proc.kill()
        proc.wait()
    assert not ref.alive()


# A `serve run` that ignores SIGINT and starts a child: only an escalation stops it.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
print("ready", flush=True)
time.sleep(120)
"""


@pytest.fixture
def stop_signals():
    saved = {sig: signal.getsignal(sig) for sig in launcher.STOP_SIGNALS}
    signals = StopSignals()
    signals.install()
    yield signals
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_second_signal_during_the_stop_kills_what_is_left(tmp_path, stop_signals):
    log = tmp_path / "serve.log"
    serve = start_process("serve run", [sys.executable, "-c", STUBBORN], log)
    serve.wait_ready(lambda: "ready" in log.read_text().splitlines(), 60, "prints ready", 0.05)
    stop_signals.received.append(signal.SIGTERM)  # the first signal: the stop begins
    # The second one, sent to this very process while the stop waits on serve run's grace.
    second = threading.Timer(0.5, lambda: signal.raise_signal(signal.SIGHUP))
    second.start()
    try:
        stop_started(serve, None, stop_signals)
    finally:
        second.cancel()
    assert stop_signals.received == [signal.SIGTERM, signal.SIGHUP]
    assert serve.process.returncode == -signal.SIGKILL  # killed, not waited out
    child = int(log.read_text().split()[0])
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text()


def test_stop_signals_take_the_signals_even_when_ignored(stop_signals):
    for sig in launcher.STOP_SIGNALS:
        assert signal.getsignal(sig) == stop_signals._handle
    signal.raise_signal(signal.SIGINT)  # noted, not a KeyboardInterrupt
    assert stop_signals.received == [signal.SIGINT]


def test_the_stop_bound_covers_every_step():
    # 45 s serve run's own shutdown + 5 s SIGTERM + 5 s SIGKILL to its leftovers
    # + 3 stack processes x 15 s SIGTERM grace = 100 s
    assert launcher.STOP_BOUND_S == 45 + 5 + 5 + 3 * 15


# Under make: a recipe that waits on a stand-in serve run the way `recserve up` does, and prints
# the stop signal it saw.
WAITER = """
import subprocess, sys
from serve_app.launcher import StopSignals, wait_for_serve
from serve_app.processes import start_process
signals = StopSignals()
signals.install()
serve = start_process("serve run", ["sleep", "60"])
print("waiting", flush=True)
code = wait_for_serve(serve, signals)
print("stop", code, [s.name for s in signals.received], flush=True)
serve.process.kill()
"""


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_make_alone_reaches_the_launcher(tmp_path, sig):
    (tmp_path / "waiter.py").write_text(WAITER)
    (tmp_path / "Makefile").write_text(f"run:\n\texec {sys.executable} waiter.py\n")
    log = tmp_path / "make.log"
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    make = start_process("make", ["make", "-s", "-C", str(tmp_path), "run"], log, env=env)
    try:
        make.wait_ready(lambda: "waiting" in log.read_text(), 60, "the recipe waits", 0.05)
        # start_process gives make SIGINT back (a background job would inherit SIG_IGN), as a
        # make run from a terminal has it.
        make.process.send_signal(sig)
        make.process.wait(timeout=60)
    finally:
        make.stop((StopStep(signal.SIGKILL, 10.0, whole_group=True),))
    assert f"stop None ['{sig.name}']" in log.read_text()
