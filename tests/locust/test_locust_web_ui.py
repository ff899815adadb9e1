"""The web UI's memory tabs and /memory page, driven in real headless Chromium (selenium with
Debian's chromium + chromium-driver, installed by .ci/run) while a load runs."""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from harness.gunicorn_process import REPO, GunicornServer, free_port
from tests.conftest import MODELS_DIR
from tests.locust.locust_runs import locust_command, locust_env

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (.ci/run)")


@pytest.fixture
def browser() -> Iterator:
    """Headless Chromium through the system chromedriver, with a throwaway profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    with tempfile.TemporaryDirectory() as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        driver.set_page_load_timeout(30)
        try:
            yield driver
        finally:
            driver.quit()


@pytest.fixture
def web_ui(tiny_model: Path, tmp_path: Path) -> Iterator[tuple[str, list[int]]]:
    """Locust's web UI (autostarted, 4 users) against a 2-worker tiny server."""
    run_dir = tmp_path / "run"
    api_key = secrets.token_urlsafe(24)
    env = {"MODEL": "synthetic:tiny", "MODELS_DIR": MODELS_DIR, "DTYPE": "float32",
           "TORCH_THREADS": "1", "API_KEYS": api_key,
           "REQUEST_LOG": str(tmp_path / "server_requests.jsonl")}
    with GunicornServer(tmp_path, env, workers=2) as server:
        port = free_port()
        cmd = locust_command(run_dir, server.url, "--web-host", "127.0.0.1", "--web-port",
                             str(port), "--autostart", "-u", "4", "-r", "4", "-t", "120s",
                             "--server-pidfile", str(server.pidfile))
        log = open(tmp_path / "locust.log", "wb")  # noqa: SIM115 (closed below)
        proc = subprocess.Popen(cmd, cwd=REPO, env=locust_env(LOCUST_API_KEY=api_key),
                                stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, (tmp_path / "locust.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "locust.log").read_text()
                try:
                    if requests.get(url, timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    time.sleep(0.2)
            yield url, server.worker_pids()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def table_rows(driver) -> list[list[str]]:
    """Text of each body row of the page's (first) table."""
    from selenium.webdriver.common.by import By

    return [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in driver.find_elements(By.CSS_SELECTOR, "table tbody tr")]


def headers(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [th.text for th in driver.find_elements(By.CSS_SELECTOR, "table thead th")]


def wait_for(driver, condition, timeout_s: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.5).until(condition)


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


def test_memory_page_charts_samples_as_they_arrive(browser, web_ui) -> None:
    from selenium.webdriver.common.by import By

    url, _ = web_ui

    def total_pss_points(driver) -> int:
        lines = driver.find_elements(By.CSS_SELECTOR, "polyline[data-series='total PSS']")
        return len(lines[0].get_attribute("points").split()) if lines else 0

    browser.get(f"{url}/memory")
    first = wait_for(browser, lambda d: total_pss_points(d) >= 2 and total_pss_points(d))
    assert browser.find_elements(By.CSS_SELECTOR, "polyline[data-series='summed RSS']")
    total = next(r for r in table_rows(browser) if r and r[0] == "total")
    assert float(total[4]) > 0
    # The page reloads itself every 2 s; the chart grows as the sampler adds a sample a second.
    wait_for(browser, lambda d: total_pss_points(d) > first + 2)
