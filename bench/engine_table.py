"""Results of ``python -m bench engines``: one record per row, read from what each engine
left (a Locust run folder or the OpenVINO driver's JSON), and the table of them.

Formulas, the same for every engine: output tok/s = output tokens of the answers served /
(end of the last answer - start of the first request); TTFT p50 = median time from sending
(adding) a request to its first token, over the answers served; refused = 429/503 answers
(OpenVINO: requests its scheduler ignored or dropped); failed = any other failure. Memory:
HTTP engines, the peak of the server's process tree (our Gunicorn master + workers; the
llama-server process) in the suite's memory.csv; OpenVINO, its driver process.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.document import num, table
from bench.engine_rows import EngineRow

NAN = float("nan")
REFUSED = (429, 503)


@dataclass(frozen=True)
class EngineResult:
    """One row's numbers (NaN where not measured); ``skipped`` says why a row did not run."""

    row: str
    engine: str
    variant: str
    concurrency: int
    served: int = 0
    refused: int = 0
    failed: int = 0
    short_answers: int = 0  # served with fewer tokens than asked (should be 0)
    output_tokens: int = 0
    elapsed_s: float = NAN
    output_tokens_per_s: float = NAN
    ttft_p50_s: float = NAN
    peak_pss_mb: float = NAN
    peak_rss_mb: float = NAN
    in_process: bool = False
    skipped: str = ""


def skipped(row: EngineRow, reason: str) -> EngineResult:
    """The record of a row that did not run, and why."""
    return EngineResult(row.name, row.engine, row.variant, row.concurrency, skipped=reason)


def from_requests(row: EngineRow, requests: pd.DataFrame, memory: pd.DataFrame | None,
                  new_tokens: int) -> EngineResult:
    """A served row from its requests.csv and memory.csv frames (module docstring)."""
    posts = requests[requests["method"] == "POST"]
    ok = posts[posts["success"].astype(bool)]
    refused = int(posts["status_code"].isin(REFUSED).sum())
    tokens = ok["completion_tokens"].fillna(0).astype(int)
    if len(ok):
        ends = ok["timestamp"] + ok["response_time_ms"] / 1000.0
        elapsed = float(ends.max() - posts["timestamp"].min())
    else:
        elapsed = NAN
    total = memory[memory["role"] == "total"] if memory is not None else pd.DataFrame()
    return EngineResult(
        row.name, row.engine, row.variant, row.concurrency, served=len(ok), refused=refused,
        failed=len(posts) - len(ok) - refused, short_answers=int((tokens < new_tokens).sum()),
        output_tokens=int(tokens.sum()), elapsed_s=elapsed,
        output_tokens_per_s=tokens.sum() / elapsed if elapsed > 0 else NAN,
        ttft_p50_s=float(ok["ttft_ms"].median()) / 1000.0 if len(ok) else NAN,
        peak_pss_mb=float(total["pss_mb"].max()) if len(total) else NAN,
        peak_rss_mb=float(total["rss_mb"].max()) if len(total) else NAN)


def from_run_folder(row: EngineRow, run_dir: Path, new_tokens: int) -> EngineResult:
    """A served row from the Locust run folder it wrote."""
    memory_csv = run_dir / "memory.csv"
    memory = pd.read_csv(memory_csv) if memory_csv.exists() else None
    return from_requests(row, pd.read_csv(run_dir / "requests.csv"), memory, new_tokens)


def from_driver(row: EngineRow, result: dict[str, Any]) -> EngineResult:
    """An in-process row from bench/openvino_driver.py's JSON result."""
    ttft = result.get("ttft_p50_s")
    return EngineResult(
        row.name, row.engine, row.variant, row.concurrency,
        served=int(result["requests_served"]), refused=int(result["requests_refused"]),
        short_answers=int(result.get("short_answers", 0)),
        output_tokens=int(result["output_tokens"]), elapsed_s=float(result["elapsed_s"]),
        output_tokens_per_s=float(result["output_tokens_per_s"]),
        ttft_p50_s=NAN if ttft is None else float(ttft),
        peak_pss_mb=float(result.get("peak_pss_mb") or NAN),
        peak_rss_mb=float(result.get("peak_rss_mb") or NAN), in_process=True)


HEADERS = ["engine", "variant", "c", "output tok/s", "TTFT p50 s", "served", "refused",
           "failed", "peak PSS MB", "peak RSS MB", "note"]


def _note(r: EngineResult, reasons: list[str]) -> str:
    if r.skipped:
        if r.skipped not in reasons:
            reasons.append(r.skipped)
        return f"skipped [{reasons.index(r.skipped) + 1}]"
    notes = ["in-process, no HTTP"] if r.in_process else []
    if r.short_answers:
        notes.append(f"{r.short_answers} short answers")
    return "; ".join(notes)


def render(results: Sequence[EngineResult]) -> str:
    """The Markdown table, one line per row; a skipped row points to its reason, listed
    once below the table with the command that builds what it lacks."""
    lines, reasons = [], []
    for r in results:
        if r.skipped:
            lines.append((r.engine, r.variant, r.concurrency, *["—"] * 7, _note(r, reasons)))
            continue
        lines.append((r.engine, r.variant, r.concurrency, num(r.output_tokens_per_s, 1),
                      num(r.ttft_p50_s, 2), r.served, r.refused, r.failed,
                      num(r.peak_pss_mb, 0), num(r.peak_rss_mb, 0), _note(r, reasons)))
    footnotes = [f"[{i}] {reason}" for i, reason in enumerate(reasons, 1)]
    return "\n\n".join([table(HEADERS, lines, left_columns=2), *footnotes])


def to_json(results: Sequence[EngineResult]) -> list[dict[str, Any]]:
    """The rows as JSON-ready dicts (NaN as null)."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v)
             for k, v in asdict(r).items()} for r in results]


def read_json(text: str) -> list[EngineResult]:
    """Rows back from ``to_json``'s output (null as NaN)."""
    return [EngineResult(**{k: (NAN if v is None else v) for k, v in d.items()})
            for d in json.loads(text)]
