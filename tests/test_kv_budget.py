"""The KV budget: KV_CACHE_MB in positions of the served model's cache unless KV_TOKENS is
set (server/engine/kv_budget.py)."""

from __future__ import annotations

import pytest

from server.config import DEFAULTS, ConfigError
from server.engine import kv_budget, synthetic
from server.engine.kv_budget import MIB

TINY_CONTEXT = 1024  # synthetic:tiny's n_positions
TINY_FLOAT32_BYTES = 2 * 2 * 64 * 4  # 2 layers x (K, V) x 64 dims x 4 bytes: DTYPE=float32


def _resolve(preset: str, cache_dtype: str, kv_tokens: int | None = None,
             cache_mb: float = 225.0) -> kv_budget.KVBudget:
    """The budget of ``preset`` from its config alone (no weights), 8 rows of its context."""
    config = synthetic.model_config(preset)
    context = getattr(config, "n_positions", None) or config.max_position_embeddings
    return kv_budget.resolve(config, cache_dtype, kv_tokens=kv_tokens, cache_mb=cache_mb,
                             ceiling=DEFAULTS["MAX_BATCH_SIZE"] * context)


@pytest.mark.parametrize(("preset", "cache_dtype", "position_bytes", "tokens"), [
    # 36 layers x 2 x 20 heads x 64 dims x 2 bytes: the 1,280 KV_TOKENS was sized for
    ("gpt2-large", "float16", 184_320, 1280),
    ("gpt2-large", "float32", 368_640, 640),  # DTYPE=float32 keeps a float32 cache
    ("qwen2.5-1.5b", "float16", 28_672, 8228),  # 28 layers, 2 KV heads x 128
    ("qwen2.5-1.5b", "bfloat16", 28_672, 8228),
    ("llama-3.2-1b", "float16", 32_768, 7200),  # 16 layers, 8 KV heads x 64
])
def test_the_default_budget_is_225_mib_of_the_models_positions(preset, cache_dtype,
                                                               position_bytes, tokens) -> None:
    budget = _resolve(preset, cache_dtype)
    assert budget.position_bytes == position_bytes
    assert budget.tokens == tokens and not budget.capped


def test_the_startup_line_says_how_the_figure_was_derived() -> None:
    assert _resolve("qwen2.5-1.5b", "float16").summary() == \
        "KV budget: 225 MiB = 8,228 positions of 28,672 B (float16 cache)"


def test_a_tiny_models_budget_is_capped_at_its_rows_times_its_context() -> None:
    budget = _resolve("tiny", "float32")
    assert budget.derived == 225 * MIB // TINY_FLOAT32_BYTES  # 230,400 positions
    assert budget.capped and budget.tokens == DEFAULTS["MAX_BATCH_SIZE"] * TINY_CONTEXT
    assert "capped at 8,192" in budget.summary()


@pytest.mark.parametrize("kv_tokens", [500, 0, 10**6])
def test_an_explicit_kv_tokens_wins_uncapped_and_0_is_no_limit(kv_tokens) -> None:
    budget = _resolve("tiny", "float32", kv_tokens=kv_tokens, cache_mb=0.0001)
    assert budget.tokens == kv_tokens and not budget.capped


def test_a_cache_that_holds_no_position_is_a_config_error_naming_kv_cache_mb() -> None:
    with pytest.raises(ConfigError, match=r"KV_CACHE_MB=0\.1 holds no KV position"):
        _resolve("gpt2-large", "float16", cache_mb=0.1)
