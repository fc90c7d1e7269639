"""The one runner of child processes: start, wait until ready, stop by PID, PID records.

A process starts in its own process group (unless it must stay in the caller's, like `serve run`
under `recserve up`) with its output in a log file, and counts as ready when a probe (usually an
HTTP URL) answers. It is stopped by PID with an escalation of signals, each step given a time to
act, and failures quote the tail of its log. A process that outlives the command that started it
(the monitoring stack) leaves a PID record; the record keeps the command line too, and a PID only
counts as ours while /proc shows that same command line, so a reused PID is never signalled.
A process that starts others of its own is stopped as a tree (process_tree.py).
Nothing here looks a process up by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

LOG_TAIL_LINES = 30
POLL_S = 0.1


class ProcessFailed(RuntimeError):
    """A started process exited or never got ready; the message ends with the tail of its log."""


class ExitedBeforeReady(ProcessFailed):
    """The process ended before its readiness probe answered."""


class NotReady(ProcessFailed, TimeoutError):
    """The process still runs, but its readiness probe did not answer in time."""


@dataclass(frozen=True)
class StopStep:
    """One step of stopping: send `signal`, then give the process `wait_s` seconds to go.

    `wait_s` None waits as long as it takes; `whole_group` signals the process group the process
    leads (what it started too) instead of the process alone.
    """

    signal: signal.Signals
    wait_s: float | None
    whole_group: bool = False


# Prometheus, Alertmanager and the DingTalk bridge stop cleanly on SIGTERM.
TERM_THEN_KILL = (StopStep(signal.SIGTERM, 15.0), StopStep(signal.SIGKILL, None))


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """GET `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Something accepts connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def group_alive(pgid: int) -> bool:
    """True while any process of group `pgid` exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def log_tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file, for error messages."""
    if path is None:
        return "(no log)"
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def escalate(
    pid: int, steps: Iterable[StopStep], running: Callable[[], bool], poll_s: float = POLL_S
) -> list[StopStep]:
    """Send each step's signal while its target still runs and wait for it; return the steps sent.

    `running` says whether the process itself still runs, and reaps it once it has exited (a child
    stays a zombie until waited for, and a zombie leader would keep its group looking alive).
    """

    def target_alive(step: StopStep) -> bool:
        leader = running()
        return group_alive(pid) if step.whole_group else leader

    sent = []
    for step in steps:
        if not target_alive(step):
            continue
        with contextlib.suppress(ProcessLookupError):
            (os.killpg if step.whole_group else os.kill)(pid, step.signal)
        sent.append(step)
        deadline = None if step.wait_s is None else time.monotonic() + step.wait_s
        while target_alive(step) and (deadline is None or time.monotonic() < deadline):
            time.sleep(poll_s)
    return sent


@dataclass
class StartedProcess:
    """A child process this runner started: its handle, its name in messages and its log."""

    name: str
    process: subprocess.Popen
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        """Process id (and, when started in its own group, the process group id)."""
        return self.process.pid

    def running(self) -> bool:
        """The process has not exited (reaps it when it has)."""
        return self.process.poll() is None

    def log_excerpt(self) -> str:
        """The last lines of its log, introduced by where the log is, for error messages."""
        if self.log_path is None:
            return "its output is above, in this command's own"
        return f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"

    def wait_ready(
        self,
        probe: Callable[[], bool],
        timeout_s: float,
        ready_check: str,
        poll_s: float = 1.0,
        hint: str = "",
    ) -> None:
        """Call `probe` until it answers True; else raise ExitedBeforeReady or NotReady (log tail).

        `ready_check` says in words what `probe` checks; `hint` what to do when time runs out.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            # Exit first: whatever else answers on its port must not pass for it being ready.
            if not self.running():
                raise ExitedBeforeReady(
                    f"{self.name} exited with code {self.process.returncode} before it was ready "
                    f"({ready_check}); {self.log_excerpt()}"
                )
            if probe():
                return
            if time.monotonic() >= deadline:
                advice = f"{hint}; " if hint else ""
                raise NotReady(
                    f"{self.name} not ready ({ready_check}) after {timeout_s:.0f} s; {advice}"
                    f"{self.log_excerpt()}"
                )
            time.sleep(poll_s)

    def stop(self, steps: Iterable[StopStep]) -> int | None:
        """Stop it by PID with `steps` (each only while its target still runs); its exit code."""
        escalate(self.pid, steps, self.running)
        return self.process.poll()


def _child_setup(die_with_parent: bool) -> Callable[[], None]:
    def setup() -> None:
        # Runs in the child before exec. A background job of a shell ignores SIGINT and children
        # inherit that, but stopping starts with SIGINT for some: give it its default back.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if die_with_parent:
            # The kernel sends SIGTERM when the parent dies, so what a test run started dies with
            # it even when the run is killed outright. Linux only; elsewhere a no-op.
            try:
                import ctypes

                ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PDEATHSIG
            except (OSError, AttributeError):
                pass

    return setup


# A child that needs none of them (Prometheus, Alertmanager, the bridges) inherits no variable
# whose name says it holds a secret: /proc/PID/environ and crash dumps would show it.
SECRET_NAME_PARTS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "API_KEY", "WEBHOOK", "CREDENTIAL")


def inherited_environment(scrub_secrets: bool) -> dict[str, str]:
    """This process' environment, less the secret-looking variables when `scrub_secrets`."""
    return {
        k: v
        for k, v in os.environ.items()
        if not (scrub_secrets and any(part in k.upper() for part in SECRET_NAME_PARTS))
    }


def start_process(
    name: str,
    argv: list[str],
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    own_group: bool = True,
    die_with_parent: bool = False,
    scrub_secrets: bool = False,
) -> StartedProcess:
    """Start `argv` with its output appended to `log_path` (None: this process' own output).

    In its own process group (and session) by default, so it outlives the shell that started this
    command and its whole group can be stopped by PID. `env` is added to this process' environment
    (less the variables that look like secrets, with `scrub_secrets`).
    """
    # The child holds its own copy of the log's file descriptor: ours closes after the start.
    with open(log_path, "ab") if log_path is not None else contextlib.nullcontext() as log:
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            stdin=subprocess.DEVNULL if log is not None else None,
            env={**inherited_environment(scrub_secrets), **(env or {})},
            cwd=cwd,
            start_new_session=own_group,
            preexec_fn=_child_setup(die_with_parent),
        )
    return StartedProcess(name, process, Path(log_path) if log_path is not None else None)


# ---- PID records: processes stopped by a later command -------------------------------------------


def pid_file(state_dir: Path, name: str) -> Path:
    """Where the PID record of process `name` lives."""
    return Path(state_dir) / "pids" / f"{name}.json"


def write_record(state_dir: Path, started: StartedProcess, **details: str) -> dict:
    """Record a started process (PID, command line, log, `details`) for a later command to stop."""
    record = {
        "name": started.name,
        "pid": started.pid,
        "argv": list(started.process.args),
        **details,
        "log": str(started.log_path),
    }
    pid_file(state_dir, started.name).write_text(json.dumps(record, indent=2))
    return record


def read_record(state_dir: Path, name: str) -> dict | None:
    """The PID record of one process, or None."""
    try:
        record = json.loads(pid_file(state_dir, name).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def stat_fields(pid: int) -> list[str] | None:
    # /proc/PID/stat after "(command name)", which may hold spaces: [0] state, [1] parent PID,
    # [19] start time in clock ticks since boot (fields 3, 4 and 22 of proc(5)).
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()


def _state(pid: int) -> str | None:
    fields = stat_fields(pid)
    return fields[0] if fields else None


def is_alive(record: dict) -> bool:
    """The recorded process still runs, and the PID was not reused by someone else's process."""
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if not Path("/proc/self").exists():  # not Linux: the signal check is all there is
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    for _ in range(20):
        cmdline = _cmdline(pid)
        if cmdline is None or _state(pid) in (None, "Z", "X"):
            return False  # gone, or a zombie waiting to be reaped
        if cmdline:
            return cmdline == record.get("argv")
        time.sleep(0.05)  # right around exec the command line reads empty for a moment
    return False


def _reap(pid: int) -> None:
    # A child of this very process (a stack started and stopped in one run) stays a zombie until
    # waited for; anyone else's PID is not our child and this does nothing.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop_recorded(state_dir: Path, name: str, steps: tuple[StopStep, ...] = TERM_THEN_KILL) -> str:
    """Stop the recorded process by its PID with `steps`, clear its record; say what happened."""
    record = read_record(state_dir, name)
    if record is None:
        return "not running"
    if not is_alive(record):
        pid_file(state_dir, name).unlink(missing_ok=True)
        return f"was not running (stale PID {record.get('pid')})"
    pid = record["pid"]

    def running() -> bool:
        _reap(pid)
        return is_alive(record)

    sent = escalate(pid, steps, running)
    pid_file(state_dir, name).unlink(missing_ok=True)
    if len(sent) <= 1:
        return f"stopped (PID {pid})"
    last = sent[-1].signal
    how = "killed" if last == signal.SIGKILL else f"stopped by {last.name}"
    waited = sum(step.wait_s or 0.0 for step in sent[:-1])
    return f"{how} after {waited:.0f} s (PID {pid})"


def kill_recorded(state_dir: Path, name: str) -> bool:
    """SIGKILL the recorded process now, if it is still ours; whether a signal was sent."""
    record = read_record(state_dir, name)
    if record is None or not is_alive(record):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(record["pid"], signal.SIGKILL)
    return True
