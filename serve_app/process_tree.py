"""A process tree stopped by PID: a process that starts others of its own (`serve run`: Ray's GCS,
raylet, workers, HAProxy) is stopped with every process seen below it. Each is remembered by PID
and start time, so what its death orphans is still stopped, and a reused PID is never signalled.
Nothing here looks a process up by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from serve_app.processes import POLL_S, StartedProcess, StopStep, escalate, stat_fields

# How long what a stopped process left behind gets after SIGTERM, and after SIGKILL.
LEFTOVER_TERM_S = 5.0
LEFTOVER_KILL_S = 5.0


@dataclass(frozen=True)
class ProcessRef:
    """One process: its PID and start time, so a later process given the same PID never passes
    for it."""

    pid: int
    start_ticks: int

    def alive(self) -> bool:
        """It still runs (a zombie does not count) and its PID still belongs to it."""
        fields = stat_fields(self.pid)
        if not fields or len(fields) < 20 or fields[0] in ("Z", "X"):
            return False
        return int(fields[19]) == self.start_ticks


def descendants(parent_of: dict[int, int], roots: Iterable[int]) -> set[int]:
    """`roots` and every PID below them, given each PID's parent (pure)."""
    children: dict[int, list[int]] = defaultdict(list)
    for pid, parent in parent_of.items():
        children[parent].append(pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return found


def _process_table() -> dict[int, tuple[int, int]]:
    # PID -> (parent PID, start ticks) of every process /proc shows now.
    table = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            fields = stat_fields(int(entry.name))
            if fields and len(fields) >= 20:
                table[int(entry.name)] = (int(fields[1]), int(fields[19]))
    return table


@dataclass
class ProcessTree:
    """Every process ever seen below one root, remembered across `refresh` calls, so a child
    orphaned by its parent's death (reparented away from the tree) is still known and stopped."""

    root: int
    members: set[ProcessRef] = field(default_factory=set)

    def refresh(self) -> None:
        """Add what now runs below the root or below any member still alive."""
        table = _process_table()
        # The root by its bare PID only the first time: once it is gone its PID may be reused.
        roots = {ref.pid for ref in self.members if ref.alive()} if self.members else {self.root}
        parent_of = {pid: parent for pid, (parent, _) in table.items()}
        for pid in descendants(parent_of, roots):
            if pid in table:
                self.members.add(ProcessRef(pid, table[pid][1]))

    def alive(self) -> list[ProcessRef]:
        """The members still running."""
        return [ref for ref in self.members if ref.alive()]

    def signal_all(self, sig: signal.Signals) -> int:
        """Send `sig` to every member still running, by PID; how many were signalled."""
        sent = 0
        for ref in self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(ref.pid, sig)
                sent += 1
        return sent

    def wait_gone(self, timeout_s: float, poll_s: float = POLL_S) -> bool:
        """Wait until no member runs, at most `timeout_s`; whether they all went."""
        deadline = time.monotonic() + timeout_s
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)
        return True


@dataclass(frozen=True)
class TreeStopped:
    """How stopping a tree went: the leader's exit code, the processes seen, those that had to be
    signalled after the leader went, and whether SIGKILL was needed for them."""

    exit_code: int | None
    seen: int
    leftovers: int
    killed: bool


def stop_tree(
    started: StartedProcess,
    steps: Iterable[StopStep],
    tree: ProcessTree | None = None,
    leftover_term_s: float = LEFTOVER_TERM_S,
    refresh_every_s: float = 1.0,
) -> TreeStopped:
    """Stop `started` with `steps`, then, by PID, whatever of its tree outlived it: SIGTERM, and
    SIGKILL after `leftover_term_s`. Bounded when every step's wait is."""
    tree = tree or ProcessTree(started.pid)
    tree.refresh()  # before the first signal, while every parent link is still in place
    last_refresh = time.monotonic()

    def running() -> bool:
        nonlocal last_refresh
        if time.monotonic() - last_refresh >= refresh_every_s:
            tree.refresh()
            last_refresh = time.monotonic()
        return started.running()

    escalate(started.pid, steps, running)
    exit_code = started.process.poll()
    leftovers = len(tree.alive())
    killed = False
    if leftovers:
        tree.signal_all(signal.SIGTERM)
        if not tree.wait_gone(leftover_term_s):
            killed = tree.signal_all(signal.SIGKILL) > 0
            tree.wait_gone(LEFTOVER_KILL_S)
    return TreeStopped(exit_code, len(tree.members), leftovers, killed)
