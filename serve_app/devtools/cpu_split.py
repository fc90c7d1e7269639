"""CPU time per request, by process: where a served request's work is done.

Throughput on a small machine is bounded by the CPU every process spends per request, not only by
the model's. Reading each process' CPU time before and after a measured load, and dividing by the
requests answered, shows the share of Serve's machinery (the proxy, the hop between deployments,
the controller) beside the model's.
"""

from __future__ import annotations

import os
import re

# Ray names its worker processes `ray::<actor or task>`; the other processes of a Ray node are
# told apart by their command line.
_RAY_WORKER = re.compile(r"ray::(\S+)")
_NODE_PROCESSES = (
    ("haproxy", "haproxy"),
    ("raylet", "raylet"),
    ("gcs_server", "gcs_server"),
    ("dashboard/agent", "dashboard agent"),
    ("dashboard", "dashboard"),
    ("log_monitor", "log monitor"),
    ("runtime_env", "runtime env agent"),
    ("monitor.py", "autoscaler monitor"),
    ("serve run", "serve run"),
    ("bin/serve", "serve run"),
)
THIS_PROCESS = "load generator (this process)"


def process_label(cmdline: str) -> str:
    """A short name for one process of the node, from its command line."""
    worker = _RAY_WORKER.search(cmdline)
    if worker:
        # A replica's title may carry the method it is running; the replica is what matters.
        return worker.group(1).split(".", 1)[0]
    for needle, label in _NODE_PROCESSES:
        if needle in cmdline:
            return label
    first = cmdline.split(" ", 1)[0]
    return first.rsplit("/", 1)[-1] or "unnamed"


def cpu_ms_per_request(
    before: dict[tuple[int, str], float], after: dict[tuple[int, str], float], requests: int
) -> dict[str, float]:
    """Milliseconds of CPU per request by process label, largest first, from two snapshots of
    (pid, label) -> CPU seconds. A process that started in between counts from zero; one that
    ended is left out (its time is unknown). Labels under 0.01 ms are dropped."""
    if requests <= 0:
        raise ValueError("CPU per request needs at least one answered request")
    by_label: dict[str, float] = {}
    for key, seconds in after.items():
        spent = seconds - before.get(key, 0.0)
        by_label[key[1]] = by_label.get(key[1], 0.0) + max(spent, 0.0)
    per_request = {label: 1000.0 * s / requests for label, s in by_label.items()}
    return {
        label: round(ms, 2)
        for label, ms in sorted(per_request.items(), key=lambda kv: -kv[1])
        if ms >= 0.01
    }


def snapshot() -> dict[tuple[int, str], float]:
    """CPU seconds (user + system) of every process this user runs, keyed by (pid, label)."""
    import psutil

    me = os.getpid()
    user = psutil.Process(me).username()
    out: dict[tuple[int, str], float] = {}
    for proc in psutil.process_iter():
        try:
            if proc.username() != user:
                continue
            cmdline = " ".join(proc.cmdline())
            times = proc.cpu_times()
        except psutil.Error:  # gone, or not ours to read
            continue
        if not cmdline:
            continue
        label = THIS_PROCESS if proc.pid == me else process_label(cmdline)
        out[(proc.pid, label)] = times.user + times.system
    return out


def environment_of(label: str, names: tuple[str, ...]) -> dict[str, str | None] | None:
    """The values of `names` in the environment of the first process labelled `label` (None
    when there is none): proof that a knob set for `serve run` reached the replicas."""
    import psutil

    for proc in psutil.process_iter():
        try:
            if process_label(" ".join(proc.cmdline())) != label:
                continue
            env = proc.environ()
        except psutil.Error:
            continue
        return {name: env.get(name) for name in names}
    return None
