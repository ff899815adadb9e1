"""Write the run folder's run.json from any Locust run: headless, web UI, --processes, master.

Registered on the master (or the only) process. When a test starts, run.json gets the
client's facts (users, spawn rate, shape, mix, target, duration, Locust's version and mode,
the load generator's machine) and, for ``--target lab`` (this project's server), what the
server reports on ``/ready`` and ``/metrics`` (model, precision, kernel table,
batch size, threads, limits, workers). When it stops, ``ended_at`` (and, in the web UI, the
duration it actually ran). Wrappers such as scripts/loadtest.py add their own facts after.

======================  ==============================================================
run.json key            source
======================  ==============================================================
label, mix, target      --label, --mix, --target
users, spawn_rate       the runner's target user count / -r (a steps shape: its stages)
duration_s              -t, or the stage table; else the time between start and stop
target_url              --host (or the host typed into the web UI)
model, dtype, workers   the server's /ready and /metrics (lab target, --operator-key)
server.*                the server's /ready and /metrics, or ``facts_error``
client.*                Locust's version, mode, role, workers, user classes, machine
workload                --workload's dataset manifest (locustfiles/workloads.py)
host                    this machine, when the target is on it (loopback or --server-pidfile)
======================  ==============================================================
"""

from __future__ import annotations

import importlib.metadata
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent
from locust.env import Environment
from locust.runners import MasterRunner

from harness.provenance import versions
from harness.run_folder import update_record, utc_now
from locustfiles.memory_sampler import split_urls
from locustfiles.run_options import option
from locustfiles.server_facts import read_server_facts
from locustfiles.stages import parse_stages, shape_record
from locustfiles.user_mix import is_openai_target
from locustfiles.workloads import workload_facts
from server.engine.hardware import fingerprint_subprocess, host_fingerprint

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def is_local_target(host_url: str, pidfile: str) -> bool:
    """True when the server runs on this machine (loopback URL, or a pidfile we can read)."""
    on_loopback = urlsplit(host_url or "").hostname in LOOPBACK
    return on_loopback or bool(pidfile and Path(pidfile).is_file())


class RunRecordHook:
    """Keeps run_dir/run.json up to date with what this Locust run knows."""

    def __init__(self, run_dir: Path, *, fingerprint_timeout_s: float = 120.0) -> None:
        self.run_dir = Path(run_dir)
        self.fingerprint_timeout_s = fingerprint_timeout_s
        self._started = 0.0
        self._local_host: dict[str, Any] | None = None
        self._asking: gevent.Greenlet | None = None

    def register(self, environment: Environment) -> None:
        """Listen for test start and stop on ``environment`` (master or local runner)."""
        options = environment.parsed_options
        if is_local_target(environment.host or "", getattr(options, "server_pidfile", "") or ""):
            # The server shares this machine: its fingerprint (with torch's kernel path, read
            # in a child process so torch stays out of Locust) is the server's host. Taken
            # now, at start-up, so a test's first seconds are not spent on it.
            self._local_host = fingerprint_subprocess(self.fingerprint_timeout_s)
        environment.events.test_start.add_listener(self._on_test_start)
        environment.events.test_stop.add_listener(self._on_test_stop)

    def client_facts(self, environment: Environment) -> dict[str, Any]:
        """run.json changes this process knows without asking the server."""
        options = environment.parsed_options
        runner = environment.runner
        stages = parse_stages(options.stages) if getattr(options, "shape", "none") == "steps" \
            else None
        users = max(s.users for s in stages) if stages else \
            (getattr(runner, "target_user_count", None) or getattr(options, "num_users", None))
        run_time = getattr(options, "run_time", None)
        duration = sum(s.duration_s for s in stages) if stages else run_time
        master = isinstance(runner, MasterRunner)
        return {
            "label": getattr(options, "label", None) or self.run_dir.name,
            "users": users, "spawn_rate": getattr(options, "spawn_rate", None),
            "mix": "openai" if is_openai_target(options) else getattr(options, "mix", None),
            "target": getattr(options, "target", "lab"),
            "target_url": environment.host,
            "duration_s": duration, "shape": shape_record(stages) if stages else None,
            "versions": versions(),
            "client": {
                "locust_version": importlib.metadata.version("locust"),
                "mode": "headless" if getattr(options, "headless", False) else "web-ui",
                "role": "master" if master else "local",
                "workers_expected": (getattr(options, "processes", None)
                                     or getattr(options, "expect_workers", None)) if master
                else None,
                "host_url": environment.host,
                "user_classes": sorted(cls.__name__ for cls in environment.user_classes),
                "locustfile": getattr(options, "locustfile", None),
                "run_time_s": run_time,
                "stop_timeout_s": getattr(options, "stop_timeout", None),
                "host": host_fingerprint(with_torch=False),
            },
            **workload_facts(options),
        }

    def server_facts(self, environment: Environment) -> dict[str, Any]:
        """run.json changes from the target server and, when it is local, this machine."""
        options = environment.parsed_options
        host_url = environment.host or ""
        changes: dict[str, Any] = {}
        if not is_openai_target(options) and host_url:
            urls = split_urls(getattr(options, "metrics_urls", "") or "")
            operator_key = option(options, "operator_key", "LOCUST_OPERATOR_KEY")
            changes.update(read_server_facts(host_url, urls, operator_key=operator_key))
        pidfile = getattr(options, "server_pidfile", "") or ""
        if self._local_host is not None and is_local_target(host_url, pidfile):
            changes["host"] = self._local_host
        return changes

    def _on_test_start(self, environment: Environment, **kwargs: Any) -> None:
        self._started = time.monotonic()
        started = {"started_at": utc_now(), "ended_at": None}
        update_record(self.run_dir, **self.client_facts(environment), **started)
        # Asked in a greenlet: a slow server must not hold up the users' start.
        self._asking = gevent.spawn(
            lambda: update_record(self.run_dir, **self.server_facts(environment)))

    def _on_test_stop(self, environment: Environment, **kwargs: Any) -> None:
        if self._asking is not None:
            self._asking.join(timeout=30)  # the server's facts land before ended_at
        # Asked again: the counters of what the run did (prompt tokens computed and copied)
        # are only known now; the settings read at the start are the same.
        ended = gevent.spawn(self.server_facts, environment)
        ended.join(timeout=30)
        changes: dict[str, Any] = {"ended_at": utc_now(), **(ended.value or {})}
        options = environment.parsed_options
        if not getattr(options, "run_time", None) and getattr(options, "shape", "") != "steps":
            changes["duration_s"] = round(time.monotonic() - self._started, 1)  # web UI: as run
        update_record(self.run_dir, **changes)
