"""What every server we start as a child process shares: its log, readiness, stopping.

``GunicornServer`` (harness/gunicorn_process.py) and ``LlamaServer`` (harness/llama_server.py)
differ only in their command line and in what "ready" means; starting, following the start
(harness.waiting), the context manager and stopping by pid live here once. ``ProcessGroup``
is several such children started together (deploy/cluster.py's Redis, Gunicorn hosts, nginx
and Locust), followed as one while they get ready and stopped newest first.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Self

from harness.processes import stop_process, tree_progress
from harness.waiting import CAP_S, STALL_S, wait_until


class ServerProcess:
    """A server child process: output appended to ``log_path``; ``with`` starts it, waits
    until ``wait_ready()`` returns and stops it on the way out (also when the wait failed)."""

    # How much of the log's end a failed wait shows.
    log_tail_chars = 6000

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None,
                 cwd: Path | None = None, cap_s: float = CAP_S,
                 stall_s: float = STALL_S) -> None:
        self.args, self.log_path, self.env, self.cwd = args, log_path, env, cwd
        self.cap_s, self.stall_s = cap_s, stall_s
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server; its output goes to ``log_path`` (appended)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, cwd=self.cwd, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        """True while the server process runs."""
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int | None = None) -> str:
        """The end of the log (``log_tail_chars`` by default): for error messages."""
        return self.log_text()[-(chars or self.log_tail_chars):]

    def progress(self) -> Hashable:
        """CPU time, children and log size of this server's process tree."""
        return tree_progress(self.proc.pid, self.log_path) if self.proc else None

    def wait_ready(self) -> float:
        """Return the seconds until the server is ready (each server says what that means)."""
        raise NotImplementedError

    def follow(self, predicate: Callable[[], bool], what: str,
               progress: Callable[[], Hashable] = lambda: None,
               detail: Callable[[], str] = lambda: "", interval_s: float = 0.2) -> float:
        """Wait until ``predicate()`` while following this server: fail at once if it died,
        keep waiting while its process tree, its log or ``progress()`` change."""
        return wait_until(
            predicate, what, timeout_s=self.cap_s, interval_s=interval_s, alive=self.alive,
            stall_s=self.stall_s,
            progress=lambda: (self.progress(), progress()),
            detail=lambda: detail() + self.log_tail())

    def wait(self, timeout_s: float) -> int | None:
        """Wait for the process to exit by itself; stop it if it does not in time."""
        try:
            return self.proc.wait(timeout_s) if self.proc else None
        except subprocess.TimeoutExpired:
            return self.stop()

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait, then SIGKILL (children included); return the exit code."""
        if self.proc is None:
            return None
        return stop_process(self.proc, timeout_s)


class ProcessGroup:
    """Named child processes, each with its log: started one by one, followed as one (any
    exit fails a wait at once; any progress keeps it going), stopped newest first by pid."""

    def __init__(self, cwd: Path | None = None, cap_s: float = CAP_S,
                 stall_s: float = STALL_S) -> None:
        self.cwd, self.cap_s, self.stall_s = cwd, cap_s, stall_s
        self.members: dict[str, ServerProcess] = {}

    def start(self, name: str, argv: list[str], log_path: Path,
              env: dict[str, str] | None = None) -> ServerProcess:
        """Start ``argv`` as ``name``, stdout and stderr appended to ``log_path``."""
        member = ServerProcess(argv, log_path, env, cwd=self.cwd, cap_s=self.cap_s,
                               stall_s=self.stall_s)
        member.start()
        self.members[name] = member
        return member

    @property
    def procs(self) -> dict[str, subprocess.Popen]:
        """The started processes by name."""
        return {name: m.proc for name, m in self.members.items() if m.proc is not None}

    def all_alive(self) -> bool:
        """True while every started process runs."""
        return all(m.alive() for m in self.members.values())

    def progress(self) -> Hashable:
        """CPU time, children and log size of every started process."""
        return tuple(m.progress() for m in self.members.values())

    def log_tails(self, chars: int = 1500) -> str:
        """The end of each process's log, and which have exited: for error messages."""
        return "\n".join(
            f"--- {name} ({'running' if m.alive() else f'exit {m.proc.poll()}'})\n"
            f"{m.log_tail(chars)}" for name, m in self.members.items())

    def follow(self, predicate: Callable[[], bool], what: str,
               progress: Callable[[], Hashable] = lambda: None,
               alive: Callable[[], bool] | None = None, timeout_s: float | None = None,
               interval_s: float = 0.2) -> float:
        """Wait until ``predicate()`` while following the group (harness.waiting): fail at
        once when ``alive()`` (default: every process runs) turns false, keep waiting while
        the processes or ``progress()`` change; the message ends with every log's tail."""
        return wait_until(predicate, what, timeout_s=timeout_s or self.cap_s,
                          interval_s=interval_s, alive=alive or self.all_alive,
                          stall_s=self.stall_s,
                          progress=lambda: (self.progress(), progress()),
                          detail=self.log_tails)

    def wait(self, name: str, timeout_s: float) -> int | None:
        """Wait for ``name`` to exit by itself; stop it if it does not in time."""
        return self.members[name].wait(timeout_s)

    def stop(self, name: str, timeout_s: float = 20.0) -> int | None:
        """SIGTERM ``name``, wait, then SIGKILL (children too); return its exit code."""
        return self.members[name].stop(timeout_s)

    def stop_all(self) -> None:
        """Stop every process still running, newest first (idempotent)."""
        for name in reversed(list(self.members)):
            self.stop(name)
