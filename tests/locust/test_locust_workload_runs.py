"""--workload end to end on synthetic:tiny: real Gunicorn, real headless Locust, ~10 s each.

* ``chat`` through RecordingProxy: every turn resends the earlier turns and the server's own
  answers, so prompts grow within a conversation; requests.csv numbers the turns.
* ``prefix`` straight at the server: the report's prefix-cache hit rate per group is > 0.
* ``prefix`` through RecordingProxy(strip_cached=True), a server that reports no cached
  tokens (as llama.cpp): the report reads "not reported", never a guess.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.gunicorn_process import REPO, GunicornServer
from tests.conftest import MODELS_DIR, TEST_API_KEY, server_env
from tests.locust.recording_proxy import RecordingProxy
from tests.locust_runs import locust_env, read_csv, run_headless

SMALL = ("--prompt-tokens", "uniform:min=8,max=24", "--output-tokens", "fixed:8",
         "--dataset-size", "24", "--stop-timeout", "30",
         "--tokenizer", str(Path(MODELS_DIR) / "synthetic-tiny"))


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """One Gunicorn worker on synthetic:tiny for the three runs."""
    base = tmp_path_factory.mktemp("workload-server")
    with GunicornServer(base, server_env(base), workers=1) as running:
        yield running


def run(run_dir: Path, host: str, server: GunicornServer, *args: str) -> Path:
    result = run_headless(run_dir, host, TEST_API_KEY, "-r", "3", *SMALL, *args,
                          operator_key=server.operator_key)
    assert result.returncode == 0, (run_dir / "locust.log").read_text()[-4000:]
    return run_dir


def report(run_dir: Path) -> str:
    """``python -m analysis RUN --no-charts --no-html``; report.md's text."""
    done = subprocess.run([sys.executable, "-m", "analysis", str(run_dir), "--no-charts",
                           "--no-html"], cwd=REPO, env=locust_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return (run_dir / "report.md").read_text()


def prefix_section(text: str) -> str:
    match = re.search(r"^### Prefix-cache hit rate.*?\n(.*?)(?=^#|\Z)", text, re.M | re.S)
    assert match, text
    return match.group(1)


def test_chat_turns_resend_the_earlier_turns_and_answers(server: GunicornServer,
                                                         tmp_path: Path) -> None:
    with RecordingProxy(server.url) as proxy:
        run_dir = run(tmp_path / "chat", proxy.url, server, "--target", "openai",
                      "--workload", "chat", "--chat-turns", "3", "-u", "2", "-t", "6s")
        exchanges = proxy.exchanges
    rows = {r["request_id"]: r for r in read_csv(run_dir / "requests.csv")}
    by_conversation: dict[str, list[tuple[dict, dict, dict]]] = defaultdict(list)
    for request_id, body, answer in exchanges:
        if "messages" in body:
            row = rows[request_id]
            by_conversation[row["workload_group"]].append((row, body, answer))
    multi = [turns for turns in by_conversation.values() if len(turns) >= 2]
    assert multi, f"no conversation reached a second turn: {len(exchanges)} requests"
    for turns in multi:
        for (row, body, answer), (next_row, next_body, _) in itertools.pairwise(turns):
            said = answer["choices"][0]["message"]["content"]
            assert next_body["messages"][:-1] == [*body["messages"],
                                                  {"role": "assistant", "content": said}]
            assert next_body["messages"][-1]["role"] == "user"
            assert int(next_row["turn"]) == int(row["turn"]) + 1
            assert int(next_row["prompt_tokens"]) > int(row["prompt_tokens"])
            assert int(next_row["context_tokens"]) > int(row["context_tokens"])
        assert turns[0][0]["turn"] == "1" and len(turns[0][1]["messages"]) == 1
    manifest = json.loads((run_dir / "run.json").read_text())["workload"]
    assert manifest["kind"] == "chat" and manifest["chat"]["turns"] == 3


def test_prefix_groups_hit_the_cache_in_the_report(server: GunicornServer,
                                                    tmp_path: Path) -> None:
    run_dir = run(tmp_path / "prefix", server.url, server, "--workload", "prefix",
                  "--prefix-groups", "2", "--prefix-tokens", "64", "-u", "3", "-t", "6s")
    rows = [r for r in read_csv(run_dir / "requests.csv") if r["method"] == "POST"]
    assert {r["workload_group"] for r in rows} == {"g0", "g1"}
    assert all(r["cached_tokens"] != "" for r in rows if r["success"] == "1")
    section = prefix_section(report(run_dir))
    cells = {line.split("|")[1].strip(): line for line in section.splitlines()
             if line.startswith("| g")}
    assert set(cells) == {"g0", "g1"}
    for line in cells.values():
        assert float(line.split("|")[5].strip().rstrip("%")) > 0, section
    assert "not reported" not in section


def test_a_server_without_cached_tokens_reads_not_reported(server: GunicornServer,
                                                           tmp_path: Path) -> None:
    with RecordingProxy(server.url, strip_cached=True) as proxy:
        run_dir = run(tmp_path / "foreign", proxy.url, server, "--target", "openai",
                      "--workload", "prefix", "-u", "2", "-t", "6s")
    rows = [r for r in read_csv(run_dir / "requests.csv") if r["method"] == "POST"]
    assert rows and {r["cached_tokens"] for r in rows} == {""}
    section = prefix_section(report(run_dir))
    assert "**not reported**" in section and "%" not in section
