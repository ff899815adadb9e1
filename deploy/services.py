"""The processes a scale-out run starts, each with its log file, and stopping exactly those."""

from __future__ import annotations

import subprocess
from collections.abc import Hashable
from pathlib import Path
from typing import IO

from harness.processes import stop_process, tree_progress


class Services:
    """Start named processes; stop them (SIGTERM, wait, SIGKILL) newest first, by their pid."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.procs: dict[str, subprocess.Popen] = {}
        self.log_paths: dict[str, Path] = {}
        self._logs: list[IO[bytes]] = []

    def start(self, name: str, argv: list[str], log_path: Path,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``argv`` with stdout and stderr appended to ``log_path``."""
        log = open(log_path, "ab")  # noqa: SIM115  (closed in stop_all)
        self._logs.append(log)
        proc = subprocess.Popen(argv, cwd=self.cwd, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        self.procs[name] = proc
        self.log_paths[name] = log_path
        return proc

    def check_alive(self) -> None:
        """Raise if a started process has already exited (naming it and its exit code)."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see its log")

    def all_alive(self) -> bool:
        """True while every started process runs (readiness waits fail at once otherwise)."""
        return all(proc.poll() is None for proc in self.procs.values())

    def progress(self) -> Hashable:
        """CPU time, children and log size of every started process (harness.processes)."""
        return tuple(tree_progress(proc.pid, self.log_paths[name])
                     for name, proc in self.procs.items())

    def log_tails(self, chars: int = 1500) -> str:
        """The end of each process's log, and which have exited: for error messages."""
        parts = []
        for name, path in self.log_paths.items():
            code = self.procs[name].poll()
            text = path.read_text(errors="replace")[-chars:] if path.exists() else ""
            parts.append(f"--- {name} ({'running' if code is None else f'exit {code}'})\n{text}")
        return "\n".join(parts)

    def wait(self, name: str, timeout_s: float) -> int | None:
        """Wait for ``name`` to exit by itself; stop it if it does not in time."""
        try:
            return self.procs[name].wait(timeout_s)
        except subprocess.TimeoutExpired:
            return self.stop(name)

    def stop(self, name: str, timeout_s: float = 20.0) -> int | None:
        """SIGTERM ``name``, wait, then SIGKILL (children too); return its exit code."""
        return stop_process(self.procs[name], timeout_s)

    def stop_all(self) -> None:
        """Stop every process still running, newest first, and close the logs (idempotent)."""
        for name in reversed(list(self.procs)):
            self.stop(name)
        while self._logs:
            self._logs.pop().close()
