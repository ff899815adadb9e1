"""The users of ``--workload``: drawn lengths, ShareGPT prompts, multi-turn chat, shared prefixes.

They are OpenAI-API users (the model name as ``OpenAIUser`` finds it, auth and validation;
not its subclasses, since Locust would inherit its task too) whose bodies come from the run's
workload (locustfiles/workloads.py), not from locustfiles/data. Each request's
context carries ``workload_group`` (prefix group or conversation), ``turn`` and
``context_tokens`` (the prompt's tokens as the client counted them), which the request
recorder writes to requests.csv next to the server's ``cached_tokens``. Answers are asked
for with ``ignore_eos`` so their length is the drawn one (vLLM's and llama.cpp's name too).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from locust import between, task

from locustfiles.openai_users import OpenAIUser, _answer_text, check_openai_answer
from locustfiles.run_options import option
from locustfiles.token_text import load_token_text
from locustfiles.users import LabUser
from locustfiles.workloads import Item, Workload, WorkloadSpec, load_workload


class WorkloadUser(LabUser):
    """Shared: the run's workload, the sampling fields, sending one body and reading it."""

    abstract = True
    wait_time = between(0.5, 2.0)
    # The workload of a class named on the command line without --workload.
    default_kind: ClassVar[str]

    def on_start(self) -> None:
        """Do LabUser's set-up, find the model to ask for, load the run's workload (once per
        process)."""
        super().on_start()
        self.model = option(self.environment.parsed_options, "openai_model",
                            "LOCUST_OPENAI_MODEL") or self._served_model()
        spec = WorkloadSpec.from_options(self.environment.parsed_options)
        if spec.kind == "mix":
            spec = replace(spec, kind=self.default_kind)
        self.workload: Workload = load_workload(spec)

    _served_model = OpenAIUser._served_model  # GET /v1/models

    def sampling(self, item: Item) -> dict[str, Any]:
        """The body's answer length and seeded sampling fields."""
        return {"model": self.model, "max_tokens": item.output_tokens, "ignore_eos": True,
                "temperature": 0.8, "top_p": 0.95, "seed": self.draws.seed}

    def post(self, ref: str, body: dict[str, Any], context: dict[str, Any]) -> str | None:
        """POST ``body``; return the answer's text when it succeeded, else None."""
        request_id = f"{type(self).__name__}-{ref}"
        with self.client.post(self.route, json=body, name=self.route,
                              headers={"X-Request-ID": request_id},
                              context={"request_id": request_id, "stream": 0, **context},
                              timeout=self.request_timeout_s, catch_response=True) as response:
            check_openai_answer(response)
            if response.request_meta.get("exception") is None and response.status_code:
                return _answer_text(response.json())
        return None


class LengthsUser(WorkloadUser):
    """POST /v1/completions: ``--workload lengths`` (drawn lengths) or ``sharegpt`` prompts."""

    route = "/v1/completions"
    default_kind = "lengths"

    @task
    def ask(self) -> None:
        ref = self.draws.next_ref()
        self.model = self.model or self._served_model()
        item = self.draws.pick(self.workload.items)
        self.post(ref, {"prompt": item.prompt, **self.sampling(item)},
                  {"workload_group": item.group, "context_tokens": item.prompt_tokens})


class SharedPrefixUser(WorkloadUser):
    """POST /v1/chat/completions: a group's shared system prompt, then its own question."""

    route = "/v1/chat/completions"
    default_kind = "prefix"

    @task
    def ask(self) -> None:
        ref = self.draws.next_ref()
        self.model = self.model or self._served_model()
        item = self.draws.pick(self.workload.items)
        messages = [{"role": "system", "content": item.system},
                    {"role": "user", "content": item.prompt}]
        self.post(ref, {"messages": messages, **self.sampling(item)},
                  {"workload_group": item.group,
                   "context_tokens": self.workload.spec.prefix_tokens + item.prompt_tokens})


class MultiTurnChatUser(WorkloadUser):
    """POST /v1/chat/completions, one conversation at a time, its context growing each turn.

    Each turn sends the earlier turns and the server's own answers, then the next user
    message. A conversation ends after ``--chat-turns`` turns, when the next turn's context
    would pass ``--chat-max-tokens`` tokens, or when a turn fails; the next one starts.
    """

    route = "/v1/chat/completions"
    default_kind = "chat"
    def on_start(self) -> None:
        super().on_start()
        self.messages: list[dict[str, str]] = []
        self.turns: tuple[Item, ...] = ()
        self.turn = 0
        self.conversation = ""
        self.started = 0

    def _new_conversation(self) -> None:
        self.started += 1
        self.turns = self.draws.pick(self.workload.conversations)
        self.conversation = f"{self.turns[0].group}@{self.draws.user_number}-{self.started}"
        system = self.turns[0].system
        self.messages = [{"role": "system", "content": system}] if system else []
        self.turn = 0

    def _context_tokens(self, messages: list[dict[str, str]]) -> int:
        tt = load_token_text(self.workload.spec.tokenizer)
        return sum(tt.count(m["content"]) for m in messages)

    @task
    def ask(self) -> None:
        spec = self.workload.spec
        if not self.turns or self.turn >= min(spec.chat_turns, len(self.turns)):
            self._new_conversation()
        item = self.turns[self.turn]
        messages = [*self.messages, {"role": "user", "content": item.prompt}]
        context_tokens = self._context_tokens(messages)
        if self.turn and context_tokens + item.output_tokens > spec.chat_max_tokens:
            self._new_conversation()
            item = self.turns[0]
            messages = [*self.messages, {"role": "user", "content": item.prompt}]
            context_tokens = self._context_tokens(messages)
        ref = self.draws.next_ref()
        self.model = self.model or self._served_model()
        answer = self.post(ref, {"messages": messages, **self.sampling(item)},
                           {"workload_group": self.conversation, "turn": self.turn + 1,
                            "context_tokens": context_tokens})
        if answer is None:
            self.turns = ()  # a failed turn ends the conversation: its history is broken
            return
        self.messages = [*messages, {"role": "assistant", "content": answer}]
        self.turn += 1
