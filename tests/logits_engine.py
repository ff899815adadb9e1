"""A StepEngine that records the logits each row samples from: for comparing what two ways
of computing a step give (cache precisions, copied prefixes). The tiny model's greedy tokens
barely depend on the context; its logits do."""

from __future__ import annotations

import torch

from server.engine.step import StepEngine


class LogitsEngine(StepEngine):
    """Records the logits each row samples from, in ``seen``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[torch.Tensor] = []

    def _sample(self, row, logits):
        self.seen.append(logits.clone())
        return super()._sample(row, logits)
