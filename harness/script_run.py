"""Run a script to its end, following it instead of a fixed clock.

Scripts such as scripts/loadtest.py start a server and wait for it themselves (harness.waiting);
a caller's ``subprocess.run(timeout=300)`` around them would put back the fixed deadline those
waits removed: on a slow or busy machine the run is killed while it still makes progress.
``run_script`` gives up only when the script's process tree did nothing (no CPU time, no new
processes, no output) for ``stall_s``, or ``cap_s`` passed.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Hashable
from pathlib import Path

import psutil

from harness.processes import descendants, kill_all, stop_process, tree_progress
from harness.waiting import CAP_S, STALL_S, wait_until


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def run_script(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
               cap_s: float = CAP_S, stall_s: float = STALL_S, log_path: Path | None = None
               ) -> subprocess.CompletedProcess[str]:
    """Run ``args`` to its end; return what ``subprocess.run(capture_output=True, text=True)``
    returns (with ``log_path``: stdout and stderr both go to that file, returned as stdout).

    Raises ``harness.waiting.WaitTimeout`` (after stopping the script and its children) when
    it stalled for ``stall_s`` or ran longer than ``cap_s``. Children the script left running
    when it ended (e.g. Locust's --processes workers of a master that failed) are stopped.
    """
    children: dict[int, psutil.Process] = {}
    with tempfile.TemporaryDirectory(prefix="script-run-") as folder:
        out_path = log_path or Path(folder, "stdout")
        err_path = Path(folder, "stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out,
                                    stderr=subprocess.STDOUT if log_path else err)

        def progress() -> Hashable:
            children.update((p.pid, p) for p in descendants(proc.pid))
            return tree_progress(proc.pid, out_path), _size(err_path)

        try:
            wait_until(lambda: proc.poll() is not None, f"{' '.join(map(str, args))[:200]} ends",
                       timeout_s=cap_s, interval_s=0.2, stall_s=stall_s,
                       progress=progress,
                       detail=lambda: _tail(out_path) + _tail(err_path))
        finally:
            stop_process(proc)  # returns at once when it ended; else SIGTERM, then SIGKILL
            kill_all(list(children.values()))  # by pid and start time: only those still ours
        return subprocess.CompletedProcess(args, proc.returncode,
                                           out_path.read_text(errors="replace"),
                                           err_path.read_text(errors="replace"))
