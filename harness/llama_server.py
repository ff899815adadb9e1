"""Start, ready and stop llama.cpp's ``llama-server`` (the reference server of issue 13).

    with LlamaServer(command, run_dir, api_key) as server:   # returns once /health is 200
        requests.get(server.url + "/v1/models", headers=...)

``command`` is llama-server's full command line (bench/llama_reference.py builds it) and must
hold ``--port``. The API key goes in the environment ($LLAMA_API_KEY), never in the command,
so the command can be recorded. The pid is written to ``run_dir/llama-server.pid`` for the
Locust suite's memory sampler (``--server-pidfile``). Readiness follows the process
(harness.waiting), as for Gunicorn.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import requests

from harness.processes import stop_process, tree_progress
from harness.waiting import CAP_S, STALL_S, wait_until


class LlamaServer:
    """llama-server as a child process; its pidfile and log in ``run_dir``."""

    def __init__(self, command: list[str], run_dir: Path, api_key: str,
                 cap_s: float = CAP_S, stall_s: float = STALL_S) -> None:
        self.command = command
        self.url = f"http://127.0.0.1:{command[command.index('--port') + 1]}"
        self.pidfile = run_dir / "llama-server.pid"
        self.log_path = run_dir / "llama-server.log"
        self.env = {**os.environ, "LLAMA_API_KEY": api_key}
        self.cap_s, self.stall_s = cap_s, stall_s
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> LlamaServer:
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
        """Start llama-server (output appended to ``log_path``) and write its pidfile."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)
        self.pidfile.write_text(f"{self.proc.pid}\n")

    def alive(self) -> bool:
        """True while llama-server runs."""
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        """Everything llama-server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def healthy(self) -> bool:
        """True once /health answers 200 (it answers 503 while the model loads)."""
        try:
            return requests.get(f"{self.url}/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def wait_ready(self) -> float:
        """Return the seconds until /health said the model is loaded."""
        return wait_until(self.healthy, f"llama-server {self.url}: /health 200",
                          timeout_s=self.cap_s, interval_s=0.2, alive=self.alive,
                          stall_s=self.stall_s,
                          progress=lambda: tree_progress(self.proc.pid, self.log_path),
                          detail=lambda: self.log_text()[-4000:])

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; remove the pidfile; return the exit code."""
        if self.proc is None:
            return None
        code = stop_process(self.proc, timeout_s)
        self.pidfile.unlink(missing_ok=True)
        return code
