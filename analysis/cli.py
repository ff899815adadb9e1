"""Command line: ``python -m analysis RUN [--gate]`` and ``python -m analysis compare RUN RUN
... [--gate]``: read, compute, then write the charts and reports (the only module here that
makes, saves and closes figures). The gates themselves live in analysis.gate."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analysis import charts, charts_memory
from analysis.compare import headline_frame, render_comparison
from analysis.config import SLO_KEYS, AnalysisConfig, load_config
from analysis.document import render_html, to_markdown
from analysis.findings import build_findings
from analysis.gate import read_slo_file, regression_gate, slo_gate
from analysis.records import Findings
from analysis.report import report_document
from analysis.run import RunData, load_run

USAGE = """\
python -m analysis RUN_DIR [--gate] [--slo-file FILE] [--slo-p95-ms MS] [--slo-error-rate R]
                   [--slo-count-refusals true|false] [--slo-ttft-ms MS] [--slo-tpot-ms MS]
                   [--slo-e2e-ms MS] [--slo-attainment R] [--slo-memory-slope-mb-per-min S]
                   [--junit FILE] [--summary FILE] [--no-html] [--no-charts]
python -m analysis compare RUN_DIR RUN_DIR [RUN_DIR ...] [--out DIR]
python -m analysis compare BASELINE RUN --gate [--band METRIC=FRACTION ...] [--slo-file FILE]"""


def _add_slo_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slo-file", default=os.environ.get("ANALYSIS_SLO_FILE", ""),
                        help="TOML file with [slo] targets and [regression] bands "
                             "(default: $ANALYSIS_SLO_FILE; see analysis/gate.py)")
    parser.add_argument("--slo-p95-ms", type=float, help="p95 latency target (ms)")
    parser.add_argument("--slo-error-rate", type=float, help="error-rate target (0..1)")
    parser.add_argument("--slo-count-refusals", choices=["true", "false"],
                        help="whether 429/503 refusals count as errors (default true)")
    parser.add_argument("--slo-ttft-ms", type=float, help="goodput: TTFT target (ms; 0 = off)")
    parser.add_argument("--slo-tpot-ms", type=float, help="goodput: TPOT target (ms; 0 = off)")
    parser.add_argument("--slo-e2e-ms", type=float, help="goodput: E2E target (ms; 0 = off)")
    parser.add_argument(
        "--slo-attainment", type=float, help="share of streamed requests that must be good"
    )
    parser.add_argument("--slo-memory-slope-mb-per-min", type=float,
                        help="total-PSS slope target after warm-up (MB/min; 0 = off)")
    parser.add_argument("--junit", type=Path, help="with --gate: JUnit XML file to write")
    parser.add_argument("--summary", type=Path, help="with --gate: Markdown summary to write")


def _config(args: argparse.Namespace, settings: dict) -> AnalysisConfig:
    """Defaults, ANALYSIS_* environment, run.json's slo, the SLO file, then the command line."""
    from_file = {f"slo_{k}": v for k, v in read_slo_file(args.slo_file).slo.items()}
    flags = {f"slo_{key}": getattr(args, f"slo_{key}") for key in SLO_KEYS}
    return load_config().for_run(settings).with_overrides(from_file).with_overrides(flags)


def _run_dir(value: str) -> Path:
    path = Path(value)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is not a run folder (results/<stamp>-<label>)")
    return path


# The figures: one per chart, made, saved and closed here (the I/O side of analysis.charts).

Draw = Callable[[Axes, RunData, Findings], None]


def _draw(plot: Callable[..., None], frame: str, *settings: str) -> Draw:
    """Draw the run's ``frame`` (a RunData field) with ``plot``, passing the named config
    values after it: ``plot(ax, run.<frame>, findings.config.<setting>, ...)``."""
    return lambda ax, run, findings: plot(
        ax, getattr(run, frame), *(getattr(findings.config, s) for s in settings))


# file stem, caption, how to draw it from the run and its findings.
CHARTS: list[tuple[str, str, Draw]] = [
    ("latency_over_time", "Response time percentiles over time, with users",
     _draw(charts.plot_latency_over_time, "history", "slo_p95_ms")),
    ("throughput", "Requests/s and failures/s", _draw(charts.plot_throughput, "history")),
    ("route_latency", "Latency distribution per route",
     _draw(charts.plot_route_latency, "requests")),
    ("tokens_per_s", "Output tokens/s over time",
     _draw(charts.plot_tokens_per_s, "requests", "bin_s")),
    ("memory_over_time", "Server memory: total PSS vs summed RSS, per worker",
     _draw(charts_memory.plot_memory_over_time, "memory")),
    ("ram_per_request", "RAM per request", _draw(charts_memory.plot_ram_per_request, "server_log")),
    ("ram_vs_context", "RAM per request vs context length",
     _draw(charts_memory.plot_ram_vs_context, "server_log")),
    ("latency_vs_batch_size", "Latency vs batch size",
     _draw(charts.plot_latency_vs_batch_size, "requests")),
    ("queue_vs_inference", "Queue time vs inference time",
     _draw(charts.plot_queue_vs_inference, "requests")),
    ("ttft_tpot", "Streamed requests: TTFT vs TPOT, with the targets",
     _draw(charts.plot_ttft_tpot, "requests", "slo_ttft_ms", "slo_tpot_ms")),
]  # fmt: skip
SWEEP_CHART: tuple[str, str, Draw] = (
    "sweep", "Step sweep: throughput and p95 vs users, knee marked",
    lambda ax, r, f: (charts_memory.plot_sweep(ax, f.sweep.steps, f.config.slo_p95_ms)
                      if f.sweep else None),
)  # fmt: skip


