"""py-spy for ``python -m bench profile``: sample one worker, then sort its samples by kind
of code and by function. py-spy must be installed (``pip install py-spy``; not a dependency).
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path


def py_spy(pid: int, seconds: int, out: Path) -> subprocess.Popen | None:
    """Start sampling ``pid`` with py-spy (collapsed stacks to ``out``), or say why not."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        print("py-spy not installed: no sampled profile (pip install py-spy)")
        return None
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(seconds),
                             "--rate", "50", "--native", "--format", "raw", "--threads",
                             "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def _frame_name(frame: str) -> str:
    # "function (file.py:line)" -> "function (file.py)"; native frames have no line.
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split(':')[0].rstrip(')')})" if where else name


# Leaf frames of the generation thread, by what they are (first match wins).
_KINDS = (
    ("matmul kernels (MKL, fbgemm, oneDNN)", ("gemv", "gemm", "fbgemm", "mkl_blas", "dnnl")),
    ("JIT-compiled kernels (no symbol; oneDNN/fbgemm code)", ("(?)",)),
    ("elementwise loops (GELU, add, norms, softmax, copies)",
     ("function_ref", "vectorized_loop", "Sleef", "vml", "copy", "softmax", "layer_norm")),
    ("Python code", (".py)",)),
    ("lock waits (GIL, queues)", ("pthread_cond", "PyThread_acquire", "futex")),
)


def _kind(leaf: str) -> str:
    for kind, marks in _KINDS:
        if any(mark in leaf for mark in marks):
            return kind
    return "other native code (interpreter, dispatch, libc)"


def hottest(raw: Path, top: int = 12) -> str:
    """py-spy's collapsed stacks: samples by thread, then the generation thread's own time
    by kind of code and by function. py-spy --native counts a thread blocked in a lock wait
    as active, so request threads waiting for their batch show up; they use no CPU."""
    by_thread: collections.Counter = collections.Counter()
    kinds: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames, n = stack.split(";"), int(count)
        by_thread[frames[0]] += n
        if "generation" in frames[0] and len(frames) > 1:
            leaf = _frame_name(frames[-1])
            own[leaf] += n
            kinds[_kind(leaf)] += n
    total, generation = sum(by_thread.values()), sum(own.values())
    if not generation:
        return "py-spy recorded no samples of the generation thread"
    lines = [f"{total} samples (50/s); by thread:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in by_thread.most_common(5)]
    lines.append(f"generation thread ({generation} samples), by kind of code:")
    lines += [f"  {100 * n / generation:5.1f}%  {kind}" for kind, n in kinds.most_common()]
    lines.append("generation thread, hottest functions:")
    lines += [f"  {100 * n / generation:5.1f}%  {name[:110]}" for name, n in own.most_common(top)]
    return "\n".join(lines)
