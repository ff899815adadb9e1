"""Load a causal LM (HF folder, hub id, or synthetic preset) and generate with it."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from server import synthetic
from server.decoding import Generation, GenerationRequest, OnStep, generate_batch
from server.memory import release_free_heap
from server.quantize import conv1d_to_linear, own_memory, quantize_int8, weight_bytes

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SYNTHETIC_PREFIX = "synthetic:"


def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises bf16 arithmetic (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


INT8 = "int8"  # float32 model, every linear layer as a dynamic int8 Linear (server.quantize)


def resolve_dtype(name: str) -> torch.dtype:
    """Map DTYPE (auto|float32|bfloat16|int8) to the dtype the model is loaded in: auto picks
    bf16 if native; int8 loads float32 and is quantized after loading."""
    if name == "auto":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if name == INT8:
        return torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"DTYPE must be one of auto, {', '.join(DTYPES)}, {INT8}; "
                         f"got {name!r}") from None


def resolve_source(model: str, models_dir: str) -> str:
    """Return what from_pretrained should load: a folder, or a hub id as given."""
    if model.startswith(SYNTHETIC_PREFIX):
        preset = model.removeprefix(SYNTHETIC_PREFIX)
        return str(synthetic.ensure_built(preset, models_dir))
    return model


@dataclass
class LoadedModel:
    """A model ready to generate: weights in eval mode, its tokenizer, and load facts."""

    name: str
    model: torch.nn.Module
    tokenizer: object  # a transformers PreTrainedTokenizerBase
    dtype: torch.dtype
    context_window: int
    load_s: float
    weight_bytes: int
    quantized: bool = False  # linear layers in int8 (DTYPE=int8)

    @property
    def precision(self) -> str:
        """What the weights are served in: float32, bfloat16 or int8."""
        return INT8 if self.quantized else str(self.dtype).removeprefix("torch.")

    @property
    def eos_id(self) -> int:
        """The id that ends a generation."""
        return int(self.tokenizer.eos_token_id)

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        ignore_eos: bool = False,
        cancelled: Callable[[int], bool] = lambda index: False,
        on_token: Callable[[int, int], None] = lambda index, token: None,
        on_step: OnStep = lambda phase, rows, forward_s, step_s: None,
    ) -> list[Generation]:
        """Continue a batch of tokenized prompts (see server.decoding)."""
        return generate_batch(self.model, requests, self.eos_id, ignore_eos, cancelled,
                              on_token, on_step)


def load_model(name: str, dtype: str = "auto", models_dir: str = "models") -> LoadedModel:
    """Load ``name`` with the ordinary from_pretrained code, in eval mode.

    Runs in the Gunicorn master before fork, so it must not start torch's thread pools:
    the caller pins torch to one thread first (see server.service).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.monotonic()
    torch_dtype = resolve_dtype(dtype)
    source = resolve_source(name, models_dir)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype).eval()
    conv1d_to_linear(model)  # the layout oneDNN/fbgemm are fast with (server.quantize)
    if dtype == INT8:
        model = quantize_int8(model)
    own_memory(model)  # let go of the mapped file (server.quantize.own_memory)
    # The replaced modules sit in reference cycles: collect them now, before the master's
    # gc.freeze() would keep them for good (int8 gpt2: 974 MB USS without, 633 with), and
    # hand the C heap they held back to the kernel.
    gc.collect()
    release_free_heap()
    context = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    loaded = LoadedModel(name, model, tokenizer, torch_dtype, int(context),
                         time.monotonic() - start, weight_bytes(model), dtype == INT8)
    log.info("loaded %s as %s: %.2f GB of weights in %.1f s (context %d tokens)",
             name, loaded.precision, loaded.weight_bytes / 1e9, loaded.load_s,
             loaded.context_window)
    return loaded
