"""Start, ready and stop a real Gunicorn serving this project: one home for tests, scripts,
bench and deploy.

    with GunicornServer(workdir, env, workers=2) as server:   # returns once all ready
        requests.get(server.url + "/health")

Readiness follows the process (harness.waiting): it fails at once if Gunicorn died, keeps
waiting while the master loads, forks and the workers warm up (CPU time, children and log
keep changing), and gives up only when nothing moved for ``stall_s`` or ``cap_s`` passed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests

from harness.processes import free_port, running, stop_process, tree_progress
from harness.waiting import CAP_S, STALL_S, wait_until

REPO = Path(__file__).resolve().parent.parent


class GunicornServer:
    """Gunicorn with ``gunicorn.conf.py`` on 127.0.0.1 (HTTPS when TLS_CERTFILE is set)."""

    def __init__(self, workdir: Path, env: dict[str, str], workers: int = 2,
                 extra_args: tuple[str, ...] = (), cap_s: float = CAP_S,
                 stall_s: float = STALL_S, inherit_env: bool = True,
                 log_path: Path | None = None) -> None:
        self.port = free_port()
        self.workers = workers
        # With TLS_CERTFILE set, Gunicorn serves HTTPS; the caller's cert is the trust root.
        self.verify: str | bool = env.get("TLS_CERTFILE") or True
        scheme = "https" if env.get("TLS_CERTFILE") else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.pidfile = workdir / "gunicorn.pid"
        self.log_path = log_path or workdir / "gunicorn.log"
        self.env = {**os.environ, **env} if inherit_env else dict(env)
        self.args = [sys.executable, "-m", "gunicorn", "-c", str(REPO / "gunicorn.conf.py"),
                     "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers),
                     "--pid", str(self.pidfile), *extra_args]
        self.cap_s, self.stall_s = cap_s, stall_s
        self.proc: subprocess.Popen | None = None
        self.ready: dict[str, Any] = {}  # the last /ready body (model, dtype, kernels, ...)
        self.ready_s = 0.0

    def __enter__(self) -> GunicornServer:
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
        """Start the master; output goes to ``log_path`` (appended)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, cwd=REPO, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)

    def log_text(self) -> str:
        """Everything Gunicorn and the app printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        """True while the master runs."""
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, workers: int | None = None) -> float:
        """Return once ``workers`` (default: all) distinct worker pids answered /ready 200."""
        want = self.workers if workers is None else workers
        seen: set[str] = set()

        def all_ready() -> bool:
            try:
                # A fresh connection each time, so the kernel may hand it to another worker.
                response = requests.get(f"{self.url}/ready", timeout=5, verify=self.verify,
                                        headers={"Connection": "close"})
            except requests.RequestException:
                return False  # not listening yet, or busy loading
            if response.status_code == 200:
                seen.add(response.headers.get("X-Worker-PID", ""))
                self.ready = response.json()
            return len(seen) >= want

        self.ready_s = wait_until(
            all_ready, f"gunicorn {self.url}: {want} workers ready (seen {seen})",
            timeout_s=self.cap_s, interval_s=0.2, alive=self.alive, stall_s=self.stall_s,
            progress=lambda: (tree_progress(self.proc.pid, self.log_path), len(seen)),
            detail=lambda: self.log_text()[-6000:])
        return self.ready_s

    def master_pid(self) -> int:
        """The master's pid, as written to the pidfile."""
        return int(self.pidfile.read_text())

    def worker_pids(self) -> list[int]:
        """PIDs of the master's current children (the workers)."""
        master = self.master_pid()
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        return [int(pid) for pid in children if running(int(pid))]

    def wait_worker_pids(self, workers: int, timeout_s: float = 60.0) -> list[int]:
        """Worker pids once the master has ``workers`` live children again.

        A recycled or killed worker is replaced on the master's next loop (about a second
        later, longer on a busy machine), so a count taken right after load can be one short.
        """
        pids: list[int] = []

        def counted() -> bool:
            pids[:] = self.worker_pids()
            return len(pids) == workers

        wait_until(counted, f"{workers} live workers (have {pids})", timeout_s=timeout_s,
                   alive=self.alive)
        return pids

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait, then SIGKILL (workers included); return the master's exit code."""
        if self.proc is None:
            return None
        return stop_process(self.proc, timeout_s)
