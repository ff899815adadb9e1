"""The jobs waiting for a row, served fairly across tenants (API keys).

A first-come-first-served queue let one key hold up every other: key A's five long
prompts (each needing most of ``KV_TOKENS``) ran one after another, and key B's 8-token
request waited 41 s behind them although it needed ~10 KV positions (issue 29, gpt2-large,
AMD EPYC Zen 4). Here each tenant has its own FIFO, and ``order`` interleaves them by least
service: the tenant with the fewest rows running (then the one whose oldest job waited
longest) comes first, one job at a time, as a fair scheduler over flows does. The scheduler
(server.engine.scheduler) admits the first job of that order that fits, so a small job may also
run ahead of a big one still waiting for KV room, until the big one has aged
(``QUEUE_AGING_S``).

Bounds: at most ``maxsize`` jobs in all (``QueueFull``: the server is full, 503) and at
most ``tenant_max`` of one tenant (``TenantQueueFull``: that key's share is full, 429).
Thread-safe: request threads put, the generation thread takes.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping

from server.engine.jobs import Job, QueueFull


class TenantQueueFull(QueueFull):
    """This tenant already has its share of the queue; other tenants may still queue."""


class FairQueue:
    """Per-tenant FIFOs of waiting jobs, at most ``maxsize`` in all and ``tenant_max`` each."""

    def __init__(self, maxsize: int, tenant_max: int = 0) -> None:
        self.maxsize = max(1, maxsize)
        self.tenant_max = min(self.maxsize, tenant_max) if tenant_max > 0 else self.maxsize
        self._fifos: dict[str, deque[Job]] = {}
        self._size = 0
        self._changed = threading.Condition()

    def qsize(self) -> int:
        """Jobs waiting."""
        return self._size

    def empty(self) -> bool:
        """Whether no job waits."""
        return self._size == 0

    def put(self, job: Job) -> None:
        """Queue ``job`` at the end of its tenant's FIFO, or raise without waiting."""
        with self._changed:
            if self._size >= self.maxsize:
                raise QueueFull
            fifo = self._fifos.setdefault(job.request.tenant, deque())
            if len(fifo) >= self.tenant_max:
                raise TenantQueueFull
            fifo.append(job)
            self._size += 1
            self._changed.notify_all()

    def remove(self, job: Job) -> bool:
        """Take ``job`` out of the queue; False if it was not there."""
        with self._changed:
            fifo = self._fifos.get(job.request.tenant)
            if fifo is None or job not in fifo:
                return False
            fifo.remove(job)
            if not fifo:
                del self._fifos[job.request.tenant]
            self._size -= 1
            return True

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until a job waits (or ``timeout_s`` passed); whether one does."""
        with self._changed:
            return self._changed.wait_for(lambda: self._size > 0, timeout_s)

    def order(self, running: Mapping[str, int] | None = None, extra: Job | None = None
              ) -> list[Job]:
        """Every waiting job (and ``extra``, as if queued now) in the order they would be
        served: repeatedly the next job of the tenant with the fewest rows (``running``
        per tenant, plus those taken in this order), ties to the tenant whose next job is
        oldest."""
        with self._changed:
            fifos = {tenant: list(fifo) for tenant, fifo in self._fifos.items()}
        if extra is not None:
            fifos.setdefault(extra.request.tenant, []).append(extra)
        served = {tenant: (running or {}).get(tenant, 0) for tenant in fifos}
        heads = dict.fromkeys(fifos, 0)
        ordered: list[Job] = []
        while len(heads):
            tenant = min(heads, key=lambda t: (served[t], fifos[t][heads[t]].enqueued_at))
            ordered.append(fifos[tenant][heads[tenant]])
            served[tenant] += 1
            heads[tenant] += 1
            if heads[tenant] == len(fifos[tenant]):
                del heads[tenant]
        return ordered

    def tenant_depth(self, tenant: str) -> int:
        """Jobs of ``tenant`` waiting."""
        with self._changed:
            return len(self._fifos.get(tenant, ()))
