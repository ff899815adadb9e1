"""The processes a scale-out run starts, each with its log file, and stopping exactly those."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from pathlib import Path
from typing import IO


class Services:
    """Start named processes; stop them (SIGTERM, wait, SIGKILL) newest first, by their pid."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: list[IO[bytes]] = []

    def start(self, name: str, argv: list[str], log_path: Path,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``argv`` with stdout and stderr appended to ``log_path``."""
        log = open(log_path, "ab")  # noqa: SIM115  (closed in stop_all)
        self._logs.append(log)
        proc = subprocess.Popen(argv, cwd=self.cwd, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def check_alive(self) -> None:
        """Raise if a started process has already exited (naming it and its exit code)."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see its log")

    def wait(self, name: str, timeout_s: float) -> int | None:
        """Wait for ``name`` to exit by itself; stop it if it does not in time."""
        try:
            return self.procs[name].wait(timeout_s)
        except subprocess.TimeoutExpired:
            return self.stop(name)

    def stop(self, name: str, timeout_s: float = 20.0) -> int | None:
        """SIGTERM ``name``, wait, then SIGKILL; return its exit code."""
        proc = self.procs[name]
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop_all(self) -> None:
        """Stop every process still running, newest first, and close the logs (idempotent)."""
        for name in reversed(list(self.procs)):
            self.stop(name)
        while self._logs:
            self._logs.pop().close()
