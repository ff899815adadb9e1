"""Users of the OpenAI-compatible API: completions and chat, whole answers and streamed.

They work against this server's /v1 routes and against any OpenAI-compatible server
(``--target openai``: vLLM, TGI, llama.cpp, OpenAI itself). The model to ask for is
``--openai-model`` (``LOCUST_OPENAI_MODEL``), else the first id ``GET /v1/models`` lists.
Streamed requests ask for ``stream_options.include_usage``, so output tokens come from the
server's own count; a server that ignores it leaves the token columns empty.
"""

from __future__ import annotations

from typing import Any, ClassVar

from locust import between, task
from locust.clients import ResponseContextManager

from locustfiles.failures import BadBody, failure_for_status
from locustfiles.run_options import option
from locustfiles.sse import openai_text
from locustfiles.streaming_users import StreamsAnswers
from locustfiles.users import LabUser


def _answer_text(body: dict[str, Any]) -> Any:
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    return message.get("content") if isinstance(message, dict) else choices[0].get("text")


def check_openai_answer(response: ResponseContextManager) -> None:
    """Mark ``response`` failed unless it is a 2xx OpenAI answer with text and usage."""
    if response.status_code == 0:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    if not 200 <= response.status_code < 300:
        error = body.get("error") if isinstance(body, dict) else None
        code = (error.get("code") or error.get("type") or "") if isinstance(error, dict) else ""
        response.failure(failure_for_status(response.status_code, str(code)))
    elif not isinstance(body, dict) or not isinstance(_answer_text(body), str):
        response.failure(BadBody("no choices[0] text or message.content"))
    elif not isinstance(body.get("usage"), dict):
        response.failure(BadBody("usage is missing"))
    else:
        response.success()


class OpenAIUser(LabUser):
    """Shared: the model name, the request body, whole or streamed sending."""

    abstract = True
    wait_time = between(0.5, 2.0)
    stream: ClassVar[bool] = False
    max_tokens = (16, 32, 64)

    def on_start(self) -> None:
        """Do LabUser's set-up, then find out which model to ask for."""
        super().on_start()
        self.model = option(self.environment.parsed_options, "openai_model",
                            "LOCUST_OPENAI_MODEL") or self._served_model()

    def _served_model(self) -> str:
        with self.client.get("/v1/models", name="/v1/models", catch_response=True) as response:
            try:
                return str(response.json()["data"][0]["id"])
            except (ValueError, KeyError, IndexError, TypeError):
                response.failure(BadBody("GET /v1/models listed no model; set --openai-model"))
                return ""

    def request_body(self, ref: str) -> dict[str, Any]:
        """The prompt part of the body (``prompt`` or ``messages``)."""
        raise NotImplementedError

    def next_request(self) -> tuple[str, dict[str, Any]]:
        """(reference, body): varied prompts and lengths, seeded sampling, as PromptUser."""
        ref = self.draws.next_ref()
        self.model = self.model or self._served_model()  # GET /v1/models failed: retry
        body = {"model": self.model, **self.request_body(ref),
                "max_tokens": self.draws.pick(self.max_tokens), "temperature": 0.8,
                "top_p": 0.95, "seed": self.draws.seed}
        if self.stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        return ref, body

    @task
    def ask(self) -> None:
        ref, body = self.next_request()
        if self.stream:
            self.send_streamed(self.route, ref, body)
            return
        request_id = f"{type(self).__name__}-{ref}"
        with self.client.post(self.route, json=body, name=self.route,
                              headers={"X-Request-ID": request_id},
                              context={"request_id": request_id, "stream": 0},
                              timeout=self.request_timeout_s, catch_response=True) as response:
            check_openai_answer(response)


class CompletionUser(OpenAIUser):
    """POST /v1/completions, whole answers."""

    weight = 1
    route = "/v1/completions"

    def request_body(self, ref: str) -> dict[str, Any]:
        return {"prompt": self.draws.pick(self.inputs.prompts)}


class ChatUser(OpenAIUser):
    """POST /v1/chat/completions, whole answers (a system and a user message)."""

    weight = 1
    route = "/v1/chat/completions"

    def request_body(self, ref: str) -> dict[str, Any]:
        return {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                             {"role": "user", "content": self.draws.pick(self.inputs.prompts)}]}


class StreamingCompletionUser(StreamsAnswers, CompletionUser):
    """POST /v1/completions with ``"stream": true``, timed token by token."""

    stream = True
    text_of = staticmethod(openai_text)


class StreamingChatUser(StreamsAnswers, ChatUser):
    """POST /v1/chat/completions with ``"stream": true``, timed token by token."""

    stream = True
    text_of = staticmethod(openai_text)
    weight = 2  # the interactive case streaming exists for
