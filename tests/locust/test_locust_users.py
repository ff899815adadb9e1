"""What the users send: distinct bodies for concurrent users, and bodies the server accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer

from locustfiles.inputs import USERS_PER_PROCESS
from locustfiles.users import PromptUser, QAUser, SummarizeUser
from server.config import DEFAULTS
from server.web.prompts import tokenize

USERS = (PromptUser, SummarizeUser, QAUser)
TASKS = {PromptUser: "generate", SummarizeUser: "summarize", QAUser: "answer"}


@pytest.fixture
def started(environment, monkeypatch):
    """Factory: ``n`` started users of a class, as Locust would spawn them."""

    def start(user_class, n: int):
        # What the runner does with --host when it spawns users (nothing is sent here).
        monkeypatch.setattr(user_class, "host", "http://127.0.0.1:1")
        users = [user_class(environment) for _ in range(n)]
        for user in users:
            user.on_start()
        return users

    return start


def test_concurrent_users_never_send_the_same_body(started) -> None:
    # More users than texts: 150 of each class, three requests each.
    users = [u for cls in USERS for u in started(cls, 150)]
    bodies = [json.dumps(u.next_request()[1], sort_keys=True) for _ in range(3) for u in users]

    assert len(set(bodies)) == len(bodies) == 3 * 450


def test_users_walk_the_data_from_their_own_offset(started) -> None:
    first, second = started(SummarizeUser, 2)
    a1, a2 = (first.next_request()[1]["text"].split("\n\n", 1)[1] for _ in range(2))
    b1 = second.next_request()[1]["text"].split("\n\n", 1)[1]

    assert a1 != a2 and a2 == b1  # consecutive users start at consecutive articles


def test_user_numbers_include_the_worker_index(environment, started) -> None:
    environment.runner.worker_index = 3  # what a WorkerRunner holds after the master's ack
    [user] = started(QAUser, 1)

    assert user.draws.user_number // USERS_PER_PROCESS == 3


def test_api_key_from_the_environment_becomes_a_bearer_header(started, monkeypatch) -> None:
    monkeypatch.setenv("LOCUST_API_KEY", "k-123")
    [user] = started(PromptUser, 1)

    assert user.client.headers["Authorization"] == "Bearer k-123"
    assert user.context() == {"user_class": "PromptUser"}


@pytest.mark.parametrize("user_class", USERS)
def test_every_body_fits_the_server_limits(user_class, started, tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    context_window = AutoConfig.from_pretrained(tiny_model).n_positions
    users = started(user_class, 1)
    inputs = users[0].inputs
    count = {PromptUser: len(inputs.prompts), SummarizeUser: len(inputs.articles),
             QAUser: len(inputs.qa)}[user_class]
    worst_ref = f"{99 * USERS_PER_PROCESS}-99999"  # the longest reference a run can make

    for _ in range(count):  # one user walks every item once
        ref, body = users[0].next_request()
        fields = {k: v.replace(f"[{ref}]", f"[{worst_ref}]") for k, v in body.items()
                  if isinstance(v, str)}
        prompt_tokens = len(tokenize(tokenizer, TASKS[user_class], fields))
        assert prompt_tokens + body["max_new_tokens"] <= context_window, (prompt_tokens, fields)
        assert all(len(v) <= DEFAULTS["MAX_INPUT_CHARS"] for v in fields.values())
        assert body["max_new_tokens"] <= DEFAULTS["MAX_NEW_TOKENS_CAP"]
