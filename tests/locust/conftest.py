"""Fixtures for the Locust suite's tests.

Importing locust monkey-patches the standard library with gevent, which would turn the
serving core's threads into greenlets for every other test in this pytest process. The unit
tests here only fire events and call functions, so patching is skipped in-process; the
end-to-end tests run real ``locust`` subprocesses (environment without this variable).
"""

from __future__ import annotations

import os

os.environ.setdefault("LOCUST_SKIP_MONKEY_PATCH", "1")

import json
from collections.abc import Callable
from typing import Any

import pytest
import requests
from locust.env import Environment

from locustfiles.users import PromptUser, QAUser, SummarizeUser

SERVER_HEADERS = {
    "X-Request-ID": "PromptUser-7-1", "X-Worker-PID": "4242", "X-Worker-RSS-MB": "812.5",
    "X-Worker-USS-MB": "96.0", "X-Worker-PSS-MB": "455.3", "X-Queue-Ms": "3.0",
    "X-Inference-Ms": "120.4", "X-Batch-Size": "3", "X-CPU-Ms": "41.25",
}


@pytest.fixture
def environment() -> Environment:
    """A bare Locust environment with a local runner and the suite's user classes."""
    env = Environment(user_classes=[PromptUser, SummarizeUser, QAUser])
    env.create_local_runner()
    yield env
    env.events.quitting.fire(environment=env)  # hooks close their files here, as in Locust
    env.runner.quit()


@pytest.fixture
def make_response() -> Callable[..., requests.Response]:
    """Factory: a real ``requests.Response`` with a status, JSON body and headers."""

    def factory(status_code: int = 200, body: Any = None, headers: dict | None = None,
                raw: bytes | None = None) -> requests.Response:
        response = requests.Response()
        response.status_code = status_code
        response.headers.update({"Content-Type": "application/json", **(headers or {})})
        response._content = raw if raw is not None else json.dumps(body).encode()
        response.url = "http://127.0.0.1:1/generate-text"
        return response

    return factory


@pytest.fixture
def completion_body() -> dict[str, Any]:
    """A valid success body of a task route."""
    return {"text": " the harbour at dawn", "model": "synthetic:tiny", "finish_reason": "length",
            "usage": {"prompt_tokens": 11, "completion_tokens": 5},
            "timings_ms": {"queue": 3.0, "inference": 120.4, "total": 123.4}}
