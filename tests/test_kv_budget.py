"""The KV budget: KV_CACHE_MB in positions of the served model's cache unless KV_TOKENS is
set (server/engine/kv_budget.py), and the served app keeping and reporting that figure."""

from __future__ import annotations

import logging

import pytest

from server.config import DEFAULTS, ConfigError
from server.engine import kv_budget, synthetic
from server.engine.kv_budget import MIB
from tests.conftest import ready_details

TINY_CONTEXT = 1024  # synthetic:tiny's n_positions
TINY_FLOAT32_BYTES = 2 * 2 * 64 * 4  # 2 layers x (K, V) x 64 dims x 4 bytes: DTYPE=float32


def _resolve(preset: str, cache_dtype: str, kv_tokens: int | None = None,
             cache_mb: float = DEFAULTS["KV_CACHE_MB"]) -> kv_budget.KVBudget:
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
    # KV_DTYPE=int8: a byte an element and a float32 scale per (layer, k|v, KV head, position)
    ("gpt2-large", "int8", 97_920, 2409),  # 36 x 2 x 20 x (64 + 4): 1.88x float16's
    ("qwen2.5-1.5b", "int8", 14_784, 15958),  # 28 x 2 x 2 x (128 + 4)
    ("llama-3.2-1b", "int8", 17_408, 13552),  # 16 x 2 x 8 x (64 + 4)
])
def test_the_default_budget_is_225_mib_of_the_models_positions(preset, cache_dtype,
                                                               position_bytes, tokens) -> None:
    budget = _resolve(preset, cache_dtype)
    assert budget.position_bytes == position_bytes
    assert budget.tokens == tokens and not budget.capped


def test_the_startup_line_says_how_the_figure_was_derived() -> None:
    assert _resolve("qwen2.5-1.5b", "float16").summary() == \
        "KV budget: 225 MiB = 8,228 positions of 28,672 B (float16 cache)"
    assert _resolve("gpt2-large", "int8").summary() == \
        "KV budget: 225 MiB = 2,409 positions of 97,920 B (int8 cache)"


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


@pytest.mark.parametrize(("dtype", "position_bytes"), [("float32", TINY_FLOAT32_BYTES),
                                                        ("float16", TINY_FLOAT32_BYTES // 2)])
def test_the_served_app_keeps_reports_and_enforces_the_derived_budget(
        make_app, operator_headers, caplog, dtype, position_bytes) -> None:
    """100 float32 positions of tiny's cache; DTYPE=float16 stores float16 (twice as many)."""
    caplog.set_level(logging.INFO, logger="server.web.service")
    tokens = 100 * TINY_FLOAT32_BYTES // position_bytes
    app = make_app(DTYPE=dtype, KV_CACHE_MB=100 * TINY_FLOAT32_BYTES / MIB)
    client = app.test_client()
    assert app.extensions["model_service"].scheduler.kv_tokens == tokens
    assert f"= {tokens} positions of {position_bytes:,} B" in caplog.text
    assert ready_details(client, operator_headers)["kv_tokens"] == tokens
    # MAX_REQUEST_KV_TOKENS=0: one request may reserve the whole derived budget, no more
    words = " ".join(f"w{i}" for i in range(40))
    refused = client.post("/generate-text", json={"prompt": words, "max_new_tokens": tokens})
    assert refused.status_code == 413
    assert refused.json["error"]["details"]["limit"] == tokens


@pytest.mark.parametrize("kv_tokens", [300, 0])
def test_the_served_app_keeps_an_explicit_kv_tokens(make_app, operator_headers,
                                                    kv_tokens) -> None:
    app = make_app(KV_TOKENS=kv_tokens, KV_CACHE_MB=0.0001)  # no position: unused
    assert app.extensions["model_service"].scheduler.kv_tokens == kv_tokens
    assert ready_details(app.test_client(), operator_headers)["kv_tokens"] == kv_tokens


def test_the_served_app_reports_an_int8_cache_and_derives_its_budget_from_it(
        make_app, operator_headers) -> None:
    """KV_DTYPE=int8: /ready says int8 (kv_dtype, code_path.cache_dtype), the budget is
    KV_CACHE_MB in int8 positions (a byte an element plus a float32 scale per head), and a
    request is served."""
    int8_bytes = kv_budget.position_bytes(synthetic.model_config("tiny"), "int8")
    assert int8_bytes == 2 * 2 * 2 * (32 + 4)  # tiny: 2 layers, 2 heads of 32
    app = make_app(KV_DTYPE="int8", KV_CACHE_MB=100 * TINY_FLOAT32_BYTES / MIB)
    client = app.test_client()
    details = ready_details(client, operator_headers)
    assert details["kv_dtype"] == details["code_path"]["cache_dtype"] == "int8"
    assert details["kv_tokens"] == 100 * TINY_FLOAT32_BYTES // int8_bytes
    answer = client.post("/generate-text", json={"prompt": "hello there", "max_new_tokens": 4})
    assert answer.status_code == 200 and answer.json["usage"]["completion_tokens"] == 4
