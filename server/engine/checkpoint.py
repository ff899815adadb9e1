"""Read a Hugging Face folder of safetensors into a module tree of the project's own.

Importing any of transformers' model classes costs the server ~80 MB it never uses:
``transformers/masking_utils.py`` imports ``torch._dynamo`` unconditionally, which brings
sympy, torch.distributed and torch.onnx with it (results/profile/master-memory-zen4.txt,
section 3), all of it in the Gunicorn master and so in the tree's PSS. The step engine runs
the families it serves fast (server.engine.llama_forward, gpt2_forward and the C layers)
from the module tree alone, so server.engine.llama_model and gpt2_model build that tree
themselves, under the names transformers gives it; this module does what both need: find
the weight files, read the config, build on meta tensors, assign the checkpoint's tensors
(float32, as ``from_pretrained(dtype=torch.float32)``), tie the head, attach the generation
config. The config and generation config classes are transformers' own, and most are cheap
to import; ``read_config`` says which is not and how it is avoided.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

WEIGHTS, INDEX, CONFIG = "model.safetensors", "model.safetensors.index.json", "config.json"
# Config classes whose module costs memory to import, with the fields the class adds to
# transformers' base PreTrainedConfig. transformers 5.24's configuration_llama imports
# utils.type_validators, which imports transformers.activations and through it hub kernels,
# the sharding utilities, torch.distributed.tensor and sympy: an idle llama-3.2-1b Gunicorn
# tree's PSS 2,706 -> 2,656 MiB without them (results/profile/llama-config-import-zen2.txt);
# configuration_qwen2 and configuration_gpt2 import none of it.
COSTLY_CONFIGS = {
    "llama": frozenset({
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "hidden_act", "max_position_embeddings",
        "initializer_range", "rms_norm_eps", "use_cache", "pad_token_id", "bos_token_id",
        "eos_token_id", "pretraining_tp", "tie_word_embeddings", "rope_parameters",
        "attention_bias", "attention_dropout", "mlp_bias", "head_dim"}),
}


class CausalTree(nn.Module):
    """The top of a tree: its body (the attribute ``BODY`` names), ``lm_head``, the config,
    the generation config (set by ``load_tree``) and the embedding accessors server.engine's
    kernels use, under transformers' names. No forward: a lean forward or the C layers run
    it."""

    BODY, EMBEDDING = "model", "embed_tokens"  # where the input embedding lives

    def __init__(self, config: object, body: nn.Module) -> None:
        super().__init__()
        self.config = config
        setattr(self, self.BODY, body)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.generation_config = None

    def get_input_embeddings(self) -> nn.Module:
        return getattr(getattr(self, self.BODY), self.EMBEDDING)

    def set_input_embeddings(self, value: nn.Module) -> None:
        setattr(getattr(self, self.BODY), self.EMBEDDING, value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head


def load_tree(source: str, unsupported: Callable[[object], str | None],
              build: Callable[[object], nn.Module],
              rename: Callable[[str], str | None] = str,
              transposed: Callable[[object], frozenset[str]] = lambda config: frozenset(),
              ) -> nn.Module | None:
    """The checkpoint in folder ``source`` as ``build(config)``'s tree in float32, eval mode,
    or None where it is not built here: not a folder of safetensors, or a config
    ``unsupported`` names a reason for. ``rename`` maps a checkpoint name to the tree's (None:
    not a weight, skipped); ``transposed(config)`` names tensors stored [in, out] (GPT-2's
    Conv1D) that the tree's ``nn.Linear`` holds [out, in]."""
    folder = Path(source)
    files = weight_files(folder) if folder.is_dir() else None
    if files is None:
        return None
    config = read_config(folder)
    if unsupported(config) is not None:
        return None
    model = build(config)
    state = {}
    for name, tensor in read_state(files).items():
        if (renamed := rename(name)) is not None:
            state[renamed] = tensor
    for name in transposed(config) & state.keys():
        state[name] = state[name].t().contiguous()
    assign_weights(model, state, bool(getattr(config, "tie_word_embeddings", True)))
    model.generation_config = generation_config(folder, config)
    config.dtype = torch.float32  # what from_pretrained(dtype=torch.float32) records
    return model.eval()