def save_chart(draw: Callable[[Axes], None], path: Path) -> Path:
    """Draw on a fresh 10x5 inch figure and save it as PNG at ``path``."""
    # A bare Figure (no pyplot): no global state, no GUI backend, nothing left open.
    fig = Figure(figsize=(10, 5), layout="constrained")
    draw(fig.add_subplot())
    fig.savefig(path, dpi=100)
    return path


def write_charts(run: RunData, findings: Findings, out_dir: Path) -> list[tuple[str, Path]]:
    """Write every chart of ``run`` into ``out_dir``; the sweep chart only for a sweep."""
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = [*CHARTS, SWEEP_CHART] if findings.sweep is not None else CHARTS
    return [
        (caption, save_chart(lambda ax, d=draw: d(ax, run, findings), out_dir / f"{stem}.png"))
        for stem, caption, draw in chosen
    ]


def analyze(path: Path, args: argparse.Namespace) -> Findings:
    """Write charts/*.png (unless --no-charts), report.md and (unless --no-html) report.html
    into run ``path``."""
    run = load_run(path)
    findings = build_findings(run, _config(args, run.settings))
    pngs = [] if args.no_charts else write_charts(run, findings, path / "charts")
    links = [(caption, f"charts/{png.name}") for caption, png in pngs]
    document = report_document(findings, links)
    (path / "report.md").write_text(to_markdown(document))
    drawn = "no charts (--no-charts)" if args.no_charts else \
        f"{len(pngs)} charts in {path / 'charts'}"
    print(f"wrote {path / 'report.md'} and {drawn}")
    if not args.no_html:
        images = {link: png.read_bytes() for (_, link), (_, png) in zip(links, pngs, strict=True)}
        (path / "report.html").write_text(render_html(document, images))
        print(f"wrote {path / 'report.html'}")
    return findings


def compare(paths: Sequence[Path], out: Path | None, args: argparse.Namespace
            ) -> tuple[Path, list[Findings]]:
    """Write comparison.md and its charts for ``paths`` into ``out`` (default: by the first run)."""
    runs = []
    for path in paths:
        run = load_run(path)
        runs.append(build_findings(run, _config(args, run.settings)))
    if out is None:
        name = "-vs-".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", f.label) for f in runs)[:120]
        out = paths[0].resolve().parent / f"compare-{name}"
    out.mkdir(parents=True, exist_ok=True)
    headlines = headline_frame(runs)
    pngs = []
    for stem, metric in charts.COMPARE_CHARTS:
        png = save_chart(lambda ax, m=metric: charts.plot_headline(ax, headlines, m),
                         out / f"{stem}.png")
        pngs.append((f"{metric} per run", png.name))
    target = out / "comparison.md"
    target.write_text(render_comparison(runs, pngs))
    print(f"wrote {target} and {len(pngs)} charts")
    return out, runs


def _band(value: str) -> tuple[str, float]:
    key, sep, fraction = value.partition("=")
    try:
        return key.strip(), float(fraction) if sep else float("nan")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: use METRIC=FRACTION, e.g. "
                                         "p95_latency=0.5") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the analysis or the comparison; return the exit status
    (with --gate: 1 when a gate failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        parser = argparse.ArgumentParser(prog="python -m analysis compare", usage=USAGE)
        parser.add_argument("runs", nargs="+", type=_run_dir, help="run folders; first = baseline")
        parser.add_argument("--out", type=Path, help="folder for comparison.md")
        parser.add_argument("--gate", action="store_true",
                            help="regression gate: exit 1 when a metric of the second run "
                                 "moved the wrong way beyond its noise band")
        parser.add_argument("--band", type=_band, action="append", default=[],
                            metavar="METRIC=FRACTION",
                            help="relative noise band of a gated metric (repeatable)")
        _add_slo_options(parser)
        args = parser.parse_args(argv[1:])
        if len(args.runs) < 2:
            parser.error("compare needs at least two run folders")
        if args.gate and len(args.runs) != 2:
            parser.error("compare --gate needs exactly two run folders: BASELINE RUN")
        out, runs = compare(args.runs, args.out, args)
        if not args.gate:
            return 0
        bands = {**read_slo_file(args.slo_file).regression, **dict(args.band)}
        return regression_gate(runs[0], runs[1], bands, out, args.junit, args.summary)
    parser = argparse.ArgumentParser(prog="python -m analysis", usage=USAGE)
    parser.add_argument("run", type=_run_dir, help="run folder: results/<stamp>-<label>")
    parser.add_argument(
        "--no-html", action="store_true", help="skip the self-contained report.html"
    )
    parser.add_argument("--no-charts", action="store_true",
                        help="report.md (and report.html) without charts/: a quick look")
    parser.add_argument("--gate", action="store_true",
                        help="SLO gate: print one line per verdict, exit 1 when one failed")
    _add_slo_options(parser)
    args = parser.parse_args(argv)
    findings = analyze(args.run, args)
    if not args.gate:
        return 0
    return slo_gate(findings, args.run, args.junit, args.summary)
