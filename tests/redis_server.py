"""A throwaway redis-server on 127.0.0.1 for the rate-limit tests, and its fixture."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import redis

from harness.processes import free_port, stop_process
from harness.waiting import wait_until


class RedisServer:
    """A throwaway redis-server on 127.0.0.1 (no persistence), stopped by its PID."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.uri = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = workdir / "redis.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start (or restart on the same port) and wait until it answers PING."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no"], stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._pong, "redis-server answers PING", timeout_s=300,
                   alive=lambda: self.proc.poll() is None, interval_s=0.05,
                   detail=lambda: self.log_path.read_text())

    def _pong(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.uri, socket_timeout=1).ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        """Terminate, wait, kill if needed; the port is closed afterwards."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen (SIGSTOPped) one cannot act
            stop_process(self.proc, 10)
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", self.port)) != 0


@pytest.fixture
def redis_server(tmp_path: Path):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: apt-get install redis-server (.ci/run does)")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
