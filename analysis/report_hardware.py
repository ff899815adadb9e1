"""The report's "Hardware and kernel path" section: the server's startup kernel table. Pure."""

from __future__ import annotations

from analysis.findings import Findings
from analysis.formatting import table
from analysis.hardware import header_line

TITLE = "## Hardware and kernel path"


def hardware_section(f: Findings) -> str:
    """The host line and, when the server reported one, its measured kernel table."""
    hw = f.hardware
    if hw is None or not hw.kernels:
        return (f"{TITLE}\n\n{header_line(hw)} The server reported no kernel table (`/ready` "
                "has no `kernels`): the precision was not chosen by measurement, or the server "
                "predates it.")
    text = f"{TITLE}\n\nPrecision and kernel path served: **{hw.chosen or hw.served or 'n/a'}**."
    rows = [(k.precision, k.batch_1_ms, k.batch_max_ms, k.max_batch,
             "yes" if k.precision == hw.chosen else "")
            for k in hw.kernels]
    headers = ["Precision", "Step ms, batch 1", "Step ms, largest batch", "Largest batch",
               "Chosen"]
    return (text + "\n\nDecode-step time per candidate precision, measured by the server at "
            "startup (lower is better):\n\n" + table(headers, rows))
