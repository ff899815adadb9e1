"""The bench table: one row per run folder, steady-state numbers and ratios to the first row.

Every number comes from the run folder's requests.csv and memory.csv over the steady-state
window: from ``warmup_s`` after the first request started until ``measure_s`` later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.document import MISSING, table
from analysis.memory import totals
from analysis.readers import read_memory, read_requests, read_run_json
from bench.roofline import Roofline


@dataclass(frozen=True)
class Window:
    """The steady-state window, epoch seconds."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        """Its length."""
        return self.end - self.start


@dataclass(frozen=True, kw_only=True)
class Throughput:
    """What a run served: requests (and failures), tokens and requests per second, latency
    percentiles in seconds; the part every bench table's row shares (keyword-only)."""

    requests: int
    failures: int
    output_tokens_per_s: float
    requests_per_s: float
    p50_s: float
    p95_s: float


@dataclass(frozen=True, kw_only=True)
class BenchRow(Throughput):
    """One configuration's steady-state result."""

    row: str
    dtype: str
    mean_total_pss_mb: float
    mean_total_rss_mb: float
    mean_batch: float
    prompt_tokens: float
    completion_tokens: float
    first_cycle_s: float
    window_s: float


def steady_window(requests: pd.DataFrame, warmup_s: float, measure_s: float) -> Window:
    """[first request start + warmup_s, that + measure_s]."""
    start = float(requests["timestamp"].min()) + warmup_s
    return Window(start, start + measure_s)


def _ends(requests: pd.DataFrame) -> pd.Series:
    return requests["timestamp"] + requests["response_time_ms"] / 1000.0


def window_share(requests: pd.DataFrame, window: Window) -> pd.Series:
    """Fraction of each request's generation that fell inside ``window`` (0..1).

    Formula: generation = [end - inference_ms, end] (the whole request when the server did
    not report inference_ms); share = overlap with the window / generation length, or 1 for
    a zero-length generation that ended inside the window. Counting shares instead of
    completions keeps a batch that finishes just after the window from vanishing.
    """
    end = _ends(requests)
    begin = (end - requests["inference_ms"] / 1000.0).fillna(requests["timestamp"])
    length = end - begin
    overlap = (np.minimum(end, window.end) - np.maximum(begin, window.start)).clip(lower=0)
    inside = ((end >= window.start) & (end <= window.end)).astype(float)
    return (overlap / length.where(length > 0)).fillna(inside)


def first_cycle_s(requests: pd.DataFrame) -> float:
    """Seconds from the first request's start until every user had its first answer.

    Formula: max over users of (end of the user's first request) - first request start; the
    user is the request id without its last "-<n>" (``<class>-<user>-<n>``). Until then the
    closed loop has not reached its steady queue, so latency before it is understated.
    """
    user = requests["request_id"].astype(str).str.rsplit("-", n=1).str[0]
    first_end = _ends(requests).groupby(user).min()
    return float(first_end.max() - requests["timestamp"].min())


def bench_row(run_dir: Path, warmup_s: float, measure_s: float) -> BenchRow:
    """Steady-state numbers of one run folder.

    Formula: output_tokens_per_s = sum of completion_tokens x window_share over successful
    requests / window seconds; requests_per_s = sum of window_share / window seconds;
    p50/p95 = percentiles of response time of successful requests that ended in the window;
    mean_total_pss_mb / rss = mean of memory.csv's total rows in the window; mean_batch =
    harmonic mean of X-Batch-Size over successful requests with window_share > 0 (a batch of
    b requests reports b b times, so the harmonic mean counts each batch once: the rows one
    weight pass serves); prompt and new tokens are means over the same requests.
    """
    settings = read_run_json(run_dir / "run.json").as_dict()
    requests = read_requests(run_dir / "requests.csv")
    window = steady_window(requests, warmup_s, measure_s)
    ok = requests[requests["success"]]
    share = window_share(ok, window)
    end = _ends(requests)
    ended = requests[(end >= window.start) & (end <= window.end)]
    done = ended[ended["success"]]
    memory = totals(read_memory(run_dir / "memory.csv"))
    steady = memory[memory["timestamp"].between(window.start, window.end)]
    latency = done["response_time_ms"] / 1000.0
    active = ok[share > 0]  # generated at least part of its answer inside the window
    batch = active["batch_size"].dropna()
    batch = batch[batch > 0]
    return BenchRow(
        row=settings.get("bench", {}).get("row") or settings.get("label", run_dir.name),
        dtype=str(settings.get("dtype", "")),
        requests=len(done),
        failures=int((~ended["success"]).sum()),
        output_tokens_per_s=float((ok["completion_tokens"].fillna(0) * share).sum())
        / window.seconds,
        requests_per_s=float(share.sum()) / window.seconds,
        p50_s=float(latency.quantile(0.5)) if len(latency) else np.nan,
        p95_s=float(latency.quantile(0.95)) if len(latency) else np.nan,
        mean_total_pss_mb=float(steady["pss_mb"].mean()),
        mean_total_rss_mb=float(steady["rss_mb"].mean()),
        mean_batch=float(len(batch) / (1.0 / batch).sum()) if len(batch) else np.nan,
        prompt_tokens=float(active["prompt_tokens"].mean()),
        completion_tokens=float(active["completion_tokens"].mean()),
        first_cycle_s=first_cycle_s(requests),
        window_s=window.seconds,
    )


