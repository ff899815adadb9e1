"""Share the machine's cores among the workers that are generating right now.

With W preloaded workers and a fixed ``cores / W`` torch threads each, a lone request runs
on one worker's share and the other cores idle. Here every worker marks itself busy in
shared rows (server.engine.shared_rows, created in the master before fork, so all workers see the
same pages) while it has rows to step, and a busy worker's next step uses
``cores / busy workers`` threads: one user gets the whole box, two busy workers get half
each, never more threads than cores in total (apart from the one step in which a second
worker wakes up, before the first has shrunk its pool). ``TORCH_THREADS`` > 0 turns sharing
off (a fixed count).

Each worker writes only its own row ``(pid, busy)`` and counts the busy rows without a lock,
so a worker killed mid-step cannot wedge the others. The master frees a dead worker's row
(``release_dead``, from Gunicorn's ``child_exit``, never waiting on a lock); the rows' lock
file is ``core_share.lock`` in the server's runtime folder (``shared_rows.runtime_dir``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from server.engine.shared_rows import SharedRows, TableFull

SLOTS = 64  # more workers than this share as if the rest were idle


class CoreShare:
    """Busy-worker rows shared across fork, and the thread count they imply."""

    def __init__(self, cores: int, fixed_threads: int = 0, directory: Path | None = None) -> None:
        self.cores = max(1, cores)
        self.fixed_threads = fixed_threads
        self.rows = SharedRows("core_share", SLOTS, directory)

    @property
    def sharing(self) -> bool:
        """True unless a fixed thread count was configured."""
        return self.fixed_threads <= 0

    def busy_workers(self) -> int:
        """Workers marked busy now."""
        return self.rows.nonzero()

    def threads(self, busy: bool) -> int:
        """Mark this process busy or idle; the torch threads its next step should use."""
        with contextlib.suppress(TableFull):  # more workers than SLOTS: shares as if idle
            self.rows.set(1 if busy else 0)
        if not self.sharing:
            return self.fixed_threads
        return max(1, self.cores // max(1, self.rows.nonzero()))

    def release_dead(self, pid: int) -> bool:
        """Free the row of a worker that exited (it may have died while busy), without
        blocking; False if the lock stayed busy (a worker then recycles the row)."""
        return self.rows.forget(pid)
