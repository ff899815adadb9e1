"""Run folders: their names and their run.json (read, write, update), one home for all.

    results/<UTC timestamp>-<label>/run.json      see harness.run_record.RunRecord

Writers (the Locust suite's hook, scripts/loadtest.py, bench, deploy) call ``update_record``
so each adds its own facts to what is there; analysis calls ``read_record``.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.run_record import RunRecord

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
RUN_JSON = "run.json"
_LABEL = re.compile(r"[^A-Za-z0-9._-]+")


def utc_stamp(now: datetime | None = None) -> str:
    """A sortable UTC timestamp for folder names: 20260102T030405Z."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def utc_now() -> str:
    """ISO-8601 UTC time, seconds precision (run.json's started_at/ended_at)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_run_dir(label: str, results: Path = RESULTS) -> Path:
    """Create and return results/<UTC timestamp>-<label>/ (label made filename-safe)."""
    safe = _LABEL.sub("-", label).strip("-") or "run"
    path = results / f"{utc_stamp()}-{safe}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def read_record(run_dir: Path | str) -> RunRecord:
    """The run.json of ``run_dir`` as a RunRecord (FileNotFoundError when it has none;
    pydantic's ValidationError, a ValueError, when a field has the wrong type)."""
    return RunRecord.model_validate_json((Path(run_dir) / RUN_JSON).read_text())


def write_record(run_dir: Path | str, record: RunRecord) -> Path:
    """Write ``record`` as run_dir/run.json, atomically (readers never see half a file)."""
    path = Path(run_dir) / RUN_JSON
    tmp = path.with_name(f".{RUN_JSON}.{os.getpid()}.tmp")
    tmp.write_text(record.model_dump_json(indent=2, exclude_unset=True) + "\n")
    tmp.replace(path)
    return path


def update_record(run_dir: Path | str, **changes: Any) -> RunRecord:
    """Add ``changes`` to run_dir/run.json (created if missing) and return the new record.

    A dict value updates that block key by key (``host={"cpu_model": ...}`` keeps the
    other host facts); None values are written as given (a known unknown).
    """
    try:
        record = read_record(run_dir)
    except FileNotFoundError:
        record = RunRecord()
    record = record.merged(changes)
    write_record(run_dir, record)
    return record
