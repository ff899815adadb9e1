"""What every server we start as a child process shares: its log, readiness, stopping.

``GunicornServer`` (harness/gunicorn_process.py) and ``LlamaServer`` (harness/llama_server.py)
differ only in their command line and in what "ready" means; starting, following the start
(harness.waiting), the context manager and stopping by pid live here once.
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

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str],
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
            progress=lambda: (tree_progress(self.proc.pid, self.log_path), progress()),
            detail=lambda: detail() + self.log_text()[-self.log_tail_chars:])

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait, then SIGKILL (children included); return the exit code."""
        if self.proc is None:
            return None
        return stop_process(self.proc, timeout_s)
