"""``wait_until``, and no hand-written deadline or poll loop outside harness/waiting.py.

A loop that sleeps until a condition holds, or runs until a clock passes, is a wait; written
by hand it grows a fixed deadline that fails on a slow or busy machine while the process it
waits for still makes progress (issue 18). The check reads the source with ``ast``. A timed
loop that is not a wait (a load of a fixed length, a CPU burn, a measurement) says so in a
comment on its first line or the line above: ``# not a wait: <why>``.

server/ and locustfiles/ are not checked: their timed loops (batching windows, Locust's
drain and tickers) are the product's behaviour, not tests or tools waiting for a process.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

from harness.waiting import ProcessDied, WaitTimeout, wait_until

REPO = Path(__file__).resolve().parent.parent
CHECKED = ("tests", "scripts", "deploy", "bench", "harness")
HELPER = REPO / "harness" / "waiting.py"
MARKER = "# not a wait:"
CLOCKS = {"monotonic", "time", "perf_counter"}


def test_wait_until_returns_once_the_condition_holds() -> None:
    polls = itertools.count()
    assert wait_until(lambda: next(polls) == 3, "the third poll", interval_s=0.01) < 5


def test_a_process_that_died_ends_the_wait_at_once() -> None:
    with pytest.raises(ProcessDied, match="ready: the process exited first\nlast words"):
        wait_until(lambda: False, "ready", alive=lambda: False, detail=lambda: "last words")


def test_progress_keeps_the_wait_going_past_the_stall_limit_up_to_the_cap() -> None:
    ticks = itertools.count()
    with pytest.raises(WaitTimeout, match="not within 2 s"):
        wait_until(lambda: False, "never", timeout_s=2, interval_s=0.05,
                   progress=lambda: next(ticks), stall_s=0.5)
    with pytest.raises(WaitTimeout, match="no progress for 1 s"):
        wait_until(lambda: False, "stuck", timeout_s=60, interval_s=0.05,
                   progress=lambda: "same", stall_s=1)


def _calls(node: ast.AST) -> list[ast.Call]:
    """Calls in ``node``'s own code: not in functions or classes defined inside it."""
    found, stack = [], list(ast.iter_child_nodes(node))
    while stack:
        child = stack.pop()
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        if isinstance(child, ast.Call):
            found.append(child)
        stack.extend(ast.iter_child_nodes(child))
    return found


def _name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _is_clock(call: ast.Call) -> bool:
    """time.monotonic(), time.time(), time.perf_counter() (or the bare imported names)."""
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr in CLOCKS and getattr(func.value, "id", "") == "time"
    return getattr(func, "id", "") in CLOCKS - {"time"}


def hand_waits(source: str) -> list[int]:
    """Line numbers of loops that wait by hand: a ``while`` that sleeps or reads a clock, a
    ``for ... in range(...)`` that sleeps; unless marked ``# not a wait: ...``."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.While | ast.For):
            continue
        calls = _calls(node)
        sleeps = any(_name(c) == "sleep" for c in calls)
        if isinstance(node, ast.While):
            waits = sleeps or any(_is_clock(c) for c in calls)
        else:
            over_range = isinstance(node.iter, ast.Call) and _name(node.iter) == "range"
            waits = sleeps and over_range
        near = lines[max(0, node.lineno - 2):node.lineno]
        if waits and not any(MARKER in line for line in near):
            found.append(node.lineno)
    return sorted(found)


def _sources() -> list[Path]:
    return sorted(p for folder in CHECKED for p in (REPO / folder).rglob("*.py") if p != HELPER)


@pytest.mark.parametrize(("source", "lines"), [
    ("deadline = time.monotonic() + 60\nwhile not done():\n"
     "    assert time.monotonic() < deadline\n    time.sleep(0.1)\n", [2]),
    ("while not done():\n    time.sleep(0.1)\n", [1]),
    ("for _ in range(30):\n    if done():\n        break\n    gevent.sleep(1)\n", [1]),
    ("while time.time() < end:\n    spin()\n", [1]),
    ("# not a wait: burns CPU for 0.3 s\nwhile time.monotonic() < end:\n    pass\n", []),
    ("while True:  # not a wait: a ticker, killed by its caller\n    sleep(0.005)\n", []),
    ("for row in rows:\n    time.sleep(row.pause_s)\n", []),  # pacing a list, not a wait
    ("while queue:\n    handle(queue.pop())\n", []),
    ("while True:\n    def later():\n        time.sleep(1)\n    break\n", []),
], ids=["deadline", "poll", "for-range-sleep", "clock", "marked-above", "marked-inline",
       "paced-list", "plain-while", "nested-def"])
def test_the_finder_tells_hand_waits_from_other_loops(source: str, lines: list[int]) -> None:
    assert hand_waits(source) == lines


def test_no_hand_written_wait_outside_the_helper() -> None:
    found = [f"{path.relative_to(REPO)}:{line}" for path in _sources()
             for line in hand_waits(path.read_text())]
    assert not found, ("wait with harness.waiting.wait_until (or mark a timed loop that is "
                       f"not a wait with '{MARKER} <why>'): {found}")
