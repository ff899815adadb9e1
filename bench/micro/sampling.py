"""What drawing one token costs on this CPU: greedy, temperature, temperature + top_p.

    python -m bench sampling --vocab 50257 --threads 2

The engine samples each row after the step's forward, one row after another, so an 8-row
step pays eight draws. Times ``server.engine.decoding.choose_token`` (median ms of
``--repeats``, bench.timing) on logits shaped like a synthetic checkpoint's (nearly flat:
the top_p=0.95 head holds most of the vocabulary, the slowest case for a sort).
"""

from __future__ import annotations

import argparse

import torch

from bench.timing import median_ms
from server.engine.decoding import GenerationRequest, choose_token, make_rng

CASES = {"greedy": {}, "temperature 0.8": {"temperature": 0.8},
         "temperature 0.8, top_p 0.95": {"temperature": 0.8, "top_p": 0.95}}


def draw_ms(request: GenerationRequest, logits: torch.Tensor, repeats: int) -> float:
    """Median ms of one ``choose_token`` call for ``request``."""
    rng = make_rng(1)
    return median_ms(lambda: choose_token(logits, request, rng), repeats)


def main(argv: list[str] | None = None) -> int:
    """Print one line per sampling case."""
    parser = argparse.ArgumentParser(prog="python -m bench sampling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logits = torch.randn(args.vocab, generator=torch.Generator().manual_seed(0))
    for name, sampling in CASES.items():
        request = GenerationRequest([1], 1, seed=1, **sampling)
        print(f"{name:28s} {draw_ms(request, logits, args.repeats):7.3f} ms a token")
    return 0
