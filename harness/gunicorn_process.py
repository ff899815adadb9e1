"""Start, ready and stop a real Gunicorn serving this project: one home for tests, scripts,
bench and deploy.

    with GunicornServer(workdir, env, workers=2) as server:   # returns once all ready
        requests.get(server.url + "/health")

The server gets an operator key (``OPERATOR_KEYS``): the first plain entry of the
environment's, else one generated here. ``wait_ready`` sends it to ``/ready``, whose worker
pid and details answer only the operator (server/web/operator_auth.py); callers send
``server.operator_headers`` to ``/metrics`` and ``/ready`` the same way.

Readiness follows the process (harness.waiting): it fails at once if Gunicorn died, keeps
waiting while the master loads, forks and the workers warm up (CPU time, children and log
keep changing), and gives up only when nothing moved for ``stall_s`` or ``cap_s`` passed.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Any

import requests

from harness.processes import free_port, running
from harness.server_process import ServerProcess
from harness.waiting import CAP_S, STALL_S
from server.engine.procfs import child_pids

REPO = Path(__file__).resolve().parent.parent


class GunicornServer(ServerProcess):
    """Gunicorn with ``gunicorn.conf.py`` on 127.0.0.1 (HTTPS when TLS_CERTFILE is set)."""

    def __init__(self, workdir: Path, env: dict[str, str], workers: int = 2,
                 extra_args: tuple[str, ...] = (), cap_s: float = CAP_S,
                 stall_s: float = STALL_S, inherit_env: bool = True,
                 log_path: Path | None = None, operator_key: str | None = None,
                 repo: Path = REPO) -> None:
        """``repo``: the checkout to serve (another one, e.g. a worktree of an older
        commit, measures before and after on one box)."""
        env = {**os.environ, **env} if inherit_env else dict(env)
        self.operator_key = operator_key or operator_key_of(env)
        if self.operator_key is None:  # none configured, or only sha256: digests
            if env.get("OPERATOR_KEYS", "").strip():
                raise ValueError("OPERATOR_KEYS holds only sha256: digests: pass operator_key=")
            self.operator_key = secrets.token_urlsafe(32)
            env["OPERATOR_KEYS"] = self.operator_key
        self.port = free_port()
        self.workers = workers
        # With TLS_CERTFILE set, Gunicorn serves HTTPS; the caller's cert is the trust root.
        self.verify: str | bool = env.get("TLS_CERTFILE") or True
        scheme = "https" if env.get("TLS_CERTFILE") else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.pidfile = workdir / "gunicorn.pid"
        args = [sys.executable, "-m", "gunicorn", "-c", str(repo / "gunicorn.conf.py"),
                "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers),
                "--pid", str(self.pidfile), *extra_args]
        super().__init__(args, log_path or workdir / "gunicorn.log", env, cwd=repo,
                         cap_s=cap_s, stall_s=stall_s)
        self.ready: dict[str, Any] = {}  # the last /ready body (model, dtype, kernels, ...)
        self.ready_s = 0.0

    @property
    def operator_headers(self) -> dict[str, str]:
        """Headers that open the operator surfaces: /metrics, /ready's details."""
        return {"Authorization": f"Bearer {self.operator_key}"}

    def wait_ready(self, workers: int | None = None) -> float:
        """Return once ``workers`` (default: all) distinct worker pids answered /ready 200."""
        want = self.workers if workers is None else workers
        ready = WorkersReady({f"{self.url}/ready": want}, headers=self.operator_headers,
                             verify=self.verify)
        self.ready_s = self.follow(
            ready, f"gunicorn {self.url}: {want} workers ready",
            progress=ready.count, detail=lambda: f"workers ready: {ready}\n")
        self.ready = ready.body()
        return self.ready_s

    def master_pid(self) -> int:
        """The master's pid, as written to the pidfile."""
        return int(self.pidfile.read_text())

    def worker_pids(self) -> list[int]:
        """PIDs of the master's current children (the workers)."""
        return [pid for pid in child_pids(self.master_pid()) if running(pid)]

    def wait_worker_pids(self, workers: int, without: tuple[int, ...] = ()) -> list[int]:
        """Worker pids once the master has ``workers`` live children again, none in ``without``.

        A recycled or killed worker is replaced on the master's next loop (about a second
        later, longer on a busy machine), so a count taken right after load can be one short.
        """
        pids: list[int] = []

        def counted() -> bool:
            pids[:] = self.worker_pids()
            return len(pids) == workers and not set(pids) & set(without)

        self.follow(counted, f"{workers} live workers, none of {list(without)}",
                    detail=lambda: f"workers now: {pids}\n")
        return pids


class WorkersReady:
    """A readiness predicate: true once each URL got 200 from as many distinct workers
    (``X-Worker-PID``) as wanted, for one Gunicorn or several hosts behind a balancer.

    Each poll opens a fresh connection, so the kernel may hand it to another worker.
    """

    def __init__(self, wanted: dict[str, int], headers: dict[str, str] | None = None,
                 verify: str | bool = True, timeout_s: float = 5.0,
                 unnamed: str = "") -> None:
        """``unnamed``: what an answer without X-Worker-PID counts as (a proxy's own)."""
        self.wanted, self.verify, self.timeout_s, self.unnamed = wanted, verify, timeout_s, unnamed
        self.headers = {"Connection": "close", **(headers or {})}
        self.seen: dict[str, set[str]] = {url: set() for url in wanted}
        self.last: requests.Response | None = None

    def __call__(self) -> bool:
        for url in self.wanted:
            try:
                response = requests.get(url, timeout=self.timeout_s, verify=self.verify,
                                        headers=self.headers)
            except requests.RequestException:
                continue  # not listening yet, or busy loading
            if response.status_code == 200:
                self.seen[url].add(response.headers.get("X-Worker-PID", self.unnamed))
                self.last = response
        return all(len(self.seen[url]) >= n for url, n in self.wanted.items())

    def count(self) -> int:
        """Distinct workers that answered so far (all URLs): progress while starting."""
        return sum(len(pids) for pids in self.seen.values())

    def body(self) -> dict[str, Any]:
        """The last 200's JSON body (/ready's model, dtype, kernels, ...); {} before one."""
        return self.last.json() if self.last is not None else {}

    def __str__(self) -> str:
        return ", ".join(f"{url} {sorted(pids)}" for url, pids in self.seen.items())


def operator_key_of(env: dict[str, str]) -> str | None:
    """The first plain key of ``env``'s OPERATOR_KEYS (None: none, or digests only)."""
    entries = (entry.strip() for entry in env.get("OPERATOR_KEYS", "").split(","))
    return next((e for e in entries if e and not e.lower().startswith("sha256:")), None)
