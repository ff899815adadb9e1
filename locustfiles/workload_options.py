"""The ``--workload`` options (locustfiles/workloads.py), added by run_options.add_options.

Each also reads the environment variable shown and ``locust.conf``; a malformed length
distribution is refused when the options are parsed, with the forms it accepts.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from locustfiles.lengths import parse_lengths
from locustfiles.workloads import WORKLOADS, WorkloadSpec

if TYPE_CHECKING:
    from locust.argument_parser import LocustArgumentParser

DEFAULTS = WorkloadSpec()


def length_option(text: str) -> str:
    """Check a ``--prompt-tokens`` / ``--output-tokens`` value; keep it as written."""
    try:
        parse_lengths(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def positive_int(text: str) -> int:
    """An integer >= 1 (counts of turns, groups, tokens, pool size)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be an integer >= 1")
    return value


def add_workload_options(parser: LocustArgumentParser) -> None:
    """Add --workload and its settings to Locust's parser."""
    parser.add_argument("--workload", env_var="LOCUST_WORKLOAD", default="mix",
                        choices=WORKLOADS,
                        help="mix (the --mix users) or a seeded /v1 workload: lengths, "
                             "sharegpt (--dataset), chat (multi-turn), prefix (shared system "
                             "prompts); see locustfiles/workloads.py")
    parser.add_argument("--prompt-tokens", env_var="LOCUST_PROMPT_TOKENS",
                        type=length_option, default=DEFAULTS.prompt_tokens,
                        help="prompt length in the served tokenizer's tokens: fixed:N, "
                             "uniform:min=A,max=B, normal:mean=M,sd=S,min=A,max=B or "
                             "lognormal:mean=M,sd=S,min=A,max=B")
    parser.add_argument("--output-tokens", env_var="LOCUST_OUTPUT_TOKENS",
                        type=length_option, default=DEFAULTS.output_tokens,
                        help="answer length in tokens, same forms (sent as max_tokens with "
                             "ignore_eos); bounds the ShareGPT reference lengths")
    parser.add_argument("--dataset", env_var="LOCUST_DATASET", default="",
                        help="ShareGPT-format JSON/JSONL file on disk (sharegpt; chat turns)")
    parser.add_argument("--dataset-seed", env_var="LOCUST_DATASET_SEED", type=int,
                        default=DEFAULTS.seed, help="seed of the workload's draws")
    parser.add_argument("--dataset-size", env_var="LOCUST_DATASET_SIZE", type=positive_int,
                        default=DEFAULTS.size,
                        help="requests in the workload's pool (ShareGPT: conversations kept)")
    parser.add_argument("--chat-turns", env_var="LOCUST_CHAT_TURNS", type=positive_int,
                        default=DEFAULTS.chat_turns,
                        help="chat: turns before a conversation starts again")
    parser.add_argument("--chat-max-tokens", env_var="LOCUST_CHAT_MAX_TOKENS",
                        type=positive_int, default=DEFAULTS.chat_max_tokens,
                        help="chat: a new conversation starts when the next turn's context "
                             "plus its answer would pass this many tokens")
    parser.add_argument("--prefix-groups", env_var="LOCUST_PREFIX_GROUPS", type=positive_int,
                        default=DEFAULTS.prefix_groups,
                        help="prefix: system prompts, each shared by its group's requests")
    parser.add_argument("--prefix-tokens", env_var="LOCUST_PREFIX_TOKENS", type=positive_int,
                        default=DEFAULTS.prefix_tokens,
                        help="prefix: tokens of each shared system prompt")
    parser.add_argument("--tokenizer", env_var="LOCUST_TOKENIZER", default="",
                        help="tokenizer.json (or a model folder with one) that counts "
                             "tokens; default $MODELS_DIR/synthetic-*/tokenizer.json, else "
                             "words (noted in run.json)")
