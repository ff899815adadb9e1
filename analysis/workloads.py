"""The workload of a run: its dataset manifest (run.json) and the prefix-cache hit rate.

The hit rate comes from the ``cached_tokens`` column of requests.csv: OpenAI's
``usage.prompt_tokens_details.cached_tokens``, which this server's /v1 answers carry. A
server that does not report it (llama.cpp, or the task routes) leaves the column empty, and
the hit rate is "not reported": never estimated from timings.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

NOT_REPORTED = "not reported"
# Beyond this many groups (a chat run's conversations) the table is by turn instead.
MAX_GROUP_ROWS = 12


@dataclass(frozen=True)
class PrefixCacheHits:
    """Cached / prompt tokens of successful requests, overall and per group (or turn)."""

    reported: bool  # some successful answer carried cached_tokens
    by: str  # "group", "turn" or "" (overall only)
    table: pd.DataFrame  # key, requests, prompt_tokens, cached_tokens, hit_rate
    requests: int
    prompt_tokens: int
    cached_tokens: int

    @property
    def hit_rate(self) -> float | None:
        """Cached prompt tokens / prompt tokens of the answers that reported them."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else None


def _key(answered: pd.DataFrame) -> str:
    groups = answered["workload_group"].dropna()
    if groups.nunique() and groups.nunique() <= MAX_GROUP_ROWS:
        return "group"
    return "turn" if answered["turn"].notna().any() else ""


def prefix_cache_hits(requests: pd.DataFrame) -> PrefixCacheHits | None:
    """The prefix-cache hit rate of successful requests, per workload group when few, else per
    chat turn; None when no request succeeded with a prompt-token count.

    Formula: hit_rate = sum(cached_tokens) / sum(prompt_tokens) over successful requests whose
    answer reported cached_tokens (usage.prompt_tokens_details.cached_tokens), per
    workload_group (at most 12 groups; else per chat turn) and overall; "not reported" when
    no answer carried cached_tokens.
    """
    if requests.empty:
        return None
    answered = requests[requests["success"] & requests["prompt_tokens"].notna()]
    if answered.empty:
        return None
    counted = answered.dropna(subset=["cached_tokens"])
    key = _key(counted) if len(counted) else ""
    table = pd.DataFrame(columns=["key", "requests", "prompt_tokens", "cached_tokens",
                                  "hit_rate"])
    if key:
        table = (
            counted.assign(key=counted[f"workload_{key}" if key == "group" else key])
            .dropna(subset=["key"])
            .groupby("key")
            .agg(requests=("prompt_tokens", "size"), prompt_tokens=("prompt_tokens", "sum"),
                 cached_tokens=("cached_tokens", "sum"))
            .reset_index()
            .assign(hit_rate=lambda d: d["cached_tokens"] / d["prompt_tokens"])
        )  # fmt: skip
    return PrefixCacheHits(
        reported=len(counted) > 0, by=key, table=table, requests=len(counted),
        prompt_tokens=int(counted["prompt_tokens"].sum()),
        cached_tokens=int(counted["cached_tokens"].sum()),
    )


def manifest_line(manifest: dict) -> str:
    """One sentence naming a workload manifest's kind, source, seed, counts and hash."""
    counts = ", ".join(f"{v} {k}" for k, v in (manifest.get("counts") or {}).items())
    tokenizer = manifest.get("tokenizer") or {}
    counted = "the served tokenizer's tokens" if tokenizer.get("kind") == "tokenizer" \
        else "words (no tokenizer.json found: an approximation of the server's tokens)"
    return (
        f"Workload `{manifest.get('kind')}` from `{manifest.get('source')}`, seed "
        f"{manifest.get('seed')}: {counts}; content SHA-256 "
        f"`{str(manifest.get('content_sha256', ''))[:16]}…`; lengths in {counted}; prompt "
        f"lengths {manifest.get('prompt_lengths')}, output lengths "
        f"{manifest.get('output_lengths')} (mean {manifest.get('mean_prompt_tokens')} / "
        f"{manifest.get('mean_output_tokens')} tokens)."
    )
