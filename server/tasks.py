"""Turn a task request into a prompt: plain prompts for base models, chat for instruct ones."""

from __future__ import annotations

from dataclasses import dataclass

from server.errors import APIError

# System instructions used when the tokenizer has a chat template.
_INSTRUCTIONS = {
    "generate": "Continue the user's text.",
    "summarize": "Summarize the user's text in a few sentences.",
    "answer": "Answer the question. Use the context when one is given.",
}


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


def _chat_messages(prompt: Prompt, fields: dict[str, str]) -> list[dict[str, str]]:
    user = fields.get("prompt") or fields.get("text") or ""
    if prompt.task == "answer":
        context = fields.get("context", "").strip()
        user = (f"Context: {context}\n\n" if context else "") + fields["question"]
    return [{"role": "system", "content": _INSTRUCTIONS[prompt.task]},
            {"role": "user", "content": user}]


def tokenize(tokenizer, task: str, fields: dict[str, str]) -> list[int]:
    """Token ids of the task's prompt, through the chat template when the tokenizer has one."""
    prompt = build_prompt(task, **fields)
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            _chat_messages(prompt, fields), add_generation_prompt=True, tokenize=True
        )
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)
    return tokenizer.encode(prompt.text)


def check_budget(prompt_tokens: int, max_new_tokens: int, context_window: int) -> None:
    """Raise 413 when the prompt plus the requested tokens do not fit the context window."""
    if prompt_tokens + max_new_tokens > context_window:
        raise APIError(
            413, "prompt_too_long",
            f"prompt is {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}; "
            f"together they must fit the model's {context_window}-token context",
            details={"prompt_tokens": prompt_tokens, "max_new_tokens": max_new_tokens,
                     "context_window": context_window},
        )
