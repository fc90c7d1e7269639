"""Processes started in their own session and stopped by PID: PID records, liveness, readiness,
start, stop.

A PID record keeps the command line too, and a PID only counts as ours while /proc shows that
same command line, so a reused PID is never signalled.
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
from dataclasses import dataclass, field
from pathlib import Path

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


class StackError(RuntimeError):
    """The stack could not be started, checked or stopped; the message says what to do."""


@dataclass
class ProcessSpec:
    """One process of the stack: how to start it and how to tell it is ready."""

    name: str
    argv: list[str]
    ready_url: str
    env: dict[str, str] = field(default_factory=dict)


def pid_file(state_dir: Path, name: str) -> Path:
    """Where the PID record of process `name` lives."""
    return Path(state_dir) / "pids" / f"{name}.json"


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[0]  # the field after "(command name)"


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


def read_record(state_dir: Path, name: str) -> dict | None:
    """The PID record of one process, or None."""
    path = pid_file(state_dir, name)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Something accepts connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """GET `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _die_with_parent() -> None:
    # Runs in the child before exec: the kernel sends it SIGTERM when its parent dies, so a test
    # run that is killed outright leaves no Prometheus behind. Linux only; elsewhere a no-op.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_process(
    spec: ProcessSpec, state_dir: Path, tied_to_parent: bool = False
) -> tuple[dict, subprocess.Popen]:
    """Start one process in its own session, record its PID; return the record and the handle."""
    log_path = Path(state_dir) / "logs" / f"{spec.name}.log"
    env = {**os.environ, **spec.env}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            spec.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=state_dir,
            start_new_session=True,  # outlives the shell of `recserve stack up`; stopped by PID, never by name
            preexec_fn=_die_with_parent if tied_to_parent else None,
        )
    record = {
        "name": spec.name,
        "pid": proc.pid,
        "argv": spec.argv,
        "ready_url": spec.ready_url,
        "log": str(log_path),
    }
    pid_file(state_dir, spec.name).write_text(json.dumps(record, indent=2))
    return record, proc


def wait_ready(record: dict, proc: subprocess.Popen, timeout: float = READY_TIMEOUT_S) -> None:
    """Poll the process' readiness URL; fail with its log tail when it dies or never gets ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_ok(record["ready_url"], timeout=1.0):
            return
        # The handle, not /proc: right after fork the child still shows this process' command line.
        if proc.poll() is not None:
            raise StackError(
                f"{record['name']} exited during start-up; last lines of {record['log']}:\n{_log_tail(Path(record['log']))}"
            )
        time.sleep(0.2)
    raise StackError(
        f"{record['name']} not ready at {record['ready_url']} after {timeout:.0f} s; "
        f"last lines of {record['log']}:\n{_log_tail(Path(record['log']))}"
    )


def stop_process(state_dir: Path, name: str, timeout: float = STOP_TIMEOUT_S) -> str:
    """Stop the recorded process by its PID (TERM, then KILL after `timeout`); return what happened."""
    record = read_record(state_dir, name)
    record_path = pid_file(state_dir, name)
    if record is None:
        return "not running"
    if not is_alive(record):
        record_path.unlink(missing_ok=True)
        return f"was not running (stale PID {record.get('pid')})"
    pid = record["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and is_alive(record):
        _reap(pid)
        time.sleep(0.1)
    outcome = f"stopped (PID {pid})"
    if is_alive(record):
        os.kill(pid, signal.SIGKILL)
        outcome = f"killed after {timeout:.0f} s (PID {pid})"
        while is_alive(record):
            _reap(pid)
            time.sleep(0.05)
    _reap(pid)
    record_path.unlink(missing_ok=True)
    return outcome


def _reap(pid: int) -> None:
    # A child of this process (running_stack) stays a zombie until waited for.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def abort_start(state_dir: Path, name: str, proc: subprocess.Popen) -> None:
    """Stop a process `stack_up` just started and that failed to get ready, through its handle."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    pid_file(state_dir, name).unlink(missing_ok=True)
