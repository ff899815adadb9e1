"""Benchmark prompts of an exact token length for the served model's tokenizer."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def cut_to_tokens(tokenizer, text: str, tokens: int) -> str | None:
    """The longest prefix of ``text`` that encodes to exactly ``tokens`` tokens, or None.

    Decoding the first ``tokens`` ids and encoding the result can merge differently at the
    cut, so ids are dropped one at a time until the round trip gives the wanted length.
    """
    ids = tokenizer.encode(text)
    for end in range(min(len(ids), tokens + 8), tokens - 1, -1):
        prefix = tokenizer.decode(ids[:end]).strip()
        if len(tokenizer.encode(prefix)) == tokens:
            return prefix
    return None


def fixed_length_prompts(tokenizer, texts: Iterable[str], tokens: int, count: int) -> list[str]:
    """Up to ``count`` prompts of exactly ``tokens`` tokens, cut from ``texts`` in order."""
    prompts = []
    for text in texts:
        prompt = cut_to_tokens(tokenizer, text, tokens)
        if prompt is not None:
            prompts.append(prompt)
        if len(prompts) == count:
            break
    return prompts


def write_prompts(model: str, models_dir: str, source: Path, out: Path, tokens: int,
                  count: int = 10) -> list[str]:
    """Write ``count`` prompts of ``tokens`` tokens cut from ``source`` (prompts.jsonl) to
    ``out`` in the same format; raise ValueError when the texts are too short."""
    from transformers import AutoTokenizer

    from server.engine.model import resolve_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_source(model, models_dir))
    with open(source, encoding="utf-8") as f:
        texts = [json.loads(line)["prompt"] for line in f if line.strip()]
    prompts = fixed_length_prompts(tokenizer, texts, tokens, count)
    if not prompts:
        raise ValueError(f"no prompt in {source} reaches {tokens} tokens")
    with open(out, "w", encoding="utf-8") as f:
        for i, prompt in enumerate(prompts):
            f.write(json.dumps({"id": f"bench{i:02d}", "prompt": prompt, "tokens": tokens}) + "\n")
    return prompts
