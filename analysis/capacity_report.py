"""The capacity search in the report: its section and its finding rule.

Pure: Findings in, a Section or a Recommendation out (analysis.capacity reads run.json).
"""

from __future__ import annotations

from analysis.capacity import CapacityResult
from analysis.document import Paragraph, Section, Table, num, pct
from analysis.records import INFO, WARNING, Findings, Recommendation

TITLE = "Capacity search"
# Each limit in words, and what to do when it is the one that binds.
LIMIT_TEXT = {
    "latency": ("p95 latency", "cut the time per token (bf16/int8, a smaller model) or scale "
                "out: more users only queue"),
    "ttft": ("TTFT p95 of streamed users", "shorten the queue before the first token "
             "(chunked prefill, a smaller batch) or scale out"),
    "tpot": ("TPOT p95 of streamed users", "a smaller batch speeds up each token; more "
             "cores or workers add capacity"),
    "ram": ("the RAM budget", "RAM binds before latency: fewer workers, bf16/int8 weights or "
            "a lower KV_CACHE_MB buy room; or raise the budget if the host has it"),
    "refusals": ("the refusal ceiling (429/503)", "the server's admission refuses before "
                 "latency breaks: its queue and rate limits set the capacity, not the CPU"),
    "errors": ("the error ceiling", "requests failed for other reasons: see failures by cause"),
    "max level": ("no limit (the search's highest level passed)", "raise --search-max to "
                  "find the real capacity"),
}


def _limits(r: CapacityResult) -> str:
    lim = r.limits
    parts = [f"p95 <= {num(lim.get('p95_ms'), 0)} ms" if lim.get("p95_ms") else None,
             f"TTFT p95 <= {num(lim.get('ttft_ms'), 0)} ms" if lim.get("ttft_ms") else None,
             f"TPOT p95 <= {num(lim.get('tpot_ms'), 0)} ms" if lim.get("tpot_ms") else None,
             f"total PSS <= {num(lim.get('ram_mb'), 0)} MB" if lim.get("ram_mb") else None,
             f"available memory >= {num(lim.get('ram_headroom_mb'), 0)} MB"
             if lim.get("ram_headroom_mb") else None,
             f"refused <= {pct(lim.get('max_refusals'))}" if "max_refusals" in lim else None,
             f"other failures <= {pct(lim.get('max_errors'))}" if "max_errors" in lim else None]
    return ", ".join(p for p in parts if p) or "not recorded"


def headline(r: CapacityResult) -> str:
    """One sentence: the capacity, its limit, and its bracket."""
    what = LIMIT_TEXT.get(r.limit or "", (r.limit or "unknown", ""))[0]
    if r.level is None:
        return (f"No capacity: even the lowest level probed ({num(r.lowest_fail, 0)} "
                f"{r.unit}) broke {what}.")
    if r.lowest_fail is None:
        return (f"Every level probed met every limit, up to **{num(r.level, 0)} {r.unit}**: "
                "the capacity is at least that.")
    upper = f"{num(r.lowest_fail, 0)} {r.unit} failed"
    return (f"The highest load that met every limit: **{num(r.level, 0)} {r.unit}**, limited "
            f"by **{what}** ({upper}).")


def capacity_section(f: Findings) -> Section | None:
    """The search's result, its confidence and every probe; None for a run without one."""
    r = f.capacity
    if r is None:
        return None
    noise = "not measured" if r.p95_noise is None else pct(r.p95_noise)
    confidence = (
        f"Bracket {num(r.highest_pass, 0)} .. {num(r.lowest_fail, 0)} {r.unit} (width "
        f"{num(r.bracket_width, 0)}); {r.probes_passed} probe(s) passed, {r.probes_failed} "
        f"failed; p95 noise at the capacity level {noise} between the window's halves; "
        f"stopped: {r.stopped_by}. Confidence: **{r.confidence}**.")
    rows = [(num(p.level, 0), "pass" if p.passed else "FAIL: " + ", ".join(p.failed_limits),
             p.requests, p.p95_ms, pct(p.p95_noise), pct(p.refusal_share, 2),
             pct(p.error_share, 2), p.peak_pss_mb, p.min_available_mb)
            for p in r.probes.itertuples()]
    headers = [f"Level ({r.unit})", "Verdict", "Requests", "p95 ms", "p95 noise",
               "Refused", "Other failures", "Peak total PSS MB", "Min available MB"]
    return Section(TITLE, [Paragraph(headline(r)), Paragraph(confidence),
                           Paragraph(f"Limits of each probe: {_limits(r)}."),
                           Table(headers, rows)])


def capacity_limit(f: Findings) -> Recommendation | None:
    """A capacity search ran -> its capacity, the limit that bound it and what moves it."""
    r = f.capacity
    if r is None:
        return None
    advice = LIMIT_TEXT.get(r.limit or "", ("", ""))[1]
    serious = r.level is None or r.limit == "ram" or r.confidence == "low"
    sure = f" Confidence {r.confidence} ({r.stopped_by})."
    return Recommendation("capacity_limit", WARNING if serious else INFO,
                          headline(r).replace("**", "") + (f" To move it: {advice}." if advice
                                                           else "") + sure)


RULES = [capacity_limit]
