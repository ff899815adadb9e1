"""How busy the box was with work that is neither the server's nor Locust's: the busy-box
detector's two numbers, taken with each memory.csv sample.

Between two samples (about a second apart):

* ``other_cpu_share``: (CPU time the box's CPUs spent busy - the server tree's CPU time -
  Locust's own CPU time) / (all CPU time the box had), floored at 0. Busy is psutil's
  system-wide ``cpu_times()`` minus idle, iowait and steal; the server tree's CPU is the
  sum of its processes' user + system time deltas (the memory sampler reads them with the
  tree's memory); Locust's is this process and its children (``--processes`` forks the
  workers), user + system. Locust workers started separately on this box count as
  "other".
* ``steal_share``: steal time / all CPU time the box had: the share of the CPU a
  hypervisor gave to other guests while this one wanted it (psutil's ``steal``, the
  8th column of /proc/stat's cpu line; 0 on bare metal).

"All CPU time the box had" is the sum of every field of ``cpu_times()`` except guest and
guest_nice (already counted in user and nice), so both shares are of every core of the
machine, 1.0 = all of them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class BoxShares:
    """The box's load beside the server and Locust over the last interval (0..1 each)."""

    other_cpu_share: float | None  # None: the server tree's CPU is unknown (scraped source)
    steal_share: float


def _box_times() -> tuple[float, float, float]:
    """(all, busy, steal) CPU seconds of the whole box so far."""
    t = psutil.cpu_times()
    fields = t._asdict()
    total = sum(v for k, v in fields.items() if k not in ("guest", "guest_nice"))
    steal = fields.get("steal", 0.0)
    idle = fields.get("idle", 0.0) + fields.get("iowait", 0.0)
    return total, total - idle - steal, steal


def _tree_cpu_s(process: psutil.Process) -> dict[int, float]:
    """User + system CPU seconds of ``process`` and each of its descendants, by pid."""
    found = {}
    for p in [process, *process.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.Error:  # exited while we listed
            continue
        found[p.pid] = t.user + t.system
    return found


def _delta(now: Mapping[int, float], before: Mapping[int, float]) -> float:
    """CPU spent since ``before``: per pid, a process new since then counts whole."""
    return sum(max(0.0, cpu - before.get(pid, 0.0)) for pid, cpu in now.items())


class BoxLoad:
    """Successive readings of the box, the server tree and Locust; ``shares()`` per sample."""

    def __init__(self, locust_pid: int | None = None) -> None:
        self._locust = psutil.Process(locust_pid or os.getpid())
        self._last: tuple[tuple[float, float, float], dict[int, float], dict[int, float]] | None
        self._last = None

    def shares(self, server_cpu_s: Mapping[int, float] | None) -> BoxShares | None:
        """The shares since the previous call, given the server tree's CPU seconds by pid
        now (None: not known, so no other_cpu_share); None on the first call (no interval
        yet) or when no CPU time passed."""
        now = (_box_times(), dict(server_cpu_s or {}), _tree_cpu_s(self._locust))
        known = server_cpu_s is not None
        last, self._last = self._last, now
        if last is None:
            return None
        (total, busy, steal), server, locust = now
        (total0, busy0, steal0), server0, locust0 = last
        span = total - total0
        if span <= 0:
            return None
        other = (busy - busy0) - _delta(server, server0) - _delta(locust, locust0)
        return BoxShares(max(0.0, other) / span if known else None,
                         max(0.0, steal - steal0) / span)


class BoxWindow:
    """The busy-box shares over one stretch of a command that runs its load as child processes
    (``python -m bench crosscheck``: Locust, guidellm, our Gunicorn): "other" is the CPU of
    everything but this process and its descendants, alive or already reaped.

    ``BoxWindow()`` takes the first reading; ``shares()`` the second and returns the shares
    in between. A child that ended must have been waited for (its CPU then shows in this
    process's ``children_user`` / ``children_system``); a server outside this tree (one
    given by URL) counts as other.
    """

    def __init__(self) -> None:
        self._start = self._reading()

    @staticmethod
    def _reading() -> tuple[tuple[float, float, float], float]:
        me = psutil.Process()
        reaped = me.cpu_times()
        return _box_times(), (sum(_tree_cpu_s(me).values()) + reaped.children_user
                              + reaped.children_system)

    def shares(self) -> BoxShares | None:
        """The shares since this window began (None when no CPU time passed)."""
        (total, busy, steal), mine = self._reading()
        (total0, busy0, steal0), mine0 = self._start
        span = total - total0
        if span <= 0:
            return None
        other = (busy - busy0) - (mine - mine0)
        return BoxShares(max(0.0, other) / span, max(0.0, steal - steal0) / span)
