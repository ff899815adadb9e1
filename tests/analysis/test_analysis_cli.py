"""python -m analysis on hand-built run folders: PNGs that are real images, report.md, compare."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from analysis_run_builders import request_row

from analysis.charts import COMPARE_CHARTS
from analysis.cli import CHARTS, main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path.name
    assert len(data) > 5_000, f"{path.name} is suspiciously small ({len(data)} bytes)"


def test_cli_writes_charts_and_reports(sweep_run: Path) -> None:
    # A real subprocess, as the run script and an analyst call it.
    done = subprocess.run([sys.executable, "-m", "analysis", str(sweep_run)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    charts = sorted((sweep_run / "charts").glob("*.png"))
    assert {p.stem for p in charts} == {stem for stem, _, _ in CHARTS} | {"sweep"}
    for png in charts:
        assert_png(png)
    report = (sweep_run / "report.md").read_text()
    for png in charts:
        assert f"(charts/{png.name})" in report
    assert "The saturation knee is at 4 users." in report
    html = (sweep_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(charts)


def test_cli_on_a_folder_with_only_run_json_draws_no_data_panels(write_run) -> None:
    folder = write_run(run={"label": "bare"})
    assert main([str(folder), "--no-html"]) == 0
    charts = sorted((folder / "charts").glob("*.png"))
    assert len(charts) == len(CHARTS)  # no sweep chart for a run without steps
    for png in charts:
        assert_png(png)
    report = (folder / "report.md").read_text()
    assert "`requests.csv` is missing" in report and "`memory.csv` is missing" in report
    assert not (folder / "report.html").exists()


def test_cli_slo_flags_override_run_json(write_run) -> None:
    folder = write_run(run={"slo": {"p95_ms": 5000, "error_rate": 0.5}},
                       requests=[request_row(1.0, response_time_ms=3000)])  # fmt: skip
    main([str(folder), "--no-html", "--slo-p95-ms", "2000"])
    report = (folder / "report.md").read_text()
    assert "| p95 latency, All routes | 2,000 | 3,000 | FAIL |" in report
    assert "| error rate | 0.500 | 0.000 | PASS |" in report


def test_cli_compare_writes_comparison(write_run, tmp_path: Path) -> None:
    one = write_run("a", run={"label": "a", "dtype": "float32"}, requests=[request_row(1.0)])
    two = write_run("b", run={"label": "b", "dtype": "bfloat16"}, requests=[request_row(1.0)])
    assert main(["compare", str(one), str(two), "--out", str(tmp_path / "cmp")]) == 0
    text = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| dtype | float32 | bfloat16 |" in text
    for stem, _ in COMPARE_CHARTS:
        assert_png(tmp_path / "cmp" / f"{stem}.png")
        assert f"]({stem}.png)" in text
    assert main(["compare", str(one), str(two)]) == 0  # default: next to the first run
    assert (tmp_path / "compare-a-vs-b" / "comparison.md").is_file()


def test_cli_rejects_what_is_not_a_run_folder(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nope")])
    assert exit_info.value.code == 2
    assert "is not a run folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compare", str(tmp_path)])
    assert "at least two run folders" in capsys.readouterr().err


def test_walkthrough_runs_top_to_bottom(sweep_run: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "analysis.walkthrough", str(sweep_run)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "knee: 4 users; SLO held up to 4 users" in done.stdout
    assert "[warning] cpu_plateau:" in done.stdout
    assert (REPO / "analysis" / "walkthrough.py").read_text().count("# %%") >= 10


def test_walkthrough_survives_an_empty_run_folder(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "analysis.walkthrough", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "`run.json` is missing" in done.stdout and "one load level: no sweep" in done.stdout
