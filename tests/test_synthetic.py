"""The synthetic builder: exact GPT-2 architectures, padded tokenizer, idempotent builds."""

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from server.engine import synthetic


@pytest.mark.parametrize(
    ("preset", "published"),
    [("gpt2", 124_439_808), ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)],
)
def test_preset_parameter_count_equals_published_model(preset: str, published: int) -> None:
    assert synthetic.count_params(preset) == published
    assert synthetic.PRESETS[preset].published_params == published


def test_unknown_preset_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="gpt2-large"):
        synthetic.get_preset("gpt5")


def test_tiny_build_loads_through_from_pretrained(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert len(tokenizer) == synthetic.VOCAB_SIZE == model.config.vocab_size
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == 50256
    assert model.config.n_positions == 1024
    assert (tiny_model / "model.safetensors").exists()


def test_tokenizer_round_trips_text(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    text = "Byte-level BPE keeps every byte: café, 42 %, ✓."
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_build_is_idempotent(tiny_model: Path) -> None:
    weights = tiny_model / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert synthetic.build("tiny", tiny_model.parent) == tiny_model
    assert weights.stat().st_mtime_ns == before


def test_stale_build_is_rebuilt(tmp_path: Path) -> None:
    target = synthetic.build("tiny", tmp_path)
    (target / "build.json").write_text('{"builder_version": 0}')
    assert not synthetic.is_built(tmp_path, "tiny")
    synthetic.build("tiny", tmp_path)
    assert synthetic.is_built(tmp_path, "tiny")
