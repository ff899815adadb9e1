"""Wait for a condition while following the process that should bring it about.

A fixed clock fails on a slow or busy machine while the server is still making progress,
and waits its whole length for a server that died at once. ``wait_until`` does neither:
it fails at once when ``alive`` says the process is gone, keeps waiting while the process
shows progress (``progress`` returns a value that changes: log size, CPU time, children),
and gives up only when there was no progress for ``stall_s`` or ``cap_s`` passed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Hashable

# Generous bounds: CI machines differ by several times in speed, and a busy 2-core box can
# take minutes to start a preloaded Gunicorn; a process that makes no progress at all for
# STALL_S is stuck, not slow.
CAP_S = 900.0
STALL_S = 180.0
# How often progress is read: a stall is minutes, and reading a process tree costs CPU that a
# fast poll (every 20 ms) would take from the server it waits for.
PROGRESS_EVERY_S = 1.0


def add_wait_options(parser: argparse.ArgumentParser, waited_for: str) -> None:
    """Add --ready-timeout (the cap, CAP_S) and --stall-timeout (STALL_S) to a command that
    starts processes and waits for them."""
    parser.add_argument("--ready-timeout", type=float, default=CAP_S,
                        help=f"most seconds to wait for {waited_for} while they are still "
                             "making progress (harness.waiting)")
    parser.add_argument("--stall-timeout", type=float, default=STALL_S,
                        help="give up when the starting processes made no progress this long")


class WaitTimeout(TimeoutError):
    """The condition did not hold in time; the message names what was waited for."""


class ProcessDied(RuntimeError):
    """The process that should have made the condition true exited first."""


def wait_until(
    predicate: Callable[[], bool],
    what: str,
    timeout_s: float = CAP_S,
    interval_s: float = 0.1,
    alive: Callable[[], bool] | None = None,
    progress: Callable[[], Hashable] | None = None,
    stall_s: float = STALL_S,
    detail: Callable[[], str] = lambda: "",
) -> float:
    """Poll ``predicate`` until true; return the seconds it took.

    Raises ``ProcessDied`` when ``alive()`` turns false first, and ``WaitTimeout`` after
    ``timeout_s`` in all or, with ``progress``, after ``stall_s`` without its value changing.
    ``detail()`` is appended to either message (e.g. the server's log tail).
    """
    started = time.monotonic()
    last_change = last_read = started
    last_seen = progress() if progress else None
    while True:
        if predicate():
            return time.monotonic() - started
        if alive is not None and not alive():
            raise ProcessDied(f"{what}: the process exited first\n{detail()}")
        now = time.monotonic()
        if progress is not None and now - last_read >= PROGRESS_EVERY_S:
            last_read, seen = now, progress()
            if seen != last_seen:
                last_change, last_seen = now, seen
            if now - last_change > stall_s:
                raise WaitTimeout(f"{what}: no progress for {stall_s:.0f} s "
                                  f"(after {now - started:.0f} s)\n{detail()}")
        if now - started > timeout_s:
            raise WaitTimeout(f"{what}: not within {timeout_s:.0f} s\n{detail()}")
        time.sleep(interval_s)
