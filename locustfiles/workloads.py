"""Workloads: what the /v1 users send, built once per process from a seed, with a manifest.

``--workload`` picks one (``mix``, the default, keeps the ``--mix`` users and their texts):

==========  ===========================================================================
lengths     /v1/completions: prompts of ``--prompt-tokens`` tokens cut from the shipped
            corpus, answers of ``--output-tokens`` tokens (``ignore_eos``)
sharegpt    /v1/completions: the first user turn of each ``--dataset`` conversation,
            answer length = its reference answer's tokens (clipped to --output-tokens)
chat        /v1/chat/completions, multi-turn: each turn resends the earlier turns and the
            server's answers, up to ``--chat-turns`` turns or ``--chat-max-tokens`` tokens
            of context, then a new conversation (turns from ``--dataset`` when given;
            else ``--dataset-size`` / ``--chat-turns`` conversations)
prefix      /v1/chat/completions: ``--prefix-groups`` system prompts of ``--prefix-tokens``
            tokens, each shared by every request of its group (round-robin over the pool)
==========  ===========================================================================

Every process builds the same pool of ``--dataset-size`` requests from ``--dataset-seed``
(users walk it from their own offsets, as the task users walk locustfiles/data), so run.json's
``workload`` manifest (``manifest()``) describes what any process sent: source, seed, counts
and a SHA-256 of the pool's content. Lengths are in the served tokenizer's tokens
(locustfiles/token_text.py). The prefix cache is per API key and ``cache_salt``: all users
send the suite's one key and no salt, so the requests of a group can share their prefix.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

from locustfiles.lengths import LengthDistribution, parse_lengths
from locustfiles.sharegpt import read_sharegpt
from locustfiles.token_text import TokenText, load_token_text

WORKLOADS = ("mix", "lengths", "sharegpt", "chat", "prefix")
# The user class each workload runs (locustfiles/workload_users.py).
WORKLOAD_USERS = {"lengths": ("LengthsUser",), "sharegpt": ("LengthsUser",),
                  "chat": ("MultiTurnChatUser",), "prefix": ("SharedPrefixUser",)}


@dataclass(frozen=True)
class WorkloadSpec:
    """The workload options of a run (hashable: one built workload per spec and process)."""

    kind: str = "mix"
    prompt_tokens: str = "lognormal:mean=200,sd=80,min=8,max=700"
    output_tokens: str = "uniform:min=16,max=128"
    dataset: str = ""
    seed: int = 0
    size: int = 256
    chat_turns: int = 4
    chat_max_tokens: int = 768
    prefix_groups: int = 4
    prefix_tokens: int = 256
    tokenizer: str = ""

    @classmethod
    def from_options(cls, options: Any) -> WorkloadSpec:
        """The spec of Locust's parsed options (defaults for options it lacks)."""
        names = {f: f"{'dataset_' if f in ('seed', 'size') else ''}{f}"
                 for f in cls.__dataclass_fields__}
        names["kind"] = "workload"
        return cls(**{f: getattr(options, o) for f, o in names.items()
                      if getattr(options, o, None) not in (None, "")})


@dataclass(frozen=True)
class Item:
    """One planned request: the user text, its tokens, the answer's tokens, its group."""

    prompt: str
    prompt_tokens: int
    output_tokens: int
    group: str = ""
    system: str = ""  # the group's shared system prompt (prefix workload)


@dataclass(frozen=True)
class Workload:
    """A built workload: single requests (``items``) or conversations, and its manifest."""

    spec: WorkloadSpec
    items: tuple[Item, ...]
    conversations: tuple[tuple[Item, ...], ...]
    manifest: dict[str, Any]


def _draw_item(tt: TokenText, rng: random.Random, prompt: LengthDistribution,
               output: LengthDistribution, group: str = "", system: str = "") -> Item:
    n = prompt.draw(rng)
    text = tt.text(n, rng.randrange(1 << 30))
    return Item(text, n, output.draw(rng), group, system)


def _from_dataset(spec: WorkloadSpec, tt: TokenText, output: LengthDistribution,
                  rng: random.Random) -> tuple[tuple[tuple[Item, ...], ...], dict[str, Any]]:
    data = read_sharegpt(spec.dataset)
    chosen = list(data.conversations)
    rng.shuffle(chosen)
    conversations = tuple(
        tuple(Item(user, tt.count(user),
                   min(output.high, max(output.low, tt.count(answer) if answer else output.low)),
                   group=conv.id, system=conv.system)
              for user, answer in conv.exchanges())
        for conv in chosen[:spec.size])
    return conversations, {"source": data.path, "dataset_sha256": data.sha256,
                           "records": data.records, "skipped": data.skipped}


