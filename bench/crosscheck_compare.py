"""Both sides of ``python -m bench crosscheck`` summed up alike, and their comparison.

Each side arrives as the same per-request frame and its measurement window
(bench/crosscheck_read.py), and one function sums both, so the two numbers compared are
computed the same way:

* **window**: ours, the arrival schedule's start to the moment Locust stopped sending
  (run.json ``arrivals.start_ts`` .. ``stop_ts``); guidellm, its ``scheduler_metrics``
  ``measure_start_time`` .. ``measure_end_time`` (its first request's start + max_duration).
* **completed**: successful requests that ended inside the window. guidellm cancels the
  requests still in flight when its duration ends; ours lets them finish after ``stop_ts``,
  so they are left out here and both sides count the same thing.
* **output tok/s** = output tokens of the completed requests / window length. Tokens are
  the server's ``usage.completion_tokens`` on both sides (requests.csv ``completion_tokens``;
  guidellm's ``output_tokens``, which it takes from ``usage`` when the server sends it, as
  ours does with ``stream_options.include_usage``), not a client tokenizer's count.
* **TTFT p50**: median over the completed requests of request sent -> first streamed text
  (ours: before the POST to the first text event; guidellm: its first header write to the
  first token iteration). Both from the actual send, not the intended one.

Each side also carries the busy-box check over its run: the share of the box's CPU that
went to processes outside the bench command's tree (server, Locust, guidellm) and the share
the hypervisor stole; past the analysis's busy-box thresholds (analysis/config.py
``busy_other_cpu_share``, ``busy_steal_share``) the comparison says the box was busy.

guidellm's own headline numbers (``metrics.output_tokens_per_second`` mean and
``metrics.time_to_first_token_ms`` median) are kept beside ours as a check of the recompute.
Its tok/s is the same formula (its rate distribution's mean is tokens in the window / the
window); its median is the lower middle value, where pandas interpolates between the two,
so with an even count its TTFT p50 can sit a little below the one computed here.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from analysis.config import load_config
from analysis.document import num, table

NAN = float("nan")


@dataclass(frozen=True)
class Side:
    """One tool's run summed up the same way as the other's (module docstring)."""

    tool: str
    window_s: float
    sent: int  # requests started inside the window
    completed: int  # successful and ended inside the window
    failed: int  # started inside the window and failed (errored)
    unfinished: int  # in flight at the window's end: guidellm cancels them, ours end later
    output_tokens: int
    output_tokens_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    own_output_tokens_per_s: float = NAN  # the tool's own headline figure, when it has one
    own_ttft_p50_ms: float = NAN
    # The busy-box check over the side's run (locustfiles/box_load.py BoxWindow): the box's
    # CPU used outside the bench command's process tree, and stolen by the hypervisor (0..1).
    other_cpu_share: float = NAN
    steal_share: float = NAN
    client_cpu_s: float = NAN  # the load generator's CPU seconds, start-up included


@dataclass(frozen=True)
class Comparison:
    """Ours against guidellm: ratios ours / guidellm and whether each is within tolerance."""

    tolerance: float
    ttft_p50_ratio: float
    output_tokens_per_s_ratio: float
    ttft_p50_within: bool
    output_tokens_per_s_within: bool

    @property
    def agree(self) -> bool:
        """True when both figures are within the tolerance."""
        return self.ttft_p50_within and self.output_tokens_per_s_within


def summarize(tool: str, frame: pd.DataFrame, window: tuple[float, float],
              **own: float) -> Side:
    """The side's figures over ``window`` (module docstring: what counts, how it is summed)."""
    start, end = window
    sent = frame[(frame["start_ts"] >= start) & (frame["start_ts"] <= end)]
    done = sent[(sent["status"] == "successful") & (sent["end_ts"] <= end)]
    failed = int((sent["status"] == "errored").sum())
    tokens = int(done["output_tokens"].fillna(0).sum())
    ttft = done["ttft_ms"].dropna()
    quantile = (lambda q: float(ttft.quantile(q))) if len(ttft) else (lambda q: NAN)
    per_s = tokens / (end - start) if end > start else NAN
    return Side(tool, round(end - start, 3), len(sent), len(done), failed,
                len(sent) - len(done) - failed, tokens, per_s, quantile(0.5), quantile(0.95),
                **own)


def ratio(ours: float, theirs: float) -> float:
    """ours / theirs (NaN when either is missing or theirs is 0)."""
    return ours / theirs if theirs and not (math.isnan(ours) or math.isnan(theirs)) else NAN


def compare(ours: Side, theirs: Side, tolerance: float = 0.10) -> Comparison:
    """Ratios ours / guidellm of TTFT p50 and output tok/s, each within ``tolerance``?"""
    ttft = ratio(ours.ttft_p50_ms, theirs.ttft_p50_ms)
    tps = ratio(ours.output_tokens_per_s, theirs.output_tokens_per_s)
    within = lambda r: not math.isnan(r) and abs(r - 1.0) <= tolerance  # noqa: E731
    return Comparison(tolerance, ttft, tps, within(ttft), within(tps))


def to_json(settings: dict[str, Any], ours: Side, theirs: Side, result: Comparison) -> str:
    """comparison.json: the settings, both sides, the ratios and the verdict."""
    return json.dumps({"settings": settings, "ours": asdict(ours), "guidellm": asdict(theirs),
                       "comparison": {**asdict(result), "agree": result.agree}},
                      indent=2, default=str) + "\n"


def render(ours: Side, theirs: Side, result: Comparison) -> str:
    """The Markdown table of both sides and the ratios ours / guidellm."""
    sides = (ours, theirs)
    rows = [[s.tool, num(s.window_s), s.sent, s.completed, s.failed, s.unfinished,
             s.output_tokens,
             num(s.output_tokens_per_s, 2), num(s.ttft_p50_ms), num(s.ttft_p95_ms),
             num(s.own_output_tokens_per_s, 2), num(s.own_ttft_p50_ms), num(s.client_cpu_s)]
            for s in sides]
    rows.append(["ours / guidellm", *[""] * 6, num(result.output_tokens_per_s_ratio, 3),
                 num(result.ttft_p50_ratio, 3), "", "", "", ""])
    headers = ["tool", "window (s)", "sent", "completed", "failed", "unfinished",
               "output tokens",
               "output tok/s", "TTFT p50 (ms)", "TTFT p95 (ms)", "tool's own tok/s",
               "tool's own TTFT p50 (ms)", "client CPU (s)"]
    tps, ttft, agree = (num(ok) for ok in (result.output_tokens_per_s_within,
                                           result.ttft_p50_within, result.agree))
    return "\n".join([
        table(headers, rows), "",
        f"Within {result.tolerance:.0%}: output tok/s {tps}, TTFT p50 {ttft}; "
        f"agree: **{agree}**.", "", busy_note(sides), ""])


def busy_note(sides: tuple[Side, ...]) -> str:
    """One line per side on how busy the box was, with a warning past the analysis's
    busy-box thresholds (the same rule as a run's report)."""
    limits = load_config()
    lines = []
    for s in sides:
        busy = (s.other_cpu_share > limits.busy_other_cpu_share
                or s.steal_share > limits.busy_steal_share)
        lines.append(f"- {s.tool}: other processes used {pct(s.other_cpu_share)} of the box's "
                     f"CPU, the hypervisor stole {pct(s.steal_share)}"
                     + (" -- **busy box: measure again on a quiet one**" if busy else ""))
    return "\n".join(lines)


def pct(share: float) -> str:
    """A share as a percentage; "not measured" for NaN."""
    return "not measured" if math.isnan(share) else f"{share:.0%}"
