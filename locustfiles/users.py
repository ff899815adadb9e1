"""The simulated users: prompt writers, summarizers and question askers.

``LabUser`` (abstract) holds what all three share: the API key header, a request id per
request, response validation (the success envelope with non-empty ``text`` and integer
``usage``; 429, 503 and 504 as their own named failures; any other status as ``HTTP <code>``)
and grouping by route. The concrete users only say what to send and how often.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, ClassVar

from locust import HttpUser, between, task
from locust.clients import ResponseContextManager

from locustfiles.arrival_schedule import Ticket
from locustfiles.failures import BadBody, failure_for_status
from locustfiles.inputs import DATA_DIR, USERS_PER_PROCESS, Draws, load_inputs
from locustfiles.run_options import option


def check_completion(response: ResponseContextManager) -> None:
    """Mark ``response`` failed unless it is a 2xx completion envelope (catch_response=True)."""
    if response.status_code == 0:
        return  # no response at all: Locust reports the connection error itself
    try:
        body = response.json()
    except ValueError:
        body = None
    if not 200 <= response.status_code < 300:
        error = body.get("error") if isinstance(body, dict) else None
        code = error.get("code", "") if isinstance(error, dict) else ""
        response.failure(failure_for_status(response.status_code, code))
    elif not isinstance(body, dict):
        response.failure(BadBody("body is not a JSON object"))
    elif not isinstance(body.get("text"), str) or not body["text"].strip():
        response.failure(BadBody("text is missing or empty"))
    elif not _valid_usage(body.get("usage")):
        response.failure(BadBody("usage is missing or not token counts"))
    else:
        response.success()


def _valid_usage(usage: Any) -> bool:
    return (isinstance(usage, dict)
            and all(isinstance(usage.get(k), int) and usage[k] >= 0
                    for k in ("prompt_tokens", "completion_tokens")))


class LabUser(HttpUser):
    """Shared behaviour: auth, request ids, validation, one route per class."""

    abstract = True
    route: ClassVar[str]
    # Above the server's REQUEST_TIMEOUT_S (120 s), so the server's 504 arrives first.
    request_timeout_s: ClassVar[float] = 180.0
    # Numbers the users of this process; combined with the worker index it is run-unique.
    _numbers: ClassVar[itertools.count] = itertools.count()
    # The arrival being sent, when an open-loop ArrivalUser drives this user (arrivals.py).
    arrival: Ticket | None = None

    def on_start(self) -> None:
        """Take a run-unique user number, load the inputs, set the API key header."""
        worker_index = getattr(self.environment.runner, "worker_index", 0) or 0
        self.draws = Draws(worker_index * USERS_PER_PROCESS + next(LabUser._numbers))
        options = self.environment.parsed_options
        self.inputs = load_inputs(Path(option(options, "data_dir", "LOCUST_DATA_DIR",
                                              str(DATA_DIR))))
        api_key = option(options, "api_key", "LOCUST_API_KEY")
        if api_key:
            self.client.headers["Authorization"] = f"Bearer {api_key}"

    def context(self) -> dict[str, Any]:
        """Tag every request event with the user class and, open-loop, its arrival (requests.csv
        columns)."""
        tags = {"user_class": type(self).__name__}
        return tags if self.arrival is None else {**tags, **self.arrival.context()}

    def send(self, ref: str, body: dict[str, Any]) -> None:
        """POST ``body`` to this class's route and validate the answer."""
        request_id = f"{type(self).__name__}-{ref}"
        with self.client.post(self.route, json=body, name=self.route,
                              headers={"X-Request-ID": request_id},
                              context={"request_id": request_id},
                              timeout=self.request_timeout_s, catch_response=True) as response:
            check_completion(response)


class PromptUser(LabUser):
    """Continues prompts of varied length, asking for varied numbers of tokens."""

    weight = 3
    wait_time = between(0.5, 2.0)
    route = "/generate-text"
    max_new_tokens = (16, 32, 64)

    @task
    def generate(self) -> None:
        self.send(*self.next_request())

    def next_request(self) -> tuple[str, dict[str, Any]]:
        """(reference, body) of this user's next request."""
        ref = self.draws.next_ref()
        return ref, {"prompt": self.draws.pick(self.inputs.prompts),
                     "max_new_tokens": self.draws.pick(self.max_new_tokens),
                     "temperature": 0.8, "top_p": 0.95, "seed": self.draws.seed}


class SummarizeUser(LabUser):
    """Summarizes short and long articles (reads between requests)."""

    weight = 1
    wait_time = between(2.0, 5.0)
    route = "/summarize-text"
    max_new_tokens = 48

    @task
    def summarize(self) -> None:
        self.send(*self.next_request())

    def next_request(self) -> tuple[str, dict[str, Any]]:
        """(reference, body) of this user's next request."""
        ref = self.draws.next_ref()
        article = self.draws.pick(self.inputs.articles)
        return ref, {"text": f"[{ref}]\n\n{article.text}", "max_new_tokens": self.max_new_tokens}


class QAUser(LabUser):
    """Asks questions about a passage it sends along."""

    weight = 2
    wait_time = between(1.0, 3.0)
    route = "/answer-question"
    max_new_tokens = 24

    @task
    def answer(self) -> None:
        self.send(*self.next_request())

    def next_request(self) -> tuple[str, dict[str, Any]]:
        """(reference, body) of this user's next request."""
        ref = self.draws.next_ref()
        pair = self.draws.pick(self.inputs.qa)
        if pair.context:
            return ref, {"question": pair.question, "context": f"[{ref}] {pair.context}",
                         "max_new_tokens": self.max_new_tokens}
        # An open question has no passage to tag: the question carries the reference.
        return ref, {"question": f"[{ref}] {pair.question}", "max_new_tokens": self.max_new_tokens}