def bench_frame(rows: Sequence[BenchRow], roofline: Roofline | None) -> pd.DataFrame:
    """The table: rows as given, plus ratios to the first row and shares of the roofline.

    Formula: x_naive = output_tokens_per_s / the first row's; pss_vs_naive = mean total PSS /
    the first row's; limit = roofline decode limit at the row's mean_batch and dtype;
    of_limit = output_tokens_per_s / limit.
    """
    frame = pd.DataFrame([asdict(r) for r in rows]).set_index("row")
    base = frame.iloc[0]
    frame["x_naive"] = frame["output_tokens_per_s"] / base["output_tokens_per_s"]
    frame["pss_vs_naive"] = frame["mean_total_pss_mb"] / base["mean_total_pss_mb"]
    if roofline is not None:
        frame["limit_tokens_per_s"] = [
            roofline.limit_tokens_per_s(b, d) if d in roofline.matmul_gflop_s and b > 0
            else np.nan for b, d in zip(frame["mean_batch"], frame["dtype"], strict=True)
        ]
        frame["of_limit"] = frame["output_tokens_per_s"] / frame["limit_tokens_per_s"]
    return frame


# column, header, format
COLUMNS = [
    ("output_tokens_per_s", "Output tok/s", "{:.1f}"),
    ("requests_per_s", "Req/s", "{:.3f}"),
    ("p50_s", "p50 s", "{:.1f}"),
    ("p95_s", "p95 s", "{:.1f}"),
    ("mean_total_pss_mb", "Total PSS MB", "{:,.0f}"),
    ("mean_total_rss_mb", "Total RSS MB", "{:,.0f}"),
    ("x_naive", "x naive (tok/s)", "{:.2f}x"),
    ("pss_vs_naive", "PSS / naive", "{:.2f}x"),
    ("mean_batch", "Mean batch", "{:.2f}"),
    ("limit_tokens_per_s", "Limit tok/s", "{:.1f}"),
    ("of_limit", "Of limit", "{:.0%}"),
    ("requests", "Requests", "{:d}"),
    ("failures", "Failures", "{:d}"),
    ("prompt_tokens", "Prompt tok", "{:.0f}"),
    ("completion_tokens", "New tok", "{:.0f}"),
]  # fmt: skip


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return MISSING
    return fmt.format(int(value) if fmt == "{:d}" else value)


def render_table(frame: pd.DataFrame, setups: dict[str, str] | None = None) -> str:
    """The table as Markdown (higher tok/s and req/s are better; lower latency and memory)."""
    columns = [c for c in COLUMNS if c[0] in frame.columns]
    setups = setups or {}
    headers = ["Row", *(["Setup"] if setups else []), *(h for _, h, _ in columns)]
    rows = [
        [str(name), *([setups.get(name, "")] if setups else []),
         *(_cell(row[c], fmt) for c, _, fmt in columns)]
        for name, row in frame.iterrows()
    ]  # fmt: skip
    return table(headers, rows, left_columns=2 if setups else 1) + "\n"


def notes(frame: pd.DataFrame, warmup_s: float) -> list[str]:
    """Caveats the numbers need: short warm-ups, failures, answers of another length."""
    found = []
    for name, row in frame.iterrows():
        if row["first_cycle_s"] > warmup_s:
            found.append(f"{name}: the first closed-loop cycle took {row['first_cycle_s']:.0f} s,"
                         f" more than the {warmup_s:g} s warm-up: its latency is understated.")
        if row["failures"]:
            found.append(f"{name}: {int(row['failures'])} failed requests in the window "
                         "(see its report.md).")
        if row["requests"] == 0:
            found.append(f"{name}: no request finished inside the window; lengthen it.")
    return found
