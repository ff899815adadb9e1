"""Load a whole run folder into one object, noting each file that is missing or unreadable."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import readers
from analysis.loadgen import load_loadgen
from harness.run_record import RunRecord

# What each file adds to the analysis, for the note written when it is missing.
FILE_ROLES = {
    "run.json": "run settings",
    "locust_stats.csv": "Locust's own summary (fallback per-route percentiles)",
    "locust_stats_history.csv": "percentiles and user count over time, sweep steps",
    "locust_failures.csv": "Locust's failure table",
    "locust_exceptions.csv": "exceptions raised in user code",
    "requests.csv": "per-request latency, failures by cause, tokens/s, queue vs inference",
    "memory.csv": "server memory over time (PSS/RSS/USS, sharing, slope)",
    "server_requests.jsonl": "RAM per request (rss delta and peak)",
}


@dataclass
class RunData:
    """Everything read from one run folder; a missing file leaves an empty frame and a note."""

    path: Path
    settings: dict[str, Any]  # run.json as a dict (record.as_dict()): what analysis reads
    start_ts: float | None
    stats: pd.DataFrame
    history: pd.DataFrame
    failures: pd.DataFrame
    exceptions: pd.DataFrame
    requests: pd.DataFrame
    memory: pd.DataFrame
    server_log: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    loadgen: pd.DataFrame = field(default_factory=pd.DataFrame)  # loadgen.csv
    record: RunRecord = field(default_factory=RunRecord)  # run.json, typed

    @property
    def label(self) -> str:
        """The run's label from run.json, else the folder name."""
        return str(self.settings.get("label") or self.path.name)


def parse_iso_ts(value: Any) -> float | None:
    """Epoch seconds of an ISO-8601 time ("2026-01-01T00:00:00Z"), or None."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def _read(path: Path, reader: Callable[..., Any], notes: list[str], *args: Any) -> Any:
    """Call ``reader`` on ``path``; on a missing or unreadable file note why and return None."""
    role = FILE_ROLES[path.name]
    path = readers.stored(path)
    if not path.is_file():
        notes.append(f"`{path.name}` is missing: no {role}.")
        return None
    try:
        return reader(path, *args)
    except (ValueError, KeyError, pd.errors.EmptyDataError, pd.errors.ParserError) as error:
        notes.append(f"`{path.name}` could not be read ({type(error).__name__}): no {role}.")
        return None


def _first_ts(*frames_and_columns: tuple[pd.DataFrame | None, str]) -> float | None:
    """Earliest time stamp across the given frames (used when run.json has no started_at)."""
    firsts = [f[c].min() for f, c in frames_and_columns if f is not None and len(f)]
    return float(min(firsts)) if firsts else None


def load_run(path: Path | str) -> RunData:
    """Read every file of run folder ``path``; missing optional files become notes."""
    path = Path(path)
    notes: list[str] = []
    record = _read(path / "run.json", readers.read_run_json, notes) or RunRecord()
    settings = record.as_dict()
    start_ts = parse_iso_ts(settings.get("started_at"))
    if start_ts is None:
        # Without a start time, time zero is the earliest event any file saw.
        raw = {
            name: _read(path / name, reader, [])
            for name, reader in [
                ("requests.csv", readers.read_requests),
                ("memory.csv", readers.read_memory),
                ("locust_stats_history.csv", readers.read_locust_history),
            ]
        }
        start_ts = _first_ts(
            (raw["requests.csv"], "timestamp"),
            (raw["memory.csv"], "timestamp"),
            (raw["locust_stats_history.csv"], "timestamp"),
        )

    def frame(name: str, reader: Callable[..., pd.DataFrame], *args: Any) -> pd.DataFrame:
        result = _read(path / name, reader, notes, *args)
        return pd.DataFrame() if result is None else result

    return RunData(
        path=path,
        settings=settings,
        start_ts=start_ts,
        stats=frame("locust_stats.csv", readers.read_locust_stats),
        history=frame("locust_stats_history.csv", readers.read_locust_history, start_ts),
        failures=frame("locust_failures.csv", readers.read_locust_failures),
        exceptions=frame("locust_exceptions.csv", readers.read_locust_exceptions),
        requests=frame("requests.csv", readers.read_requests, start_ts),
        memory=frame("memory.csv", readers.read_memory, start_ts),
        server_log=frame("server_requests.jsonl", readers.read_server_log, start_ts),
        notes=notes,
        loadgen=load_loadgen(path, start_ts),
        record=record,
    )
