"""Command line: ``python -m analysis RUN`` and ``python -m analysis compare RUN RUN ...``."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from analysis.charts_compare import COMPARE_CHARTS, plot_headline
from analysis.compare import headline_frame, render_comparison
from analysis.config import SLO_KEYS, AnalysisConfig, load_config
from analysis.document import to_markdown
from analysis.figures import save_chart, write_charts
from analysis.findings import build_findings
from analysis.records import Findings
from analysis.report import report_document
from analysis.report_html import render_html
from analysis.run import load_run

USAGE = """\
python -m analysis RUN_DIR [--slo-p95-ms MS] [--slo-error-rate R] [--slo-ttft-ms MS]
                   [--slo-tpot-ms MS] [--slo-e2e-ms MS] [--slo-attainment R] [--no-html]
python -m analysis compare RUN_DIR RUN_DIR [RUN_DIR ...] [--out DIR]"""


def _add_slo_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slo-p95-ms", type=float, help="p95 latency target (ms)")
    parser.add_argument("--slo-error-rate", type=float, help="error-rate target (0..1)")
    parser.add_argument("--slo-ttft-ms", type=float, help="goodput: TTFT target (ms; 0 = off)")
    parser.add_argument("--slo-tpot-ms", type=float, help="goodput: TPOT target (ms; 0 = off)")
    parser.add_argument("--slo-e2e-ms", type=float, help="goodput: E2E target (ms; 0 = off)")
    parser.add_argument(
        "--slo-attainment", type=float, help="share of streamed requests that must be good"
    )


def _config(args: argparse.Namespace, settings: dict) -> AnalysisConfig:
    """Defaults, then ANALYSIS_* environment, then run.json's slo, then the command line."""
    flags = {f"slo_{key}": getattr(args, f"slo_{key}") for key in SLO_KEYS}
    return load_config().for_run(settings).with_overrides(flags)


def _run_dir(value: str) -> Path:
    path = Path(value)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is not a run folder (results/<stamp>-<label>)")
    return path


def analyze(path: Path, args: argparse.Namespace) -> Findings:
    """Write charts/*.png, report.md and (unless --no-html) report.html into run ``path``."""
    run = load_run(path)
    findings = build_findings(run, _config(args, run.settings))
    charts = write_charts(run, findings, path / "charts")
    links = [(caption, f"charts/{png.name}") for caption, png in charts]
    document = report_document(findings, links)
    (path / "report.md").write_text(to_markdown(document))
    print(f"wrote {path / 'report.md'} and {len(charts)} charts in {path / 'charts'}")
    if not args.no_html:
        images = {link: png.read_bytes() for (_, link), (_, png) in zip(links, charts, strict=True)}
        (path / "report.html").write_text(render_html(document, images))
        print(f"wrote {path / 'report.html'}")
    return findings


def compare(paths: Sequence[Path], out: Path | None, args: argparse.Namespace) -> Path:
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
    charts = []
    for stem, metric in COMPARE_CHARTS:
        png = save_chart(lambda ax, m=metric: plot_headline(ax, headlines, m), out / f"{stem}.png")
        charts.append((f"{metric} per run", png.name))
    target = out / "comparison.md"
    target.write_text(render_comparison(runs, charts))
    print(f"wrote {target} and {len(charts)} charts")
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the analysis or the comparison; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        parser = argparse.ArgumentParser(prog="python -m analysis compare", usage=USAGE)
        parser.add_argument("runs", nargs="+", type=_run_dir, help="run folders; first = baseline")
        parser.add_argument("--out", type=Path, help="folder for comparison.md")
        _add_slo_options(parser)
        args = parser.parse_args(argv[1:])
        if len(args.runs) < 2:
            parser.error("compare needs at least two run folders")
        compare(args.runs, args.out, args)
        return 0
    parser = argparse.ArgumentParser(prog="python -m analysis", usage=USAGE)
    parser.add_argument("run", type=_run_dir, help="run folder: results/<stamp>-<label>")
    parser.add_argument(
        "--no-html", action="store_true", help="skip the self-contained report.html"
    )
    _add_slo_options(parser)
    args = parser.parse_args(argv)
    analyze(args.run, args)
    return 0
