"""The web UI's memory tabs and /memory page, driven in real headless Chromium (the shared
``browser`` fixture, tests/browser.py) while a load runs."""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from harness.gunicorn_process import REPO, GunicornServer
from harness.processes import free_port, stop_process
from harness.waiting import wait_until
from tests.conftest import server_env
from tests.locust_runs import locust_command, locust_env


@pytest.fixture(scope="module")
def web_ui(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[str, list[int]]]:
    """Locust's web UI (autostarted, 4 users) against a 2-worker tiny server, for both page
    tests: each only reads pages while the load runs (the sampler keeps its last 600
    samples, so the chart still grows in the second)."""
    tmp_path = tmp_path_factory.mktemp("web-ui")
    run_dir = tmp_path / "run"
    api_key = secrets.token_urlsafe(24)
    env = server_env(tmp_path, API_KEYS=api_key)
    with GunicornServer(tmp_path, env, workers=2) as server:
        port = free_port()
        cmd = locust_command(run_dir, server.url, "--web-host", "127.0.0.1", "--web-port",
                             str(port), "--autostart", "-u", "4", "-r", "4", "-t", "120s",
                             "--server-pidfile", str(server.pidfile))
        log = open(tmp_path / "locust.log", "wb")  # noqa: SIM115 (closed below)
        env = locust_env(LOCUST_API_KEY=api_key, LOCUST_OPERATOR_KEY=server.operator_key)
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: _answers(url), "Locust's web UI answers", timeout_s=300,
                       interval_s=0.2, alive=lambda: proc.poll() is None,
                       detail=lambda: (tmp_path / "locust.log").read_text())
            yield url, server.worker_pids()
        finally:
            stop_process(proc, 30)
            log.close()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def table_rows(driver) -> list[list[str]]:
    """Text of each body row of the page's (first) table."""
    from selenium.webdriver.common.by import By

    return [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in driver.find_elements(By.CSS_SELECTOR, "table tbody tr")]


def headers(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [th.text for th in driver.find_elements(By.CSS_SELECTOR, "table thead th")]


def wait_for(driver, condition, timeout_s: float = 120):
    """Poll ``condition(driver)`` until truthy. The pages reload themselves every 2 s, so an
    element read a moment ago can be gone: such a read is retried, not a failure."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.5,
                         ignored_exceptions=(StaleElementReferenceException,)).until(condition)


def test_memory_tab_shows_live_server_memory(browser, web_ui) -> None:
    url, worker_pids = web_ui

    browser.get(f"{url}/?tab=server-memory")
    rows = wait_for(browser, lambda d: [r for r in table_rows(d) if r and r[0] == "total"]
                    and table_rows(d))
    assert "Server memory" in browser.page_source and "Request RAM" in browser.page_source
    columns = headers(browser)
    assert columns[:5] == ["Process", "PID", "RSS (MB)", "USS (MB)", "PSS (MB)"]
    by_role = {}
    for row in rows:
        by_role.setdefault(row[0], []).append(dict(zip(columns, row, strict=True)))
    assert len(by_role["master"]) == 1
    assert {int(w["PID"]) for w in by_role["worker"]} == set(worker_pids)
    [total] = by_role["total"]
    assert 0 < float(total["PSS (MB)"]) < float(total["RSS (MB)"])

    browser.get(f"{url}/?tab=request-ram")
    rows = wait_for(browser, lambda d: [r for r in table_rows(d) if len(r) > 2
                                        and r[0].isdigit() and int(r[1]) > 0])
    assert headers(browser)[:3] == ["Server worker PID", "Requests", "Latest RSS (MB)"]
    assert {int(r[0]) for r in rows} <= set(worker_pids)
    assert all(float(r[4]) > 0 for r in rows)  # latest PSS from the response headers


def _polyline_points(html: str, series: str) -> int:
    """Points of the chart's ``series`` line in a page snapshot (0 when absent)."""
    for tag in re.findall(r"<polyline\b[^>]*>", html):
        if f'data-series="{series}"' in tag:
            points = re.search(r'points="([^"]*)"', tag)
            return len(points.group(1).split()) if points else 0
    return 0


def _total_row(html: str) -> list[str] | None:
    """Cells of the first table's "total" row in a page snapshot."""
    for row in re.findall(r"<tr>(.*?)</tr>", html, flags=re.S):
        cells = [re.sub(r"<[^>]+>", "", c).strip()
                 for c in re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)]
        if cells and cells[0] == "total":
            return cells
    return None


def test_memory_page_charts_samples_as_they_arrive(browser, web_ui) -> None:
    # The page reloads itself every 2 s: it is read as one snapshot of its source each time
    # (element handles can belong to a document that has just been replaced).
    url, _ = web_ui

    browser.get(f"{url}/memory")
    first = wait_for(browser, lambda d: (n := _polyline_points(d.page_source, "total PSS")) >= 2
                     and n)
    html = wait_for(browser, lambda d: (h := d.page_source) and _total_row(h)
                    and _polyline_points(h, "summed RSS") and h)
    assert float(_total_row(html)[4]) > 0
    # The chart grows as the sampler adds a sample a second.
    wait_for(browser, lambda d: _polyline_points(d.page_source, "total PSS") > first + 2)
