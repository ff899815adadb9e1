"""Which of GPT Load Lab's response headers a run's answers carried.

This server adds X-Worker-RSS-MB / -USS-MB / -PSS-MB to every answer; another
OpenAI-compatible server (a ``--target openai`` run against vLLM, TGI, llama.cpp ...) sends
none, so requests.csv has those columns empty. The report says so instead of showing blanks.
"""

from __future__ import annotations

import pandas as pd

MEMORY_HEADER_COLUMNS = ("worker_rss_mb", "worker_uss_mb", "worker_pss_mb")


def memory_headers_absent(requests: pd.DataFrame) -> bool:
    """True when requests got answers (status > 0) and none carried a memory header."""
    if requests.empty:
        return False
    answered = requests[requests["status_code"] > 0]
    return len(answered) > 0 and bool(answered[list(MEMORY_HEADER_COLUMNS)].isna().all().all())


def memory_headers_note(settings: dict) -> str:
    """The report's note for a run whose answers carried no memory headers."""
    target = settings.get("target")
    why = (
        f"the target (`{target}`) sends no memory headers"
        if target and target != "lab"
        else "the target sends no memory headers (a `--target openai` run against a server "
        "other than GPT Load Lab)"
    )
    return (
        "The memory columns of `requests.csv` (worker_rss_mb, worker_uss_mb, worker_pss_mb) "
        f"are absent: {why}, so per-request worker memory is not measured."
    )
