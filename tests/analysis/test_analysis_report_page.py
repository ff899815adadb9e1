"""report.html of a run folder, as a reader sees it: opened from disk in headless Chromium."""

from __future__ import annotations

from pathlib import Path

from analysis.cli import main


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
