"""Benchmark prompts are exactly the asked number of tokens for the model's tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from bench.prompts import cut_to_tokens, write_prompts
from locustfiles.inputs import DATA_DIR
from tests.conftest import MODELS_DIR


@pytest.mark.parametrize("tokens", [16, 64])
def test_written_prompts_have_exactly_n_tokens(tiny_model: Path, tmp_path: Path,
                                               tokens: int) -> None:
    out = tmp_path / "prompts.jsonl"
    prompts = write_prompts("synthetic:tiny", MODELS_DIR, DATA_DIR / "prompts.jsonl", out,
                            tokens, count=10)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert len(prompts) == 10 and len(set(prompts)) == 10
    assert [json.loads(line)["prompt"] for line in out.read_text().splitlines()] == prompts
    assert {len(tokenizer.encode(p)) for p in prompts} == {tokens}


def test_a_text_too_short_gives_none(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert cut_to_tokens(tokenizer, "Too short.", 64) is None
