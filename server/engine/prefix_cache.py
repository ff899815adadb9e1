"""Finished rows' KV caches, kept for later prompts that start the same way (prefix caching).

A row's keys and values at position i depend only on tokens 0..i, so a new prompt that
shares its first n tokens with a finished row can copy that row's first n positions instead
of computing them. llama.cpp's server does this per slot (``cache_prompt``: the next
request goes to the slot whose tokens share the longest prefix with its prompt); vLLM calls
it automatic prefix caching. On our own Locust mix (``--mix openai``, 8 users, AMD EPYC
Zen 4) llama.cpp computed 5,877 of the 13,726 prompt tokens it was sent: chat templates and
shared instructions repeat, and prefill is most of a CPU's work on this mix.

``PrefixCache`` keeps up to ``max_rows`` finished caches, most recently used last. ``find``
returns the kept cache with the longest common prefix (at least ``MIN_SHARED`` tokens) and
that length; the caller copies those positions (``RowCache.copy_prefix``), and the entry
stays for the next prompt. The scheduler keeps at most ``KV_TOKENS`` positions of them
beside the running rows' reservations, evicting the oldest first.

Entries belong to a scope: the tenant (API key id) that made them and the request's
``cache_salt`` (vLLM's name). ``find`` looks only at entries of the prompt's own scope, so a
tenant can never reuse, or time, another tenant's cached prompt: shared across keys, key B
reused 78 of key A's cached tokens, a secret included (issue 29). Capacity stays shared
(least recently used first), as in vLLM, whose ``cache_salt`` isolates hashes, not memory.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from server.engine.row_cache import RowCache

# Shorter shared prefixes are computed again: below this the copy saves less than a step.
MIN_SHARED = 16


@dataclass(eq=False)  # entries are distinct by identity: two scopes may hold equal tokens
class Entry:
    """A finished row's cache, the tokens it holds keys and values for (in order), and the
    scope (tenant, cache_salt) that may reuse it."""

    tokens: list[int]
    cache: RowCache
    scope: Hashable = ""


class PrefixCache:
    """Up to ``max_rows`` finished rows' caches (0: keep none), most recently used last."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max(0, max_rows)
        self._entries: list[Entry] = []
        # Kept up to date by keep and _drop, so request threads read it (the request log's
        # kv_kept_mb) without walking the list the generation thread changes.
        self._positions = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def positions(self) -> int:
        """KV positions the kept caches hold."""
        return self._positions

    def find(self, prompt: Sequence[int], scope: Hashable = "") -> tuple[RowCache, int] | None:
        """The kept cache of ``scope`` sharing the longest prefix with ``prompt`` and that
        prefix's length, at most ``len(prompt) - 1`` (the last prompt token is fed: its
        logits give the first new token); None when no entry shares ``MIN_SHARED`` tokens."""
        best, shared = None, 0
        for entry in self._entries:
            if entry.scope != scope:
                continue  # another tenant's (or salt's) prompt: never reused
            n = _common_prefix(entry.tokens, prompt, len(prompt) - 1)
            if n > shared:
                best, shared = entry, n
        if best is None or shared < MIN_SHARED:
            return None
        self._entries.remove(best)
        self._entries.append(best)  # most recently used
        return best.cache, shared

    def keep(self, tokens: list[int], cache: RowCache, scope: Hashable = "",
             prompt_length: int | None = None) -> None:
        """Keep ``cache`` (holding ``tokens``, the first ``prompt_length`` of them its prompt;
        default: all) for ``scope``; the oldest beyond ``max_rows`` are evicted. With
        ``max_rows`` 0 the cache is released at once.

        That scope's entries the new one makes redundant are dropped: those it extends, and
        those sharing its whole prompt (another answer to the same prompt: every later prompt
        finds at least as much in the newer entry, up to where the answers part). So repeated
        prompts hold one entry, not one per answer, and ``max_rows`` holds distinct prompts:
        on the OpenAI mix's prompt sequence (8 users, replayed:
        results/profile/prefix-cache-policy.txt) 8 rows kept 25% of prompt tokens with this
        and 22% without. llama.cpp's RAM prompt cache does the same: a state already
        contained in the cache is not saved again."""
        if not self.max_rows or not tokens:
            cache.release()
            return
        # at least one token: an entry is dropped for what the new one holds, never for nothing
        prompt = len(tokens) if prompt_length is None else max(1, min(prompt_length, len(tokens)))
        for entry in list(self._entries):
            covered = min(len(entry.tokens), prompt)
            if entry.scope == scope and \
                    _common_prefix(entry.tokens, tokens, covered) == covered:
                self._drop(entry)
        self._entries.append(Entry(list(tokens), cache, scope))
        self._positions += len(tokens)
        while len(self._entries) > self.max_rows:
            self.evict_oldest()

    def evict_oldest(self) -> bool:
        """Release the least recently used entry; False when there is none."""
        if not self._entries:
            return False
        self._drop(self._entries[0])
        return True

    def _drop(self, entry: Entry) -> None:
        self._entries.remove(entry)
        self._positions -= len(entry.tokens)
        entry.cache.release()


def cached_tokens(prompt: Sequence[int], generated: Sequence[int], length: int) -> list[int]:
    """The tokens a row's cache holds: its prompt then its generated tokens, as far as its
    ``length`` (the last generated token is never fed back, so it has no keys yet)."""
    return (list(prompt) + list(generated))[:length]


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if n >= limit or x != y:
            break
        n += 1
    return n
