"""``--target openai``: memory.csv only when ``--server-pidfile`` names a server on this machine
(bench/reference.py's llama-server), read from /proc like Gunicorn; never otherwise."""

from __future__ import annotations

import argparse
import csv
import os
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
from locust.env import Environment

from locustfiles.locustfile import set_up_run
from locustfiles.openai_users import (
    ChatUser,
    CompletionUser,
    StreamingChatUser,
    StreamingCompletionUser,
)


def openai_options(run_dir: Path, pidfile: Path) -> argparse.Namespace:
    """What Locust's parser gives for ``--target openai --server-pidfile PIDFILE``."""
    return argparse.Namespace(target="openai", mix="openai", server_pidfile=str(pidfile),
                              metrics_urls="", run_dir=str(run_dir), label="reference",
                              shape="none", user_classes=[])


@pytest.fixture
def openai_env() -> Iterator[Environment]:
    """A bare environment with the OpenAI users and a local runner."""
    env = Environment(user_classes=[CompletionUser, ChatUser, StreamingCompletionUser,
                                    StreamingChatUser])
    env.create_local_runner()
    yield env
    env.events.quitting.fire(environment=env)
    env.runner.quit()


def test_local_foreign_server_is_sampled_from_its_pidfile(openai_env: Environment,
                                                          tmp_path: Path) -> None:
    pidfile = tmp_path / "llama-server.pid"
    pidfile.write_text(f"{os.getpid()}\n")  # this test process stands in for llama-server
    openai_env.parsed_options = openai_options(tmp_path / "run", pidfile)

    set_up_run(openai_env)
    gevent.sleep(0.3)  # the sampler's first round
    openai_env.events.quitting.fire(environment=openai_env)

    with open(tmp_path / "run" / "memory.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["pid"], r["role"]) for r in rows[:2]] == [(str(os.getpid()), "master"),
                                                        ("0", "total")]
    assert float(rows[0]["rss_mb"]) > 0 and float(rows[0]["pss_mb"]) > 0


def test_foreign_server_without_its_pidfile_gets_no_memory(openai_env: Environment,
                                                           tmp_path: Path) -> None:
    openai_env.parsed_options = openai_options(tmp_path / "run", tmp_path / "absent.pid")

    set_up_run(openai_env)

    assert (tmp_path / "run" / "requests.csv").exists()
    assert not (tmp_path / "run" / "memory.csv").exists()
