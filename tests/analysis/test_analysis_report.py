"""The Markdown report, the comparison and the HTML page: computed numbers, no I/O; and
report.html of a run folder, as a reader sees it: opened from disk in headless Chromium."""

from __future__ import annotations

import base64
import dataclasses
import math
import re
from pathlib import Path

import pytest
from analysis_run_builders import request_row

from analysis.cli import main
from analysis.compare import differing_settings, headline_frame, render_comparison
from analysis.config import AnalysisConfig, load_config
from analysis.document import Document, Section, Table, render_html, to_markdown
from analysis.findings import build_findings
from analysis.report import FORMULA_SOURCES, formula, render_markdown, report_document
from analysis.rules import all_rules
from analysis.run import load_run


@pytest.fixture
def findings(sweep_run):
    return build_findings(load_run(sweep_run), AnalysisConfig(slo_p95_ms=900.0))


def test_report_quotes_the_computed_numbers(findings) -> None:
    text = render_markdown(findings, [("Memory", "charts/memory_over_time.png")])
    assert text.startswith("# Load test report: sweep\n")
    # 100 served + 2 refused; error rate 2 / 102.
    assert "| Requests (successful / failed) | 102 (100 / 2) |" in text
    assert "| Error rate | 1.96% |" in text
    assert "| overloaded | 1 |" in text and "| rate_limited | 1 |" in text
    # p95 is 1000 ms for every route against a 900 ms target.
    assert "| p95 latency, All routes | 900 | 1,000 | FAIL |" in text
    assert "| 4 | 30 | 2.00 | 1,000.0 | 0.00% | no |" in text
    assert "The saturation knee is at 4 users." in text
    assert "![Memory](charts/memory_over_time.png)" in text
    assert "synthetic (seeded random weights" in text


def test_report_states_each_formula_and_rule_once(findings) -> None:
    text = render_markdown(findings)
    for name, func in FORMULA_SOURCES:
        assert formula(func), name  # every source function really has a "Formula:" line
        assert text.count(f"**{name}**: {formula(func)}") == 1
    for rule in all_rules():
        assert text.count(f"`{rule.__name__}`") == 1
    assert "| knee_fraction | 0.25 |" in text  # the thresholds used are printed


def test_report_lists_recommendations_with_warnings_first(findings) -> None:
    text = render_markdown(findings)
    section = text.split("## Findings and recommendations")[1].split("\n## ")[0]
    severities = re.findall(r"- \*\*(warning|info)\*\*", section)
    assert severities and severities == sorted(severities, key=lambda s: s != "warning")
    assert "(cpu_plateau)" in section and "(sharing_works)" in section


def test_missing_files_are_noted_in_the_report(write_run) -> None:
    f = build_findings(load_run(write_run(requests=[request_row(1.0)])), AnalysisConfig())
    text = render_markdown(f)
    assert "## Notes on the inputs" in text
    assert "`memory.csv` is missing" in text and "`run.json` is missing" in text
    assert "This run held one load level, so there is no sweep." in text


def test_empty_folder_still_renders(write_run) -> None:
    f = build_findings(load_run(write_run()), AnalysisConfig())
    text = render_markdown(f)
    assert "| error rate | 0.010 | n/a | not measured |" in text
    assert "No rule fired." in text


def test_slo_targets_from_run_json_then_overrides(write_run, monkeypatch) -> None:
    settings = {"slo": {"p95_ms": 2500.0, "error_rate": 0.05}}
    monkeypatch.setenv("ANALYSIS_SLO_P95_MS", "7000")
    monkeypatch.setenv("ANALYSIS_WARMUP_S", "5")
    cfg = load_config()
    assert (cfg.slo_p95_ms, cfg.warmup_s) == (7000.0, 5.0)
    assert cfg.for_run(settings).slo_p95_ms == 2500.0
    assert cfg.for_run(settings).with_overrides({"slo_p95_ms": 100}).slo_p95_ms == 100.0
    assert cfg.for_run({}).slo_error_rate == 0.01
    with pytest.raises(ValueError, match="valid:"):
        cfg.with_overrides({"slo_p96_ms": 1})


