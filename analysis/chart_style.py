"""What every chart shares: the "no data" panel, the SLO line, the legend under the plot."""

from __future__ import annotations

from matplotlib.axes import Axes


def no_data(ax: Axes, title: str, why: str = "no data") -> None:
    """Mark ``ax`` as deliberately empty, so a blank chart is never mistaken for a zero."""
    ax.set_title(title)
    ax.text(
        0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, fontsize=14, color="grey"
    )
    ax.set_xticks([])
    ax.set_yticks([])


# Charts with a second y axis put the legend under the plot, where it hides no line.
LEGEND_BELOW = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.12), "ncols": 6}


def slo_line(ax: Axes, slo_ms: float | None, data_max: float) -> None:
    """Draw the p95 target, unless it is so far above the data that it would flatten it."""
    if slo_ms is None:
        return
    if slo_ms <= 3 * data_max:
        ax.axhline(slo_ms, color="red", linestyle="--", label="p95 SLO")
    else:
        ax.text(
            0.99,
            0.02,
            f"p95 SLO {slo_ms:,.0f} ms is off the scale",
            ha="right",
            va="bottom",
            transform=ax.transAxes,
            color="red",
            fontsize="small",
        )
