"""Per-process rows in shared memory that no process's death can wedge.

Gunicorn's preloaded master creates the table before fork, so every worker maps the same
pages: ``rows`` pairs of ``(pid, value)``. Each process writes only its own row's value,
with plain stores and no cross-process lock, and anyone may sum the values at any time
without waiting (an aligned int is read whole). Only changing who owns a row (claiming a
free or dead row, clearing a dead process's row) happens under a lock, and that lock is a
POSIX record lock (``fcntl.lockf``) on a lock file: the kernel drops it when its holder
dies, SIGKILL and the OOM killer included. A ``multiprocessing.Lock`` (a semaphore) held by a
killed process stays taken forever, which wedged every worker and the master's
``child_exit`` (issue 29).

Record locks belong to a process, not to a thread, and a child does not inherit its parent's,
so the lock file is paired with a ``threading.RLock`` (threads of one process exclude each
other with it; it is re-created in a forked child). The master never waits on the file lock:
``forget`` makes a few non-blocking attempts and otherwise leaves the row to the workers,
which recycle dead rows when they run out of free ones (and ``forget_dead`` on demand).

The lock file lives in a per-server runtime folder (``runtime_dir``: the folder
gunicorn.conf.py creates for Prometheus' multiprocess files, ``PROMETHEUS_MULTIPROC_DIR``),
as ``<name>.lock``, so an operator or a test can find it. Without that folder (tests,
``flask run``) the file is private: created and unlinked at once, shared only by fork.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import multiprocessing
import os
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

from server.engine.procfs import process_state

# The master's attempts at the file lock in ``forget``: a live holder keeps it for
# microseconds (a row claim), so a few tries 5 ms apart find it free; never more than ~50 ms.
FORGET_ATTEMPTS = 10
FORGET_INTERVAL_S = 0.005


def runtime_dir() -> Path | None:
    """This server's runtime folder (``PROMETHEUS_MULTIPROC_DIR``, created per server by
    gunicorn.conf.py), or None where there is none."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(folder) if folder else None


class TableFull(RuntimeError):
    """Every row belongs to a live process."""


class SharedRows:
    """``rows`` ``(pid, value)`` pairs shared across fork; a process writes only its own."""

    def __init__(self, name: str, rows: int, directory: Path | None = None) -> None:
        self._pids = multiprocessing.RawArray("i", rows)
        self._values = multiprocessing.RawArray("i", rows)
        self.lock_path = None if directory is None else Path(directory) / f"{name}.lock"
        self._fd = _open_lock_file(self.lock_path)
        weakref.finalize(self, os.close, self._fd)
        self._local = threading.RLock()
        self._depth = 0  # nesting of locked() in the thread that holds _local
        self._mine: tuple[int, int] | None = None  # (pid, row) of this process's row
        this = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(this))

    @property
    def local(self) -> threading.RLock:
        """The lock the threads of this process take around a read-modify-write of its row."""
        return self._local

    def total(self) -> int:
        """The sum of every row's value (no lock)."""
        return sum(self._values)

    def nonzero(self) -> int:
        """How many rows hold a value other than 0 (no lock)."""
        return sum(1 for value in self._values if value)

    def add(self, delta: int) -> int:
        """Add ``delta`` to this process's row (claimed on first use); its new value."""
        with self._local:
            row = self.claim()
            self._values[row] = max(0, self._values[row] + delta)
            return self._values[row]

    def set(self, value: int) -> None:
        """Set this process's row to ``value`` (0 without a row claims none)."""
        with self._local:
            if value or self._own_row() is not None:
                self._values[self.claim()] = value

    def claim(self) -> int:
        """This process's row: its own, else a free one, else a dead process's."""
        row = self._own_row()
        if row is not None:
            return row
        with self.locked():
            pid = os.getpid()
            free = [r for r, owner in enumerate(self._pids) if owner in (0, pid)]
            row = free[0] if free else next(
                (r for r, owner in enumerate(self._pids) if not alive(owner)), None)
            if row is None:
                raise TableFull(f"all {len(self._pids)} rows belong to live processes")
            self._values[row], self._pids[row] = 0, pid
            self._mine = (pid, row)
            return row

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the row-ownership lock: this process's RLock, then the file lock (which
        the kernel releases if the holder dies, so waiting here never outlives a holder)."""
        with self._local:
            if self._depth == 0:
                fcntl.lockf(self._fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def forget(self, pid: int) -> bool:
        """Clear ``pid``'s rows (it exited) without blocking; False if the lock stayed busy,
        in which case the workers recycle the row. For Gunicorn's master (child_exit)."""
        if not self._local.acquire(blocking=False):
            return False
        try:
            for attempt in range(FORGET_ATTEMPTS):
                if attempt:
                    time.sleep(FORGET_INTERVAL_S)
                if _try_lock(self._fd):
                    try:
                        self._clear(lambda owner: owner == pid)
                    finally:
                        fcntl.lockf(self._fd, fcntl.LOCK_UN)
                    return True
            return False
        finally:
            self._local.release()

    def forget_dead(self) -> int:
        """Clear the rows of processes that died (reaped or not); how many."""
        with self.locked():
            return self._clear(lambda owner: owner != 0 and not alive(owner))

    def _clear(self, dead) -> int:
        # Under the file lock: nobody claims a row meanwhile, and a dead owner writes nothing.
        cleared = 0
        for row, owner in enumerate(self._pids):
            if owner and dead(owner):
                self._values[row], self._pids[row] = 0, 0
                cleared += 1
        return cleared

    def _own_row(self) -> int | None:
        mine = self._mine
        if mine is not None and mine[0] == os.getpid() and self._pids[mine[1]] == mine[0]:
            return mine[1]
        return None


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (dead, not yet reaped by its parent) does not."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = process_state(pid)  # None: no /proc here, and kill(0) is all we know
    return state not in (b"Z", b"X")


def _open_lock_file(path: Path | None) -> int:
    """The lock file's descriptor (kept open: closing any descriptor of the file would drop
    this process's record locks on it). Without a path, a private unlinked file."""
    if path is None:
        fd, name = tempfile.mkstemp(prefix="gpt-load-lab-", suffix=".lock")
        os.unlink(name)
        return fd
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


def _after_fork(ref: weakref.ref) -> None:
    # The child has only the forking thread: a lock another thread held at fork is stale.
    rows = ref()
    if rows is not None:
        rows._local = threading.RLock()
        rows._depth = 0
