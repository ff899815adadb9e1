"""Append one JSON line per request to a file shared by every worker, without tearing lines."""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The per-request record (design.md "Per-request RAM record"), in this order.
FIELDS = (
    "ts", "request_id", "route", "status", "key_id", "worker_pid", "prompt_tokens",
    "completion_tokens", "batch_size", "queue_ms", "inference_ms", "total_ms", "rss_mb",
    "uss_mb", "pss_mb", "rss_delta_mb", "rss_peak_mb",
    # MiB of KV the worker's kept prefix rows hold as the request ends (scheduler.prefixes):
    # memory that grows until PREFIX_CACHE_ROWS or the KV budget bounds it, which analysis
    # tells apart from a leak.
    "kv_kept_mb", "sys_available_mb",
    "cpu_ms", "cpu_ms_per_token",  # the worker's CPU charged to it (server.engine.step_cost)
    # The error envelope's code answered, with its details' reason when it names one
    # ("overloaded:forecast"); None for a success. An operator can tell which check refused.
    "error",
)


class RequestLog:
    """An O_APPEND file: each record is one write() of one line, so lines never interleave."""

    def __init__(self, path: str, on_error: Callable[[], None] = lambda: None) -> None:
        self.path = path
        self.write_errors = 0
        self._on_error = on_error
        self._fd: int | None = None

    def _open(self) -> int:
        # Opened lazily in the worker (after fork), not inherited from the master.
        if self._fd is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self._fd

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (only FIELDS, in order); count and log once on disk errors."""
        if not self.path:
            return
        line = json.dumps({k: record.get(k) for k in FIELDS}, separators=(",", ":")) + "\n"
        data = line.encode()
        try:
            fd = self._open()
            written = os.write(fd, data)
            if written < len(data):
                # A disk that fills mid-line takes part of it: cut the fragment off again so
                # the file keeps whole lines (the next line would otherwise be glued to it).
                os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_CUR) - written)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as error:
            self.write_errors += 1
            self._on_error()
            if self.write_errors == 1:  # once: a full disk must not flood the log too
                log.error("request log %s not writable: %s", self.path, error.strerror)
