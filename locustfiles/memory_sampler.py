"""memory.csv: the server's process tree sampled about once a second while Locust runs.

Two sources, picked by what is known about the server:

* ``--server-pidfile PATH`` (the server runs on this machine): the Gunicorn master's pid from
  the file, its children from /proc, and each one's RSS/USS/PSS/shared read from
  ``smaps_rollup`` via psutil (``server.engine.memory.read_process_memory``);
* otherwise (no pidfile given, or not there) the server's Prometheus ``/metrics``
  (per-worker ``gpt_worker_rss_bytes``, ``gpt_worker_uss_bytes``, ``gpt_worker_pss_bytes``
  gauges labelled by ``pid``): Locust's host, or each of ``--metrics-urls`` when the server
  runs on several hosts behind a load balancer (a scrape through the balancer would reach
  one host at random), sending ``--operator-key`` (the scrape is an operator surface,
  server/web/operator_auth.py). Each round scrapes every host; their processes form one sample, so
  the total row is the whole fleet's footprint. A host that does not answer is missing
  from that round's sample.

Columns (long format: one row per process per sample, then a ``total`` row):

================  ==================================================================
timestamp         sample time, epoch seconds
pid               process id; 0 on the total row
role              master | worker | total
rss_mb            resident set size, MB (counts shared pages in every process)
uss_mb            unique set size, MB (pages only this process maps)
pss_mb            proportional set size, MB (shared pages split among sharers);
                  the total row's pss_mb is the tree's real footprint
shared_mb         resident pages shared with other processes, MB
sys_available_mb  MemAvailable of the host, MB (blank when scraped and not exported;
                  with several hosts, the lowest of theirs)
host              the scraped server's host:port; empty for the pidfile source and on
                  the total row
cpu_s             the process's CPU time so far (user + system), seconds; the total
                  row's is the tree's sum (pidfile source only: blank when scraped)
other_cpu_share   total row: the share of the box's CPU (1.0 = every core) that
                  processes outside the server tree and Locust used since the previous
                  sample (pidfile source only; locustfiles/box_load.py)
steal_share       total row: the share of the box's CPU the hypervisor stole since the
                  previous sample (/proc/stat's steal through psutil; 0 on bare metal)
================  ==================================================================

The sampler runs on the master (or the only) Locust process, never on Locust workers. The
/proc reads of the pidfile source run in gevent's thread pool, not on the event loop: one
``smaps_rollup`` read of a gpt2-large worker takes ~26 ms, and on the loop every simulated
user would stall that long each second (loadgen.csv records the loop's lag to show it).
"""

from __future__ import annotations

import csv
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent
import psutil
import requests
from locust.env import Environment
from locust.runners import WorkerRunner
from prometheus_client.parser import text_string_to_metric_families

from locustfiles.box_load import BoxLoad, BoxShares
from locustfiles.server_facts import operator_headers
from server.engine.memory import read_process_memory, system_available_mb
from server.engine.procfs import child_pids

log = logging.getLogger(__name__)

COLUMNS = ("timestamp", "pid", "role", "rss_mb", "uss_mb", "pss_mb", "shared_mb",
           "sys_available_mb", "host", "cpu_s", "other_cpu_share", "steal_share")
_MB = 2**20
# Per-worker gauges on the server's /metrics, mapped to our columns.
METRIC_GAUGES = {
    "gpt_worker_rss_bytes": "rss_mb",
    "gpt_worker_uss_bytes": "uss_mb",
    "gpt_worker_pss_bytes": "pss_mb",
}
SYSTEM_GAUGE = "gpt_system_available_bytes"


@dataclass(frozen=True)
class ProcessMemory:
    """One process in one sample, MB."""

    pid: int
    role: str
    rss_mb: float
    uss_mb: float
    pss_mb: float
    shared_mb: float
    host: str = ""  # host:port of a scraped server; "" for this machine's /proc
    cpu_s: float | None = None  # user + system CPU seconds so far (pidfile source)


