"""Share the machine's cores among the workers that are generating right now.

With W preloaded workers and a fixed ``cores / W`` torch threads each, a lone request runs
on one worker's share and the other cores idle. Here every worker marks itself busy in a
small shared array (created in the master before fork, so all workers see the same pages)
while it has rows to step, and a busy worker's next step uses ``cores / busy workers``
threads: one user gets the whole box, two busy workers get half each, never more threads
than cores in total (apart from the one step in which a second worker wakes up, before the
first has shrunk its pool). ``TORCH_THREADS`` > 0 turns sharing off (a fixed count).

A slot holds the pid of a busy worker, so the master can free the slot of a worker that
died while busy (``release_dead``, from Gunicorn's ``child_exit``).
"""

from __future__ import annotations

import multiprocessing
import os

SLOTS = 64  # more workers than this share as if the rest were idle


class CoreShare:
    """Busy-worker slots shared across fork, and the thread count they imply."""

    def __init__(self, cores: int, fixed_threads: int = 0) -> None:
        self.cores = max(1, cores)
        self.fixed_threads = fixed_threads
        self._slots = multiprocessing.Array("i", SLOTS)  # 0 = free, else a busy worker's pid

    @property
    def sharing(self) -> bool:
        """True unless a fixed thread count was configured."""
        return self.fixed_threads <= 0

    def busy_workers(self) -> int:
        """Workers marked busy now."""
        return sum(1 for pid in self._slots if pid)

    def threads(self, busy: bool) -> int:
        """Mark this process busy or idle; the torch threads its next step should use."""
        pid = os.getpid()
        with self._slots.get_lock():
            mine = [i for i, held in enumerate(self._slots) if held == pid]
            if busy and not mine:
                free = next((i for i, held in enumerate(self._slots) if not held), None)
                if free is not None:
                    self._slots[free] = pid
            elif not busy:
                for i in mine:
                    self._slots[i] = 0
            busy_now = sum(1 for held in self._slots if held)
        if not self.sharing:
            return self.fixed_threads
        return max(1, self.cores // max(1, busy_now))

    def release_dead(self, pid: int) -> None:
        """Free the slot of a worker that exited (it may have died while busy)."""
        with self._slots.get_lock():
            for i, held in enumerate(self._slots):
                if held == pid:
                    self._slots[i] = 0
