"""Per-request ``min_tokens`` (and ``ignore_eos``, its special case): vLLM's extensions.

Load generators such as guidellm and ``vllm bench serve`` ask for a fixed output length by
sending ``ignore_eos`` (or ``min_tokens``) with every request. As in vLLM, the stop token
cannot be chosen until a request has ``min_new_tokens`` new tokens: its logit is masked
before sampling, so the text stays text (no stop token in it) and a greedy request picks
the best other token. ``ignore_eos`` is ``min_new_tokens = max_new_tokens``: exactly the
requested tokens. The server-wide ``IGNORE_EOS`` setting is the engine's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from server.decoding import GenerationRequest
from server.engine import Row, StepEngine


@dataclass(frozen=True)
class BoundedRequest(GenerationRequest):
    """A generation request that may not stop before ``min_new_tokens`` tokens."""

    min_new_tokens: int = 0


class MinTokensEngine(StepEngine):
    """StepEngine that masks the stop token of rows still short of their minimum."""

    def _sample(self, row: Row, logits: torch.Tensor) -> int | None:
        if len(row.tokens) < getattr(row.request, "min_new_tokens", 0):
            logits = logits.clone()  # a view of the step's logits: leave the other rows'
            logits[self.eos_id] = float("-inf")
        return super()._sample(row, logits)