@dataclass(frozen=True)
class TreeSample:
    """All processes of the server at one moment, plus their sums."""

    timestamp: float
    processes: tuple[ProcessMemory, ...]
    sys_available_mb: float | None
    box: BoxShares | None = None  # the box's other load since the previous sample

    @property
    def total(self) -> ProcessMemory:
        """The sums over the tree (pid 0, role "total")."""
        sums = [sum(getattr(p, f) for p in self.processes)
                for f in ("rss_mb", "uss_mb", "pss_mb", "shared_mb")]
        cpu = [p.cpu_s for p in self.processes]
        return ProcessMemory(0, "total", *sums,
                             cpu_s=None if None in cpu else sum(cpu))  # type: ignore[arg-type]

    def rows(self) -> list[list[Any]]:
        """memory.csv rows: each process, then the total (which carries the box's shares)."""
        available = "" if self.sys_available_mb is None else round(self.sys_available_mb, 1)
        rows = [[round(self.timestamp, 3), p.pid, p.role, round(p.rss_mb, 1), round(p.uss_mb, 1),
                 round(p.pss_mb, 1), round(p.shared_mb, 1), available, p.host,
                 _cell(p.cpu_s, 3), "", ""]
                for p in (*self.processes, self.total)]
        if self.box is not None:
            rows[-1][-2:] = [_cell(self.box.other_cpu_share, 4), _cell(self.box.steal_share, 4)]
        return rows