def test_comparison_shows_differing_settings_and_ratios(write_run) -> None:
    base = write_run(
        "one",
        run={"label": "one", "workers": 1},
        requests=[request_row(t, response_time_ms=1000) for t in range(10)],
    )
    fast = [request_row(t / 2, response_time_ms=500) for t in range(20)]
    other = write_run("two", run={"label": "two", "workers": 2}, requests=fast)
    runs = [build_findings(load_run(p), AnalysisConfig()) for p in (base, other)]
    assert differing_settings(runs) == {"workers": [1, 2]}
    text = render_comparison(runs)
    assert "| workers | 1 | 2 |" in text
    # p95: 1000 ms vs 500 ms -> 0.5x; throughput 10 / 10 s = 1.0 vs 20 / 10 s = 2.0 -> 2x.
    assert "| p95 latency (ms), lower is better | 1,000.0 | 500.0 | 0.5x |" in text
    assert "| Throughput (req/s), higher is better | 1.0 | 2.0 | 2x |" in text
    assert "| Output tokens/s, higher is better | 20.0 | 40.0 | 2x |" in text
    assert "| one | PASS (1,000 vs 10,000) | PASS (0.000 vs 0.010) |" in text
    frame = headline_frame(runs)
    assert frame.loc["two", "Throughput"] == pytest.approx(2.0)
    assert math.isnan(frame.loc["one", "Peak total PSS"])  # no memory.csv


def test_html_renders_the_same_document_escaped_with_charts_inlined(findings) -> None:
    png = b"\x89PNG\r\n\x1a\nfake"
    doc = report_document(findings, [("Memory <MB>", "charts/m.png")])
    page = render_html(doc, {"charts/m.png": png})
    assert base64.b64encode(png).decode() in page
    assert "<h1>Load test report: sweep</h1>" in page
    assert "Memory &lt;MB&gt;" in page and "<MB>" not in page
    assert page.count("<table>") == to_markdown(doc).count("\n| :-- |")
    assert "<td>1.96%</td>" in page
    # The report's inline markup becomes HTML, never literal Markdown.
    assert "<strong>warning</strong> (cpu_plateau)" in page
    assert "<code>sharing_works</code>" in page and "**" not in page


def test_html_says_no_rows_in_words() -> None:
    doc = Document("Empty", sections=[Section("Nothing", [Table(["A", "B"], [])])])
    page = render_html(doc, {})
    assert '<p class="empty">no rows</p>' in page and "_(no rows)_" not in page
    assert "_(no rows)_" in to_markdown(doc)  # Markdown keeps its own marker


def test_findings_are_plain_data(findings) -> None:
    assert dataclasses.is_dataclass(findings)
    assert findings.overall is not None and findings.overall.p95_ms == pytest.approx(1000.0)


@pytest.mark.parametrize(("variable", "value"), [
    ("ANALYSIS_SLO_COUNT_REFUSALS", "ture"),
    ("ANALYSIS_WARMUP_S", "soon"),
    ("ANALYSIS_MIN_SLOPE_SAMPLES", "ten"),
])
def test_a_bad_environment_value_names_its_variable(monkeypatch, variable, value) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=f"environment {variable}"):
        load_config()


def test_a_bad_override_names_its_setting() -> None:
    with pytest.raises(ValueError, match=r"slo_p95_ms='fast' \(given\)"):
        load_config({"slo_p95_ms": "fast"})
    assert load_config({"slo_count_refusals": "false"}).slo_count_refusals is False


def test_report_page_of_a_run_folder_shows_every_section_chart_and_table(
    sweep_run: Path, browser
) -> None:
    from selenium.webdriver.common.by import By

    assert main([str(sweep_run)]) == 0
    markdown = (sweep_run / "report.md").read_text()
    browser.get((sweep_run / "report.html").as_uri())

    assert browser.title == "Load test report: sweep"
    assert browser.find_element(By.TAG_NAME, "h1").text == "Load test report: sweep"
    headings = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "h2, h3")]
    in_markdown = [ln.lstrip("#").strip() for ln in markdown.splitlines()
                   if ln.startswith(("## ", "### "))]
    assert headings == in_markdown
    # Every chart is inlined and decodes as an image (a broken one has naturalWidth 0).
    widths = browser.execute_script("return [...document.images].map(i => i.naturalWidth)")
    charts = sorted((sweep_run / "charts").glob("*.png"))
    assert len(widths) == len(charts) >= 10 and all(w == 1000 for w in widths)
    assert all(i.get_attribute("src").startswith("data:image/png;base64,")
               for i in browser.find_elements(By.TAG_NAME, "img"))
    # Tables are tables, with the numbers the Markdown shows.
    assert len(browser.find_elements(By.TAG_NAME, "table")) == markdown.count("\n| :-- |")
    cells = [c.text for c in browser.find_elements(By.TAG_NAME, "td")]
    assert "1.96%" in cells and "102 (100 / 2)" in cells
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "**" not in text and "`" not in text and "_(no rows)_" not in text
