"""server.engine.procfs: the one home of /proc reads (psutil makes the others)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from harness.processes import stop_process
from server.engine import procfs
from server.engine.hardware import cpu_facts

REPO = Path(__file__).resolve().parent.parent
# Where /proc may be read only through procfs (or psutil). scripts/ is being folded into
# bench/ (issue 30); tests read /proc to check what the code reports, on purpose.
CHECKED = ("server", "harness", "deploy", "locustfiles", "bench", "analysis")


def test_a_child_is_listed_then_a_zombie_until_reaped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        assert child.pid in procfs.child_pids(os.getpid())
        assert procfs.pid_exists(child.pid)
        # Alive: running, sleeping, or (a just-started interpreter reading its files, seen
        # once in CI on a Zen 2) in disk sleep; never a zombie yet.
        assert procfs.process_state(child.pid) in (b"R", b"S", b"D")
        assert child.stdin is not None
        child.stdin.close()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
        assert procfs.process_state(child.pid) == b"Z"
    finally:
        child.stdin.close()  # again is harmless; left open, a failure above warned in the next test
        stop_process(child)
    assert procfs.process_state(child.pid) is None
    assert not procfs.pid_exists(child.pid)


def test_environment_entries_are_the_kernels() -> None:
    entries = procfs.environ_entries(os.getpid())
    assert f"PATH={os.environ['PATH']}".encode() in entries or "PATH" not in os.environ


def test_the_cpu_model_comes_from_the_one_parser() -> None:
    text = procfs.cpuinfo_text()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), None)
    if model:
        assert cpu_facts()["cpu_model"] == model


def test_importing_it_pulls_in_nothing_heavy() -> None:
    probe = ("import json, sys; import server.engine.procfs\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
             "{'torch', 'flask', 'psutil', 'numpy', 'locust', 'gevent'})))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out) == []


def proc_paths(source: str) -> list[int]:
    """Lines of string literals (f-strings too) that start with "/proc"."""
    found = []
    for node in ast.walk(ast.parse(source)):
        head = node.values[0] if isinstance(node, ast.JoinedStr) and node.values else node
        if isinstance(head, ast.Constant) and isinstance(head.value, str) \
                and head.value.startswith("/proc"):
            found.append(node.lineno)
    return sorted(set(found))  # an f-string's head is seen twice


def test_no_proc_path_outside_procfs() -> None:
    home = REPO / "server" / "engine" / "procfs.py"
    found = [f"{path.relative_to(REPO)}:{line}" for folder in CHECKED
             for path in sorted((REPO / folder).rglob("*.py")) if path != home
             for line in proc_paths(path.read_text())]
    assert not found, f"read /proc through server.engine.procfs or psutil: {found}"
