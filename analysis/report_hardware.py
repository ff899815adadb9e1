"""The report's "Hardware and kernel path" section: the server's startup kernel table.

Pure: Findings in, a Section out.
"""

from __future__ import annotations

from analysis.document import Paragraph, Section, Table
from analysis.hardware import header_line
from analysis.records import Findings

TITLE = "Hardware and kernel path"


def hardware_section(f: Findings) -> Section:
    """The precision served and, when the server reported one, its measured kernel table."""
    hw = f.hardware
    if hw is None or not hw.kernels:
        return Section(TITLE, [Paragraph(
            f"{header_line(hw)} The server reported no kernel table (`/ready` has no "
            "`kernels`): the precision was not chosen by measurement, or the server predates "
            "it.")])
    rows = [(k.precision, k.batch_1_ms, k.batch_max_ms, k.max_batch,
             "yes" if k.precision == hw.chosen else "")
            for k in hw.kernels]
    headers = ["Precision", "Step ms, batch 1", "Step ms, largest batch", "Largest batch",
               "Chosen"]
    return Section(TITLE, [
        Paragraph(f"Precision and kernel path served: **{hw.chosen or hw.served or 'n/a'}**. "
                  "Decode-step time per candidate, measured by the server at startup on one "
                  "thread (lower is better):"),
        Table(headers, rows)])
