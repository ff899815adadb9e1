"""Prompt templates: a task request or a conversation turned into the model's token ids.

Base models get plain prompts (``TL;DR:`` for summaries, ``Question:/Answer:`` for QA, a
role-prefixed transcript for chat); a tokenizer with a chat template gets chat messages
through ``template_ids``, the one place both route families tokenize a template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# System instructions used when the tokenizer has a chat template.
_INSTRUCTIONS = {
    "generate": "Continue the user's text.",
    "summarize": "Summarize the user's text in a few sentences.",
    "answer": "Answer the question. Use the context when one is given.",
}
# Speaker labels of the plain chat prompt ("developer" is OpenAI's newer name for "system").
ROLE_LABELS = {"system": "System", "developer": "System", "user": "User",
               "assistant": "Assistant"}


@dataclass(frozen=True)
class Prompt:
    """What to send to the model for one request."""

    task: str
    text: str


def build_prompt(task: str, **fields: str) -> Prompt:
    """Build the base-model prompt of ``task`` (generate|summarize|answer)."""
    if task == "generate":
        return Prompt(task, fields["prompt"])
    if task == "summarize":
        return Prompt(task, f"{fields['text'].strip()}\n\nTL;DR:")
    if task == "answer":
        context = fields.get("context", "").strip()
        head = f"Context: {context}\n\n" if context else ""
        return Prompt(task, f"{head}Question: {fields['question'].strip()}\nAnswer:")
    raise ValueError(f"unknown task {task!r}; use generate, summarize or answer")


def has_template(tokenizer: Any) -> bool:
    """True when the tokenizer brings a chat template (instruct models)."""
    return bool(getattr(tokenizer, "chat_template", None))


def template_ids(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of ``messages`` through the tokenizer's chat template, ready to answer."""
    encoded = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True,
                                            tokenize=True, return_dict=True)
    return list(encoded["input_ids"])


def _task_messages(prompt: Prompt, fields: dict[str, str]) -> list[dict[str, str]]:
    user = fields.get("prompt") or fields.get("text") or ""
    if prompt.task == "answer":
        context = fields.get("context", "").strip()
        user = (f"Context: {context}\n\n" if context else "") + fields["question"]
    return [{"role": "system", "content": _INSTRUCTIONS[prompt.task]},
            {"role": "user", "content": user}]


def tokenize(tokenizer: Any, task: str, fields: dict[str, str]) -> list[int]:
    """Token ids of the task's prompt, through the chat template when the tokenizer has one."""
    prompt = build_prompt(task, **fields)
    if has_template(tokenizer):
        return template_ids(tokenizer, _task_messages(prompt, fields))
    return tokenizer.encode(prompt.text)


def plain_chat_prompt(messages: Sequence[dict[str, str]]) -> str:
    """The prompt of a tokenizer without a chat template: one "Role: text" line each.

    ``System: ...\\nUser: ...\\nAssistant:``; the model continues after the final label.
    """
    lines = [f"{ROLE_LABELS[m['role']]}: {m['content'].strip()}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


def chat_ids(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of a conversation, through the chat template when the tokenizer has one."""
    if has_template(tokenizer):
        return template_ids(tokenizer, messages)
    return tokenizer.encode(plain_chat_prompt(messages))
