"""Charts comparing runs: one headline metric per chart, one bar per run."""

from __future__ import annotations

import pandas as pd
from matplotlib.axes import Axes

from analysis.chart_style import no_data
from analysis.compare import HEADLINES

# Headline metrics drawn by ``python -m analysis compare``: (file stem, HEADLINES name).
COMPARE_CHARTS = [
    ("compare_throughput", "Throughput"),
    ("compare_tokens_per_s", "Output tokens/s"),
    ("compare_p95", "p95 latency"),
    ("compare_peak_pss", "Peak total PSS"),
]


def plot_headline(ax: Axes, headlines: pd.DataFrame, metric: str) -> None:
    """Bars of ``metric`` (a column of compare.headline_frame) for each run, values on top."""
    unit, better = next((u, b) for name, u, b, _ in HEADLINES if name == metric)
    title = f"{metric} per run" + (f" ({better} is better)" if better else "")
    values = headlines[metric].dropna() if metric in headlines else pd.Series(dtype=float)
    if values.empty:
        no_data(ax, title)
        return
    bars = ax.bar(values.index.astype(str), values.to_numpy())
    ax.bar_label(bars, fmt="{:,.1f}")
    ax.set(
        title=title,
        xlabel="run",
        ylabel=f"{metric} ({unit})" if unit and unit not in metric else metric,
    )