def _cell(value: float | None, digits: int) -> Any:
    return "" if value is None else round(value, digits)


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far (None when it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def sample_pidfile(pidfile: Path, box: BoxLoad | None = None) -> TreeSample | None:
    """Read the master named in ``pidfile`` and its children from /proc; None if not running.
    With ``box``, the box's other load since the previous sample rides on the sample.

    Blocking (tens of ms for a big tree): call it off the event loop (``MemorySampler``).
    """
    try:
        master = int(pidfile.read_text().strip())
        children = child_pids(master)
    except (OSError, ValueError):
        return None
    processes = []
    for pid, role in [(master, "master"), *((c, "worker") for c in children)]:
        try:
            m = read_process_memory(pid)
        except (OSError, KeyError):  # exited between listing and reading
            continue
        cpu_s = _cpu_s(pid)
        if cpu_s is None:
            continue
        processes.append(ProcessMemory(pid, role, m.rss_mb, m.uss_mb, m.pss_mb, m.shared_mb,
                                       cpu_s=cpu_s))
    if not processes:
        return None
    shares = box.shares({p.pid: p.cpu_s for p in processes}) if box is not None else None
    return TreeSample(time.time(), tuple(processes), system_available_mb(), shares)


def parse_metrics(text: str, timestamp: float, host: str = "") -> TreeSample | None:
    """Build a sample from Prometheus text with the per-worker memory gauges of ``host``."""
    by_pid: dict[int, dict[str, float]] = {}
    available = None
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in METRIC_GAUGES and "pid" in s.labels:
                by_pid.setdefault(int(s.labels["pid"]), {})[METRIC_GAUGES[s.name]] = s.value / _MB
            elif s.name == SYSTEM_GAUGE:
                available = s.value / _MB
    processes = tuple(
        ProcessMemory(pid, "worker", v.get("rss_mb", 0.0), v.get("uss_mb", 0.0),
                      v.get("pss_mb", 0.0), v.get("rss_mb", 0.0) - v.get("uss_mb", 0.0), host)
        for pid, v in sorted(by_pid.items()))
    return TreeSample(timestamp, processes, available) if processes else None


def sample_metrics(base_url: str, timeout_s: float = 2.0,
                   operator_key: str = "") -> TreeSample | None:
    """Scrape ``base_url``/metrics with ``operator_key``; None when unreachable, refused or
    without the gauges."""
    try:
        response = requests.get(base_url.rstrip("/") + "/metrics", timeout=timeout_s,
                                headers=operator_headers(operator_key))
        response.raise_for_status()
    except requests.RequestException:
        return None
    return parse_metrics(response.text, time.time(), urlsplit(base_url).netloc)


def merge_samples(samples: Sequence[TreeSample | None]) -> TreeSample | None:
    """One sample of several hosts' processes (None when none answered).

    The timestamp is the first host's; system memory available is the lowest host's.
    """
    found = [s for s in samples if s is not None]
    if not found:
        return None
    available = [s.sys_available_mb for s in found if s.sys_available_mb is not None]
    return TreeSample(found[0].timestamp, tuple(p for s in found for p in s.processes),
                      min(available) if available else None)


def sample_hosts(base_urls: Sequence[str], timeout_s: float = 2.0,
                 operator_key: str = "") -> TreeSample | None:
    """Scrape every server in ``base_urls`` and merge their processes into one sample."""
    return merge_samples([sample_metrics(url, timeout_s, operator_key) for url in base_urls])


def split_urls(value: str) -> tuple[str, ...]:
    """The base URLs of a comma-separated ``--metrics-urls`` value (blanks dropped)."""
    return tuple(url.strip() for url in value.split(",") if url.strip())


class MemorySampler:
    """Sample the server tree every ``interval_s`` into memory.csv and a short history."""

    def __init__(self, path: Path | str | None, *, pidfile: Path | str | None = None,
                 metrics_urls: Sequence[str] = (), interval_s: float = 1.0,
                 history: int = 3600, operator_key: str = "") -> None:
        self.path = Path(path) if path else None
        self.pidfile = Path(pidfile) if pidfile else None
        # Servers whose /metrics are scraped; empty: Locust's host.
        self.metrics_urls = tuple(metrics_urls)
        self.operator_key = operator_key  # opens /metrics (OPERATOR_KEYS)
        self.interval_s = interval_s
        self.history: deque[TreeSample] = deque(maxlen=history)
        self.samples_written = 0
        self._environment: Environment | None = None
        self._file = None
        self._writer = None
        self._greenlet: gevent.Greenlet | None = None
        self._box: BoxLoad | None = None  # the box's other load (this Locust process's box)

    @property
    def source(self) -> str:
        """Where samples come from: "pidfile", or "metrics" when there is no pidfile (yet)."""
        return "pidfile" if self.pidfile is not None and self.pidfile.exists() else "metrics"

    @property
    def latest(self) -> TreeSample | None:
        """The most recent sample, if any."""
        return self.history[-1] if self.history else None

    def register(self, environment: Environment) -> None:
        """Start sampling on the master or local runner; close the file on ``quitting``."""
        if isinstance(environment.runner, WorkerRunner):
            return
        self._environment = environment
        self._box = BoxLoad()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115
            self._writer = csv.writer(self._file)
            self._writer.writerow(COLUMNS)
            self._file.flush()
        self._greenlet = gevent.spawn(self._loop)
        environment.events.quitting.add_listener(self._on_quitting)

    def sample_once(self) -> TreeSample | None:
        """Take one sample now, record it, and return it (None when the server is not found)."""
        if self.source == "pidfile":
            # In a real OS thread: the reads release the GIL, the loop keeps serving users.
            sample = gevent.get_hub().threadpool.spawn(sample_pidfile, self.pidfile,
                                                       self._box).get()
        elif self.metrics_urls:
            sample = sample_hosts(self.metrics_urls, operator_key=self.operator_key)
        else:
            host = self._environment.host if self._environment else None
            sample = sample_metrics(host, operator_key=self.operator_key) if host else None
        if sample is not None and sample.box is None and self._box is not None \
                and self.source != "pidfile":
            # Scraped: the server's CPU is not known here, the box's steal still is.
            sample = replace(sample, box=self._box.shares(None))
        if sample is not None:
            self.history.append(sample)
            if self._writer is not None:
                self._writer.writerows(sample.rows())
                self._file.flush()
                self.samples_written += 1
        return sample

    def _loop(self) -> None:
        while True:
            started = time.monotonic()
            self.sample_once()
            gevent.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    def _on_quitting(self, **kwargs: Any) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
        if self._file is not None and not self._file.closed:
            self._file.close()
