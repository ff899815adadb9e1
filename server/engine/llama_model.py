"""A Llama-family checkpoint as a module tree, built without transformers' model classes.

Importing any of transformers' model classes costs the server ~80 MB it never uses:
``transformers/masking_utils.py`` imports ``torch._dynamo`` unconditionally, which brings
sympy, torch.distributed and torch.onnx with it (results/profile/master-memory-zen4.txt,
section 3), all of it in the Gunicorn master and so in the tree's PSS. Yet the step engine
runs these decoders through server.engine.llama_forward (or the C layers), which read only
the module tree: the embedding, each layer's norms, projections and MLP, the final norm, the
LM head and the rotary module.

``load`` builds that tree under the names transformers gives it (``model.layers.0.self_attn
.q_proj`` ...), so the checkpoint's state dict loads as it is and every consumer (kernels'
module swaps, the C layers, huge pages, tests) sees the same attributes; the config and the
generation config are transformers' own (cheap to import). The tree has no ``forward``: a
model whose config llama_forward cannot compute exactly (``llama_forward.supports_config``),
a RoPE that changes with the sequence length (dynamic, longrope) or a checkpoint that is not
safetensors is not built here, and server.engine.model loads it with ``from_pretrained``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from server.engine import llama_forward

WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"
# RoPE variants whose frequencies depend on the sequence seen (transformers'
# ``dynamic_rope_update``): computed once here, they would be wrong past the original length.
DYNAMIC_ROPE = ("dynamic", "longrope")
# (q/k/v bias, o bias, MLP bias) per model_type, as transformers' classes build them.
BIASES = {
    "llama": lambda c: (c.attention_bias, c.attention_bias, c.mlp_bias),
    "qwen2": lambda c: (True, False, False),
    "mistral": lambda c: (False, False, False),
}


class RMSNorm(nn.Module):
    """The weight and epsilon llama_forward.rms_norm reads (transformers' ``variance_epsilon``)."""

    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.variance_epsilon = eps


class Attention(nn.Module):
    """One layer's projections, its index and the softmax scale (``head_dim ** -0.5``)."""

    def __init__(self, config: object, layer_idx: int) -> None:
        super().__init__()
        heads, kv_heads, head_dim = llama_forward.shape(config)
        qkv_bias, o_bias, _ = BIASES[config.model_type](config)
        width = config.hidden_size
        self.layer_idx = layer_idx
        self.scaling = head_dim ** -0.5
        self.q_proj = nn.Linear(width, heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(width, kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(width, kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(heads * head_dim, width, bias=o_bias)


class MLP(nn.Module):
    """SwiGLU's three projections."""

    def __init__(self, config: object) -> None:
        super().__init__()
        bias = BIASES[config.model_type](config)[2]
        width, inner = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(width, inner, bias=bias)
        self.up_proj = nn.Linear(width, inner, bias=bias)
        self.down_proj = nn.Linear(inner, width, bias=bias)


class DecoderLayer(nn.Module):
    """Norm, attention, norm, MLP: what llama_forward.forward runs per layer."""

    def __init__(self, config: object, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)


class RotaryEmbedding(nn.Module):
    """transformers' Llama rotary module, static variants only: ``forward(x, position_ids)``
    gives the cosines and sines in ``x``'s dtype, computed in float32 by the same operations
    (so the same bits)."""

    def __init__(self, config: object) -> None:
        super().__init__()
        inv_freq, self.attention_scaling = rope_frequencies(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device,
                                                                   dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def rope_frequencies(config: object) -> tuple[torch.Tensor, float]:
    """(inverse frequencies, attention scaling) of the config's RoPE: transformers' default
    formula, or its ``ROPE_INIT_FUNCTIONS`` entry for a scaled variant (Llama 3's)."""
    rope = config.rope_parameters
    if rope["rope_type"] != "default":
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        return ROPE_INIT_FUNCTIONS[rope["rope_type"]](config)
    dim = llama_forward.shape(config)[2]
    base = rope["rope_theta"]
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), 1.0


class Decoder(nn.Module):
    """The body: ``embed_tokens``, ``layers``, ``norm`` and ``rotary_emb``."""

    def __init__(self, config: object) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i)
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class CausalLM(nn.Module):
    """``model`` (the Decoder) and ``lm_head``, with the config and generation config, and
    the embedding accessors server.engine's kernels use. No forward: llama_forward runs it."""

    def __init__(self, config: object) -> None:
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.generation_config = None  # set by load

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head


def unsupported(config: object) -> str | None:
    """Why ``config`` is not built here (None: it is)."""
    if getattr(config, "model_type", None) not in BIASES:
        return f"model_type {getattr(config, 'model_type', None)} is not a Llama-family one"
    if not llama_forward.supports_config(config):
        return "llama_forward does not compute this config exactly"
    rope = getattr(config, "rope_parameters", None) or {}
    kind = rope.get("rope_type")
    if kind in DYNAMIC_ROPE or "rope_theta" not in rope or kind is None:
        return f"RoPE {kind!r} is not a static one"
    return None


def weight_files(folder: Path) -> list[Path] | None:
    """The folder's safetensors files (one, or those a sharded index names); None if none."""
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    if (folder / INDEX).is_file():
        shards = json.loads((folder / INDEX).read_text())["weight_map"].values()
        return [folder / name for name in sorted(set(shards))]
    return None


def load(source: str) -> CausalLM | None:
    """The Llama-family checkpoint in folder ``source`` as a float32 CausalLM in eval mode,
    or None where this module does not build it (not a folder, not safetensors, not a
    config ``unsupported`` accepts): the caller then uses ``from_pretrained``."""
    from transformers import AutoConfig

    folder = Path(source)
    files = weight_files(folder) if folder.is_dir() else None
    if files is None:
        return None
    config = AutoConfig.from_pretrained(folder)
    if unsupported(config) is not None:
        return None
    with shapes_only():  # the checkpoint's tensors are assigned below
        model = CausalLM(config)
    model.model.rotary_emb = RotaryEmbedding(config)
    assign_weights(model, read_state(files), bool(config.tie_word_embeddings))
    model.generation_config = generation_config(folder, config)
    config.dtype = torch.float32  # what from_pretrained(dtype=torch.float32) records
    return model.eval()


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


def assign_weights(model: CausalLM, state: dict[str, torch.Tensor], tied: bool) -> None:
    """Load ``state`` into the meta-built ``model`` (its tensors, not copies); a tied LM head
    is the embedding's Parameter, as transformers ties it. Raises ValueError naming missing or
    unexpected tensors."""
    if tied:
        state.pop("lm_head.weight", None)  # a tied checkpoint may store it; the tie wins
    result = model.load_state_dict(state, strict=False, assign=True)
    missing = [name for name in result.missing_keys if not (tied and name == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise ValueError(f"checkpoint does not match {model.config.model_type}: missing "
                         f"{missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight


def generation_config(folder: Path, config: object) -> object:
    """The folder's generation_config.json, else one derived from the config: what
    from_pretrained attaches as ``model.generation_config``."""
    from transformers import GenerationConfig

    if (folder / "generation_config.json").is_file():
        return GenerationConfig.from_pretrained(folder)
    return GenerationConfig.from_model_config(config)
