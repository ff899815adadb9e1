"""Stopping and watching processes we started: by their pid, never by name."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
from collections.abc import Hashable
from pathlib import Path

import psutil

from server.engine.procfs import environ_entries


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def running(pid: int) -> bool:
    """False for a process that exited (gone, or a zombie its parent has not reaped yet)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def descendants(pid: int) -> list[psutil.Process]:
    """Every live process below ``pid`` (children, their children, ...)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def tree_progress(pid: int, log_path: Path | None = None) -> Hashable:
    """What changes while a process tree is working: its CPU time, its children, its log.

    Readiness waits compare these between polls: a server that loads a model or warms up
    burns CPU or writes its log; one that does neither for minutes is stuck.
    """
    procs = [psutil.Process(pid), *descendants(pid)] if running(pid) else []
    cpu = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            cpu += times.user + times.system
    size = log_path.stat().st_size if log_path and log_path.exists() else 0
    # Rounded to 0.1 s of CPU: an idle sleeper's bookkeeping must not count as progress.
    return round(cpu, 1), len(procs), size


def stop_process(proc: subprocess.Popen, timeout_s: float = 30.0,
                 sig: int = signal.SIGTERM) -> int | None:
    """Send ``sig`` (SIGTERM), wait up to ``timeout_s``, then SIGKILL; return the exit code.

    Children it leaves behind (e.g. Gunicorn workers of a master that was killed) are
    killed too, by pid, so nothing keeps a CPU busy after the caller moved on.
    """
    if proc.poll() is not None:
        return proc.returncode
    children = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        children = descendants(proc.pid) or children
        proc.kill()
        proc.wait()
    kill_all(children)
    return proc.returncode


def kill_all(procs: list[psutil.Process], grace_s: float = 5.0) -> list[int]:
    """SIGTERM the still-running ``procs``, SIGKILL those left after ``grace_s``; their pids."""
    live = [p for p in procs if running(p.pid)]
    for proc in live:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, left = psutil.wait_procs(live, timeout=grace_s)
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(left, timeout=grace_s)
    return [p.pid for p in live]


MARKER = "GLL_PROCESS_OWNER"  # set in the environment of everything a test session starts


def owned_processes(owner: str) -> list[psutil.Process]:
    """Live processes whose environment carries ``MARKER=owner``, wherever they were
    re-parented (an orphaned Gunicorn worker, a daemonized browser helper)."""
    found = []
    needle = f"{MARKER}={owner}".encode()
    for pid in psutil.pids():
        try:
            environ = environ_entries(pid)
        except OSError:
            continue
        if needle in environ and running(pid):
            with contextlib.suppress(psutil.NoSuchProcess):
                found.append(psutil.Process(pid))
    return found
