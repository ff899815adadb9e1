"""The server configurations the benchmark compares, first row = the baseline (naive).

Each row becomes options of ``scripts/loadtest.py`` (workers, dtype, torch threads, batch
limits) plus server environment variables for what the run script has no option for:
``GUNICORN_CMD_ARGS`` (Gunicorn reads it after gunicorn.conf.py, so it overrides the config
file's gthread worker class) and ``GUNICORN_PRELOAD``. Every row also gets ``COMMON_ENV``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Server settings every row shares: exactly max_new_tokens per request (the end-of-text token
# does not stop it), no rate limit (it would measure the limiter, not the model), and a request
# timeout above the naive row's closed-loop latency (10 users x ~17 s in sequence).
COMMON_ENV = {"IGNORE_EOS": "1", "RATE_LIMIT": "", "GLOBAL_RATE_LIMIT": "",
              "REQUEST_TIMEOUT_S": "900"}


@dataclass(frozen=True)
class Row:
    """One server configuration: a name, what it stands for, and its settings."""

    name: str
    meaning: str
    workers: int
    torch_threads: int  # per worker; 0 = cores / workers
    dtype: str
    max_batch_size: int
    worker_class: str = "gthread"
    preload: bool = True

    def loadtest_args(self) -> list[str]:
        """Options of scripts/loadtest.py for this row."""
        return ["--workers", str(self.workers), "--torch-threads", str(self.torch_threads),
                "--dtype", self.dtype, "--max-batch-size", str(self.max_batch_size)]

    def server_env(self) -> dict[str, str]:
        """Environment of the server for this row (on top of COMMON_ENV)."""
        env = {**COMMON_ENV, "GUNICORN_PRELOAD": "1" if self.preload else "0"}
        if self.worker_class == "sync":
            # A sync worker with threads > 1 silently becomes gthread: pin both.
            env["GUNICORN_CMD_ARGS"] = "--worker-class sync --threads 1"
        return env

    def setup(self) -> str:
        """Short description of the settings, for the table."""
        threads = self.torch_threads or "cores/W"
        return (f"{self.workers} {self.worker_class} x {threads} thr, {self.dtype}, "
                f"batch<={self.max_batch_size}"
                + ("" if self.preload else ", no preload"))


ROWS: tuple[Row, ...] = (
    Row("naive", "1 sync worker, one request at a time, fp32, no batching: what the reference "
        "FastAPI/Flask servers do", workers=1, torch_threads=0, dtype="float32",
        max_batch_size=1, worker_class="sync", preload=False),
    Row("preload-2w", "2 preloaded workers sharing the weights, no batching", workers=2,
        torch_threads=0, dtype="float32", max_batch_size=1),
    Row("batch-fp32", "2 preloaded workers, each batching up to 8 requests, fp32", workers=2,
        torch_threads=0, dtype="float32", max_batch_size=8),
    Row("batch-bf16", "the same in bf16 (half the bytes per step)", workers=2,
        torch_threads=0, dtype="bfloat16", max_batch_size=8),
    Row("1w2t-bf16", "1 worker x 2 torch threads: all 10 users in one batch, bf16", workers=1,
        torch_threads=2, dtype="bfloat16", max_batch_size=16),
    Row("2w2t-bf16", "2 workers x 2 torch threads (oversubscribed: 4 threads on 2 cores)",
        workers=2, torch_threads=2, dtype="bfloat16", max_batch_size=8),
    Row("batch-int8", "2 preloaded workers batching up to 8, linear layers in int8 "
        "(server/engine/quantize.py)", workers=2, torch_threads=0, dtype="int8", max_batch_size=8),
    Row("1w2t-int8", "1 worker x 2 torch threads, all 10 users in one batch, int8", workers=1,
        torch_threads=2, dtype="int8", max_batch_size=16),
)


def select(names: Sequence[str], rows: Sequence[Row] = ROWS) -> list[Row]:
    """The rows called ``names`` in the given order (all rows when empty)."""
    if not names:
        return list(rows)
    by_name = {row.name: row for row in rows}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown bench rows {unknown}; valid: {', '.join(by_name)}")
    return [by_name[n] for n in names]
