"""Chart of streamed answers: ``plot_ttft_tpot(ax, df) -> None``, in the style of charts_traffic."""

from __future__ import annotations

import pandas as pd
from matplotlib.axes import Axes

from analysis.chart_style import no_data
from analysis.streaming import streamed, tpot_ms


def plot_ttft_tpot(
    ax: Axes,
    requests: pd.DataFrame,
    ttft_target_ms: float | None = None,
    tpot_target_ms: float | None = None,
) -> None:
    """TTFT against TPOT of each successful streamed request, per route, with the targets.

    Points below and left of both target lines met the TTFT and TPOT targets; a target of
    0 or None is not drawn.
    """
    title = "TTFT vs TPOT per streamed request (lower is better)"
    rows = streamed(requests)
    ok = rows[rows["success"]].assign(tpot=tpot_ms) if not rows.empty else rows
    ok = ok.dropna(subset=["ttft_ms", "tpot"]) if not ok.empty else ok
    if ok.empty:
        no_data(ax, title, "no streamed requests with TTFT and TPOT")
        return
    for route, group in ok.groupby("route", sort=True):
        ax.scatter(group["ttft_ms"], group["tpot"], s=10, alpha=0.5, label=str(route))
    off_scale = []
    # A target far above the data would squash the points into a corner: name it instead.
    if ttft_target_ms and ttft_target_ms <= 3 * ok["ttft_ms"].max():
        ax.axvline(ttft_target_ms, color="red", linestyle="--", label="TTFT target")
    elif ttft_target_ms:
        off_scale.append(f"TTFT target {ttft_target_ms:,.0f} ms")
    if tpot_target_ms and tpot_target_ms <= 3 * ok["tpot"].max():
        ax.axhline(tpot_target_ms, color="red", linestyle=":", label="TPOT target")
    elif tpot_target_ms:
        off_scale.append(f"TPOT target {tpot_target_ms:,.0f} ms")
    if off_scale:
        ax.text(0.99, 0.02, " and ".join(off_scale) + " off the scale", ha="right",
                va="bottom", transform=ax.transAxes, color="red", fontsize="small")  # fmt: skip
    ax.set(
        title=title,
        xlabel="time to first token, TTFT (ms)",
        ylabel="time per output token, TPOT (ms)",
    )
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize="small")
