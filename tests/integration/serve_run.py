"""Stopping a `serve run` that a test started in its own process group."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_serve_run(proc: subprocess.Popen) -> None:
    """Ctrl-C first (serve run then shuts Serve and its local Ray down), then the process group we
    started."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)
