"""Every committed run under results/ regenerates its report with ``python -m analysis RUN``.

results/ keeps the raw data of each run (run.json, CSVs, JSONL, the larger files gzipped),
not its charts or HTML, on the promise that the command regenerates them: this test keeps
that promise. A run folder is a folder holding a run.json in ``git ls-files results``
(comparison folders hold only a comparison.md and are not runs). Each one is analysed from a
copy of its tracked files in tmp_path, so the tree is never written, as report.md only
(``--no-charts --no-html``: about 0.2 s a run, where the charts cost about 3 s), and its
report must name the run's own figures: its label, and the request count and successes of
its requests.csv (of Locust's "Aggregated" row when it has none). A file the reader cannot
parse any more is a note, not a crash, so a note saying so fails the test. One showcase run,
results/sample/sweep (a sweep, so it draws every chart including the sweep's), is
regenerated complete by the command itself: charts, report.md and report.html.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.cli import CHARTS, SWEEP_CHART, main

REPO = Path(__file__).resolve().parents[2]
SHOWCASE = "results/sample/sweep"


def _tracked() -> list[str]:
    done = subprocess.run(["git", "ls-files", "results"], cwd=REPO, capture_output=True,
                          text=True, check=False)
    return done.stdout.split() if done.returncode == 0 else []


TRACKED = _tracked()
RUNS = sorted(p.removesuffix("/run.json") for p in TRACKED if p.endswith("/run.json"))


GENERATED = ("charts/", "report.md", "report.html")  # what the command makes (the showcase's too)


def _copy(run: str, dest: Path) -> Path:
    """Copy the tracked raw data of ``run`` (not what the command generates) into
    ``dest``/<its name>; return that folder."""
    target = dest / Path(run).name
    for path in TRACKED:
        if path.startswith(run + "/") and not path.removeprefix(run + "/").startswith(GENERATED):
            out = target / path.removeprefix(run + "/")
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / path, out)
    return target


def _csv(folder: Path, name: str) -> pd.DataFrame | None:
    """``name`` of ``folder``, or its gzipped copy; None when neither is there."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return pd.read_csv(path)
    return None


def _expected_counts(folder: Path) -> tuple[int, int] | None:
    """(requests, successful) as the run's own files count them, read without analysis."""
    requests = _csv(folder, "requests.csv")
    if requests is not None:
        return len(requests), int((requests["success"] == 1).sum())
    stats = _csv(folder, "locust_stats.csv")
    if stats is not None and (stats["Name"] == "Aggregated").any():
        row = stats[stats["Name"] == "Aggregated"].iloc[0]
        return int(row["Request Count"]), int(row["Request Count"] - row["Failure Count"])
    return None


def test_the_committed_runs_are_found() -> None:
    if not TRACKED:
        pytest.skip("not a git checkout: no list of committed runs")
    assert len(RUNS) >= 80 and SHOWCASE in RUNS


@pytest.mark.parametrize("run", RUNS)
def test_committed_run_regenerates_its_report(run: str, tmp_path: Path) -> None:
    folder = _copy(run, tmp_path)
    label = pd.read_json(folder / "run.json", typ="series").get("label") or folder.name

    assert main([str(folder), "--no-charts", "--no-html"]) == 0
    report = (folder / "report.md").read_text()

    assert not (folder / "charts").exists()
    assert report.startswith(f"# Load test report: {label}\n")
    assert "could not be read" not in report  # a reader that no longer parses old data
    for name in re.findall(r"`([\w.]+)` is missing", report):
        assert not (folder / name).exists() and not (folder / f"{name}.gz").exists(), name
    counts = _expected_counts(folder)
    if counts is not None:
        requests, successes = counts
        row = f"| Requests (successful / failed) | {requests:,} ({successes:,} / "
        assert row in report
    assert "## How each number is computed" in report


def test_the_showcase_run_regenerates_complete(tmp_path: Path) -> None:
    if SHOWCASE not in RUNS:
        pytest.skip("not a git checkout: no list of committed runs")
    folder = _copy(SHOWCASE, tmp_path)

    done = subprocess.run([sys.executable, "-m", "analysis", str(folder)], cwd=REPO,
                          capture_output=True, text=True, check=False)

    assert done.returncode == 0, done.stderr
    stems = [stem for stem, _, _ in [*CHARTS, SWEEP_CHART]]
    pngs = sorted(p.stem for p in (folder / "charts").glob("*.png"))
    assert pngs == sorted(stems)
    assert all((folder / "charts" / f"{s}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
               for s in stems)
    report = (folder / "report.md").read_text()
    assert all(f"(charts/{s}.png)" in report for s in stems)
    html = (folder / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(stems)


COMPLETE = "results/sample/steady-10-users-native-zen4"  # the main job's headline run


def test_the_complete_showcase_run_is_committed_with_every_chart_its_report_links() -> None:
    """One run stays complete in git (report.md, report.html, charts/) for a reader who runs
    nothing; every chart its report.md links is committed beside it."""
    report = (REPO / COMPLETE / "report.md").read_text()
    linked = set(re.findall(r"\]\((charts/[\w.-]+\.png)\)", report))
    assert len(linked) >= 5, linked
    committed = {p.removeprefix(f"{COMPLETE}/") for p in TRACKED if p.startswith(COMPLETE)}
    assert {"report.md", "report.html", *linked} <= committed, sorted(linked - committed)
