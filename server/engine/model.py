"""Load a causal LM (HF folder, hub id, or synthetic preset) in the precision measured fastest."""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from server.engine import (
    checkpoint,
    gpt2_model,
    kernels,
    llama_model,
    native_f16,
    native_gemm,
    native_int8,
    synthetic,
)
from server.engine.huge_pages import collapse_weights
from server.engine.kernels import KernelChoice
from server.engine.memory import release_free_heap
from server.engine.quantize import conv1d_to_linear, own_memory, quantize_int8, weight_bytes

log = logging.getLogger(__name__)

INT8 = kernels.INT8  # float32 model, every linear layer as a dynamic int8 Linear
DTYPE_CHOICES = ("auto", kernels.FLOAT32, kernels.FLOAT16, kernels.F16_NATIVE, kernels.BFLOAT16,
                 kernels.BF16_NATIVE, INT8, kernels.INT8_NATIVE)
SYNTHETIC_PREFIX = "synthetic:"


def check_dtype(name: str) -> str:
    """Return DTYPE if valid (DTYPE_CHOICES), else raise naming them."""
    if name not in DTYPE_CHOICES:
        raise ValueError(f"DTYPE must be one of {', '.join(DTYPE_CHOICES)}; got {name!r}")
    return name


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
    kernels: KernelChoice  # what was timed at startup and what is served
    context_window: int
    load_s: float
    weight_bytes: int
    stop_ids: frozenset[int]  # every id that ends a generation (generation_stop_ids)
    huge_page_bytes: int = 0  # weight bytes moved onto 2 MB pages (server.engine.huge_pages)

    @property
    def precision(self) -> str:
        """The number format served: float32, float16, bfloat16 or int8 (the kernel path, e.g.
        float32+onednn, is ``kernels.chosen``)."""
        return self.kernels.chosen.split("+")[0]

    @property
    def quantized(self) -> bool:
        """True when the linear layers are int8."""
        return self.precision == INT8

    @property
    def eos_id(self) -> int:
        """The tokenizer's eos: the one stop id where a single id is needed (an empty
        prompt's context, the kernel timing prompts)."""
        return int(self.tokenizer.eos_token_id)


def generation_stop_ids(model: torch.nn.Module, eos_id: int) -> frozenset[int]:
    """The ids that end a generation: the model's generation config's ``eos_token_id`` (one
    id or a list, as Hugging Face checkpoints state it: Llama-3.2-1B-Instruct's three,
    Qwen2.5-Instruct's two) and the tokenizer's ``eos_id``, which always stops."""
    stated = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if stated is None:  # no generation config (a custom model): the tokenizer's eos alone
        stated = []
    elif isinstance(stated, int):
        stated = [stated]
    return frozenset({eos_id, *(int(i) for i in stated)})


# What transformers' per-model tokenizer classes (Qwen2Tokenizer, GPT2Tokenizer,
# LlamaTokenizer in 5.24) keep of the vocabulary and merges they built their Rust tokenizer
# from; only their __init__ reads them.
BUILD_COPIES = ("_vocab", "_merges")


def drop_build_copies(tokenizer: object) -> None:
    """Delete the Python copies of the vocabulary ``tokenizer`` no longer reads
    (``BUILD_COPIES``): 26 MB in Qwen's 151,936-token case, in the master and so in every
    worker's share. Encoding, decoding and ``get_vocab`` read the Rust tokenizer."""
    for name in BUILD_COPIES:
        if name in vars(tokenizer):
            delattr(tokenizer, name)


def read_model(source: str) -> torch.nn.Module:
    """The checkpoint at ``source`` in float32, eval mode: a GPT-2 or Llama-family folder
    of safetensors as server.engine.gpt2_model's or llama_model's tree (no transformers model
    class imported: server.engine.checkpoint), anything else with ``from_pretrained``."""
    for family in (gpt2_model, llama_model):
        model = family.load(source)
        if model is not None:
            return model
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()


def load_model(name: str, dtype: str = "auto", models_dir: str = "models",
               allow_int8: bool = False, max_batch: int = 8, huge_pages: bool = True,
               ) -> LoadedModel:
    """Load ``name`` in float32 (``read_model``), then serve the precision and kernel path
    that ``server.engine.kernels`` measures fastest among those DTYPE allows (auto: every
    one; int8 only with ``allow_int8``), then (``huge_pages``) move the served weights onto
    2 MB pages (server.engine.huge_pages; after the timing, so every candidate was timed on
    the same pages).

    An explicit ``DTYPE=bfloat16+native`` (or ``float16+native``, ``int8+native``) this
    machine cannot run raises ConfigError (naming the missing CPU features) before any weight
    is read.

    Runs in the Gunicorn master before fork, so it must not start torch's thread pools:
    the caller pins torch to one thread first (see server.web.service).
    """
    from transformers import AutoTokenizer

    start = time.monotonic()
    check_dtype(dtype)
    if dtype == kernels.BF16_NATIVE:
        native_gemm.require()  # before the weights: a CPU that cannot run it fails at once
    if dtype == kernels.INT8_NATIVE:
        native_int8.require()
    if dtype == kernels.F16_NATIVE:
        native_f16.require()
    source = resolve_source(name, models_dir)
    # A folder's config, read as the tree reads it: AutoTokenizer would otherwise
    # load it through AutoConfig, whose Llama class costs 50 MiB (checkpoint.read_config).
    folder = Path(source)
    config = checkpoint.read_config(folder) if (folder / checkpoint.CONFIG).is_file() else None
    tokenizer = AutoTokenizer.from_pretrained(source, config=config)
    drop_build_copies(tokenizer)
    model = read_model(source)
    stops = generation_stop_ids(model, int(tokenizer.eos_token_id))  # before any module swap
    attention = model.config._attn_implementation
    conv1d_to_linear(model)  # the layout oneDNN/fbgemm are fast with (server.engine.quantize)
    own_memory(model)  # let go of the mapped file (server.engine.quantize.own_memory)
    model, choice = kernels.choose(model, int(tokenizer.eos_token_id), dtype,
                                   allow_int8 or dtype.startswith(INT8), max_batch,
                                   quantize_int8)
    model.config._attn_implementation = attention  # the step engine sets its own again
    # The modules the served path replaced (the float32 linears, GPT-2's Conv1D) sit in
    # reference cycles: collect them now, before the master's gc.freeze() would keep them for
    # good (int8 gpt2, when the candidates were built here too: 974 MB USS without, 633 with),
    # and hand the C heap they held back to the kernel.
    gc.collect()
    release_free_heap()
    moved = collapse_weights(model) if huge_pages else None
    if moved is not None:
        log.info(moved.summary())
    context = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    loaded = LoadedModel(name, model, tokenizer, choice, int(context),
                         time.monotonic() - start, weight_bytes(model), stops,
                         moved.collapsed_bytes if moved else 0)
    log.info("loaded %s as %s: %.2f GB of weights in %.1f s (context %d tokens)",
             name, choice.chosen, loaded.weight_bytes / 1e9, loaded.load_s,
             loaded.context_window)
    return loaded