def read_config(folder: Path) -> object:
    """The config of the checkpoint in ``folder``, as ``AutoConfig.from_pretrained`` gives it.

    A ``COSTLY_CONFIGS`` model type whose config.json holds every field its class adds, and a
    RoPE already in transformers 5's form (``rope_parameters`` naming its ``rope_type`` and
    ``rope_theta``), is read as the base ``PreTrainedConfig`` instead: the class would default
    nothing and standardise nothing, so every attribute comes out the same
    (tests/test_checkpoint.py), without importing its module. Any other config (an
    older file with ``rope_scaling``, a field left to its default) goes through AutoConfig."""
    from transformers import AutoConfig, PreTrainedConfig

    path = folder / CONFIG
    values = json.loads(path.read_text()) if path.is_file() else {}
    fields = COSTLY_CONFIGS.get(values.get("model_type"))
    rope = values.get("rope_parameters")
    if fields is None or not fields <= values.keys() or not isinstance(rope, dict) \
            or not {"rope_type", "rope_theta"} <= rope.keys():
        return AutoConfig.from_pretrained(folder)
    config = PreTrainedConfig.from_dict(values)
    for name in fields - vars(config).keys():  # the base class sets some aside (use_cache)
        setattr(config, name, values[name])
    config._name_or_path = str(folder)  # what from_pretrained records
    return config


def weight_files(folder: Path) -> list[Path] | None:
    """The folder's safetensors files (one, or those a sharded index names); None if none."""
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    if (folder / INDEX).is_file():
        shards = json.loads((folder / INDEX).read_text())["weight_map"].values()
        return [folder / name for name in sorted(set(shards))]
    return None


@contextmanager
def shapes_only() -> Iterator[None]:
    """Modules built in this block get meta tensors, not initialised ones: random
    initialisation of 1.5B float32 weights would take seconds and gigabytes, and on meta
    tensors torch runs it through its Python references, which import ``torch._dynamo``
    (the ~70 MB this module avoids). transformers' ``no_init_weights`` does the same."""
    saved = nn.Linear.reset_parameters, nn.Embedding.reset_parameters
    nn.Linear.reset_parameters = nn.Embedding.reset_parameters = _no_init
    try:
        with torch.device("meta"):
            yield
    finally:
        nn.Linear.reset_parameters, nn.Embedding.reset_parameters = saved


def _no_init(module: nn.Module) -> None:
    """A reset_parameters that leaves the (meta) tensors as they are."""


def read_state(files: list[Path]) -> dict[str, torch.Tensor]:
    """Every tensor of ``files``, in float32 (what ``from_pretrained(dtype=float32)`` serves
    before server.engine.kernels converts it)."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in files:
        for name, tensor in load_file(path).items():
            state[name] = tensor.float() if tensor.dtype != torch.float32 else tensor
    return state


def assign_weights(model: nn.Module, state: dict[str, torch.Tensor], tied: bool) -> None:
    """Load ``state`` into the meta-built ``model`` (its tensors, not copies); a tied LM head
    is the input embedding's Parameter, as transformers ties it. Raises ValueError naming
    missing or unexpected tensors."""
    if tied:
        state.pop("lm_head.weight", None)  # a tied checkpoint may store it; the tie wins
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [name for name in result.missing_keys if not (tied and name == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise ValueError(f"checkpoint does not match {model.config.model_type}: missing "
                         f"{missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    if tied:
        model.lm_head.weight = model.get_input_embeddings().weight


def generation_config(folder: Path, config: object) -> object:
    """The folder's generation_config.json, else one derived from the config: what
    from_pretrained attaches as ``model.generation_config``."""
    from transformers import GenerationConfig

    if (folder / "generation_config.json").is_file():
        return GenerationConfig.from_pretrained(folder)
    return GenerationConfig.from_model_config(config)
