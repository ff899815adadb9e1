"""Run real Gunicorn as a subprocess for end-to-end tests: start, wait for /ready, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    """False for a process that exited (gone, or a zombie its parent has not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class GunicornServer:
    """``with GunicornServer(tmp_path, env) as server:`` serves on ``server.url``."""

    def __init__(self, workdir: Path, env: dict[str, str], workers: int = 2,
                 extra_args: tuple[str, ...] = (), ready_timeout_s: float = 120.0) -> None:
        self.port = free_port()
        # With TLS_CERTFILE set, Gunicorn serves HTTPS; the test's own cert is the trust root.
        self.verify: str | bool = env.get("TLS_CERTFILE") or True
        self.url = f"{'https' if env.get('TLS_CERTFILE') else 'http'}://127.0.0.1:{self.port}"
        self.pidfile = workdir / "gunicorn.pid"
        self.log_path = workdir / "gunicorn.log"
        self.env = {**os.environ, **env}
        self.args = [sys.executable, "-m", "gunicorn", "-c", str(REPO / "gunicorn.conf.py"),
                     "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers),
                     "--pid", str(self.pidfile), *extra_args]
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> GunicornServer:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, cwd=REPO, env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.wait_ready()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_text(self) -> str:
        """Everything Gunicorn and the app printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        """Poll /ready until 200; fail fast with the log if the server died."""
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited {self.proc.returncode}:\n{self.log_text()}")
            try:
                ready = requests.get(f"{self.url}/ready", timeout=2, verify=self.verify)
                if ready.status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or a worker still loading (GUNICORN_PRELOAD=0)
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"gunicorn not ready in {self.ready_timeout_s} s:\n{self.log_text()}")

    def worker_pids(self) -> list[int]:
        """PIDs of the master's current children (the workers)."""
        master = int(self.pidfile.read_text())
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        return [int(pid) for pid in children if _alive(int(pid))]

    def wait_worker_pids(self, workers: int, timeout_s: float = 30.0) -> list[int]:
        """Worker pids once the master has ``workers`` live children again.

        A recycled or killed worker is replaced on the master's next loop (about a second
        later), so a count taken right after load stops can be one short.
        """
        deadline = time.monotonic() + timeout_s
        while len(pids := self.worker_pids()) != workers:
            assert time.monotonic() < deadline, f"workers {pids}, wanted {workers}"
            time.sleep(0.1)
        return pids

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait, then SIGKILL if needed; return the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:  # it stopped by itself (or a test signalled it)
            self._log.close()
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        return self.proc.returncode