def build_workload(spec: WorkloadSpec) -> Workload:
    """Build the pool of ``spec`` (deterministic for its seed, tokenizer and dataset)."""
    if spec.kind not in WORKLOAD_USERS:
        raise ValueError(f"--workload {spec.kind!r}: use one of {', '.join(WORKLOADS)}")
    if spec.kind == "sharegpt" and not spec.dataset:
        raise ValueError("--workload sharegpt needs --dataset PATH (a ShareGPT JSON/JSONL file)")
    tt = load_token_text(spec.tokenizer)
    prompt, output = parse_lengths(spec.prompt_tokens), parse_lengths(spec.output_tokens)
    rng = random.Random(spec.seed)
    source: dict[str, Any] = {"source": "corpus:locustfiles/data"}
    conversations: tuple[tuple[Item, ...], ...] = ()
    if spec.dataset and spec.kind in ("sharegpt", "chat"):
        conversations, source = _from_dataset(spec, tt, output, rng)
    if spec.kind == "chat":
        conversations = conversations or tuple(
            tuple(_draw_item(tt, rng, prompt, output, group=f"c{c}")
                  for _ in range(spec.chat_turns))
            for c in range(max(1, spec.size // spec.chat_turns)))
        items = tuple(item for conv in conversations for item in conv)
    elif spec.kind == "sharegpt":
        items = tuple(conv[0] for conv in conversations)
    elif spec.kind == "prefix":
        systems = [tt.text(spec.prefix_tokens, rng.randrange(1 << 30))
                   for _ in range(spec.prefix_groups)]
        items = tuple(_draw_item(tt, rng, prompt, output, f"g{i % spec.prefix_groups}",
                                 systems[i % spec.prefix_groups]) for i in range(spec.size))
    else:
        items = tuple(_draw_item(tt, rng, prompt, output) for _ in range(spec.size))
    return Workload(spec, items, conversations,
                    manifest(spec, items, conversations, tt, source))


def manifest(spec: WorkloadSpec, items: tuple[Item, ...],
             conversations: tuple[tuple[Item, ...], ...], tt: TokenText,
             source: dict[str, Any]) -> dict[str, Any]:
    """run.json's ``workload``: what was built, from what, and a hash of its content."""
    content = json.dumps([asdict(i) for i in items], sort_keys=True, ensure_ascii=False)
    counts: dict[str, Any] = {"requests": len(items)}
    if conversations:
        counts["conversations"] = len(conversations)
    if spec.kind == "prefix":
        counts["groups"] = spec.prefix_groups
    n = max(len(items), 1)
    facts: dict[str, Any] = {
        "kind": spec.kind, **source, "seed": spec.seed, "counts": counts,
        "content_sha256": hashlib.sha256(content.encode()).hexdigest(),
        "tokenizer": tt.manifest(),
        "prompt_lengths": spec.prompt_tokens if spec.kind in ("lengths", "prefix") or
        (spec.kind == "chat" and not spec.dataset) else "from the dataset",
        "output_lengths": spec.output_tokens,
        "mean_prompt_tokens": round(sum(i.prompt_tokens for i in items) / n, 1),
        "mean_output_tokens": round(sum(i.output_tokens for i in items) / n, 1),
    }
    if spec.kind == "chat":
        facts["chat"] = {"turns": spec.chat_turns, "max_tokens": spec.chat_max_tokens}
    if spec.kind == "prefix":
        mean_user = facts["mean_prompt_tokens"]
        facts["prefix"] = {"groups": spec.prefix_groups, "tokens": spec.prefix_tokens,
                           "shared_share": round(spec.prefix_tokens /
                                                 (spec.prefix_tokens + mean_user), 3)}
    return facts


@cache
def load_workload(spec: WorkloadSpec) -> Workload:
    """``build_workload``, once per process and spec (every user shares it)."""
    return build_workload(spec)


def workload_facts(options: Any) -> dict[str, Any]:
    """run.json changes for the run's workload: ``{"workload": manifest}``, none for ``mix``."""
    spec = WorkloadSpec.from_options(options)
    return {} if spec.kind == "mix" else {"workload": load_workload(spec).manifest}
