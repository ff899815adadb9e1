"""A worker's KV budget: the cache positions its running rows may reserve together.

What bounds a worker is memory, and one position's keys and values weigh ten times more on
some models than on others: 184,320 B on gpt2-large (36 layers x 2 x 20 heads x 64 dims x 2
bytes in a float16 cache), 28,672 B on qwen2.5-1.5b (28 layers, 2 KV heads x 128) and
32,768 B on llama-3.2-1b (16 layers, 8 KV heads x 64). A budget counted in positions sized
for one of them (KV_TOKENS=1280 for gpt2-large) runs six 192-position rows at a time on the
others while their memory would hold forty. So unless KV_TOKENS is set, the budget is
KV_CACHE_MB of cache in positions of the served model's cache: its layers, KV heads and head
dim, stored in the dtype the row caches keep (server.engine.code_path's ``cache_dtype``).
225 MiB is gpt2-large's 1,280 positions exactly. An int8 cache (KV_DTYPE=int8) keeps one
byte an element plus a float32 scale per (layer, k|v, kv head, position) (server.engine.
kv_int8): 97,920 B a position on gpt2-large, 2,409 positions in the same 225 MiB.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from server.config import ConfigError
from server.engine import kv_int8, llama_forward

MIB = 2**20


@dataclass(frozen=True)
class KVBudget:
    """The positions a worker's running rows may reserve together, and how they were set."""

    tokens: int  # the budget the scheduler keeps; 0 = no limit beyond MAX_BATCH_SIZE
    position_bytes: int  # one position's keys and values, every layer
    cache_dtype: str  # what the row caches store
    cache_mb: float | None = None  # KV_CACHE_MB it was derived from; None: KV_TOKENS set
    derived: int = 0  # KV_CACHE_MB's positions before the cap (tokens when not capped)

    @property
    def capped(self) -> bool:
        """True when KV_CACHE_MB held more positions than the rows could ever reserve."""
        return self.cache_mb is not None and self.derived > self.tokens

    def summary(self) -> str:
        """One line for the startup log: the figure and where it came from."""
        each = f"{self.position_bytes:,} B ({self.cache_dtype} cache)"
        if self.cache_mb is None and not self.tokens:
            return (f"KV budget: none (KV_TOKENS=0): MAX_BATCH_SIZE rows of any length, "
                    f"positions of {each}")
        if self.cache_mb is None:
            return (f"KV budget: KV_TOKENS={self.tokens:,} positions of {each} = "
                    f"{self.tokens * self.position_bytes / MIB:,.1f} MiB (KV_CACHE_MB unused)")
        line = f"KV budget: {self.cache_mb:g} MiB = {self.derived:,} positions of {each}"
        if self.capped:
            line += (f", capped at {self.tokens:,} (MAX_BATCH_SIZE x the model's context: "
                     "the most its rows could reserve)")
        return line


def model_shape(config: object) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of a transformers config: GPT-2's n_layer and
    n_head of n_embd / n_head; otherwise the Llama family's (grouped KV heads)."""
    if getattr(config, "model_type", None) == "gpt2":
        return int(config.n_layer), int(config.n_head), int(config.n_embd) // int(config.n_head)
    _, kv_heads, head_dim = llama_forward.shape(config)
    return int(config.num_hidden_layers), kv_heads, head_dim


def position_bytes(config: object, cache_dtype: str) -> int:
    """Bytes of one cached position: layers x (keys, values) x KV heads x head dim x the
    cache dtype's size (int8: x (head dim + a float32 scale))."""
    layers, kv_heads, head_dim = model_shape(config)
    if cache_dtype == "int8":
        return layers * 2 * kv_heads * (head_dim + kv_int8.SCALE_BYTES)
    return layers * 2 * kv_heads * head_dim * getattr(torch, cache_dtype).itemsize


def resolve(config: object, cache_dtype: str, *, kv_tokens: int | None, cache_mb: float,
            ceiling: int) -> KVBudget:
    """The budget for a model of ``config`` whose caches store ``cache_dtype``: ``kv_tokens``
    when set (0: none), else ``cache_mb`` MiB in positions, at most ``ceiling`` (the rows x
    the context: a larger budget could never bind). Raises ConfigError when ``cache_mb``
    holds no position."""
    size = position_bytes(config, cache_dtype)
    if kv_tokens is not None:
        return KVBudget(kv_tokens, size, cache_dtype)
    derived = int(cache_mb * MIB) // size
    if derived < 1:
        raise ConfigError(f"KV_CACHE_MB={cache_mb:g} holds no KV position: one takes "
                          f"{size:,} B ({size / MIB:.3g} MiB, {cache_dtype} cache); raise it "
                          "or set KV_TOKENS")
    return KVBudget(min(derived, ceiling), size, cache_dtype, cache_mb, derived)
