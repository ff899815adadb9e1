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
from pathlib import Path

import requests

from harness.server_process import ServerProcess
from harness.waiting import CAP_S, STALL_S


class LlamaServer(ServerProcess):
    """llama-server as a child process; its pidfile and log in ``run_dir``."""

    log_tail_chars = 4000

    def __init__(self, command: list[str], run_dir: Path, api_key: str,
                 cap_s: float = CAP_S, stall_s: float = STALL_S) -> None:
        super().__init__(command, run_dir / "llama-server.log",
                         {**os.environ, "LLAMA_API_KEY": api_key}, cap_s=cap_s, stall_s=stall_s)
        self.command = command
        self.url = f"http://127.0.0.1:{command[command.index('--port') + 1]}"
        self.pidfile = run_dir / "llama-server.pid"

    def start(self) -> None:
        """Start llama-server (output appended to ``log_path``) and write its pidfile."""
        super().start()
        self.pidfile.write_text(f"{self.proc.pid}\n")

    def healthy(self) -> bool:
        """True once /health answers 200 (it answers 503 while the model loads)."""
        try:
            return requests.get(f"{self.url}/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def wait_ready(self) -> float:
        """Return the seconds until /health said the model is loaded."""
        return self.follow(self.healthy, f"llama-server {self.url}: /health 200")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; remove the pidfile; return the exit code."""
        code = super().stop(timeout_s)
        if self.proc is not None:
            self.pidfile.unlink(missing_ok=True)
        return code
