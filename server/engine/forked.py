"""Run a function in a forked child and keep only its JSON result.

The startup kernel table builds and times every candidate in the Gunicorn master before
fork, and what that leaves behind stays in the master for good, to be inherited by every
worker: oneDNN's primitive cache and JIT code, MKL's GEMM buffers, the library code the
timing ran. On the AMD EPYC Zen 4 a Qwen2.5-1.5B master held 44 MB more anonymous memory
after ``DTYPE=auto`` than after ``DTYPE=bfloat16+native`` (a table of one). Timed in a child,
all of it ends with the child, and the master builds only the winner.

The child shares the parent's memory copy-on-write, so it starts at once and sees the same
model; it must not start thread pools the parent has not (see server.engine.kernels: the
master runs torch on one thread), and it leaves by ``os._exit``, running no exit handler of
the parent's (pytest's, Gunicorn's).
"""

from __future__ import annotations

import json
import os
import signal
import traceback
from collections.abc import Callable
from typing import Any


class ChildFailed(RuntimeError):
    """The child raised (its traceback in the message) or died without answering."""


def run_forked(task: Callable[[], Any]) -> Any:
    """``task()`` run in a forked child; its JSON-able return value, or ChildFailed."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer through the pipe, then leave without cleanup
        os.close(read_end)
        _answer(write_end, task)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise ChildFailed(f"the child died without answering ({_describe(status)})")
    answer = json.loads(data)
    if "error" in answer:
        raise ChildFailed(f"the child raised {answer['error']}\n{answer['trace']}")
    return answer["result"]


def _answer(write_end: int, task: Callable[[], Any]) -> None:
    code = 0
    try:
        try:
            answer = {"result": task()}
        except BaseException as error:  # every failure, exits included, goes to the parent
            answer = {"error": f"{type(error).__name__}: {error}",
                      "trace": traceback.format_exc()}
            code = 1
        data = json.dumps(answer).encode()
        while data:
            data = data[os.write(write_end, data):]
    finally:
        os._exit(code)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
