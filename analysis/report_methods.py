"""The report's "How each number is computed" section: formulas, rules and thresholds.

Each formula is written once, in the docstring of the function that computes it (a
paragraph starting "Formula:"); this module quotes those paragraphs rather than restating
them, so the report cannot drift from the code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from analysis import goodput, loadgen, memory, streaming, sweep, traffic
from analysis.document import Bullets, Paragraph, Section, Table
from analysis.records import Findings
from analysis.rules import all_rules

# The metric functions whose docstrings state the formulas the report quotes.
FORMULA_SOURCES: list[tuple[str, Callable[..., object]]] = [
    ("Latency percentiles", traffic.route_latency),
    ("Counts and rates", traffic.traffic),
    ("Queue vs inference", traffic.time_split),
    ("Tokens/s over time", traffic.tokens_over_time),
    ("Memory, sharing saving", memory.memory_summary),
    ("Memory slope", memory.memory_slope),
    ("Memory slope standard error", memory.memory_slope_se),
    ("RAM per request", memory.ram_per_request),
    ("Sweep steps", sweep.step_metrics),
    ("Saturation knee", sweep.find_knee),
    ("TPOT", streaming.tpot_ms),
    ("TTFT / TPOT / E2E percentiles", streaming.stream_latency),
    ("Output tokens/s per user", streaming.tokens_per_s_per_user),
    ("Output tokens/s of streamed requests", streaming.stream_summary),
    ("Goodput and SLO attainment", goodput.goodput),
    ("SLO attainment per sweep step", goodput.attainment_per_step),
    ("Load generator CPU and loop lag", loadgen.loadgen_summary),
]


def formula(func: Callable[..., object]) -> str:
    """The "Formula: ..." paragraph of ``func``'s docstring, on one line."""
    doc = inspect.getdoc(func) or ""
    _, _, rest = doc.partition("Formula:")
    return " ".join(rest.split("\n\n")[0].split())


def method_section(f: Findings) -> Section:
    """Formulas, the rules checked with their conditions, and the thresholds in force."""
    formulas = [f"**{name}**: {formula(func)}" for name, func in FORMULA_SOURCES]
    rules = [f"`{r.__name__}`: {(inspect.getdoc(r) or '').splitlines()[0]}" for r in all_rules()]
    thresholds = Table(
        ["Setting", "Value"], list(f.config.model_dump().items())
    )
    return Section("How each number is computed", [
        Bullets(formulas),
        Paragraph("Rules checked (each one quotes its numbers when it fires):"),
        Bullets(rules),
        Paragraph("Targets and thresholds used (analysis.config; run.json's `slo` and the "
                  "command line override the SLO targets):"),
        thresholds,
    ])  # fmt: skip
