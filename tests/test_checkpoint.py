"""server.engine.checkpoint, gpt2_model and llama_model: the tiny presets (GPT-2, Llama,
Qwen2) read without transformers' model classes hold the checkpoint exactly as from_pretrained
loads it (names, values, the tied head, the rotary frequencies, the stop ids), compute the same
logits, and a server on one never imports transformers' modeling code; what the trees do not
build falls back to from_pretrained. And the served tokenizer drops the vocabulary copies it
never reads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from server.engine import checkpoint, gpt2_forward, gpt2_model, llama_model
from server.engine.model import read_model
from server.engine.quantize import conv1d_to_linear
from tests.conftest import MODELS_DIR, TINY_DECODERS, lean_logits

PRESETS = ("tiny", *TINY_DECODERS)  # GPT-2, Llama, Qwen2

REPO = Path(__file__).resolve().parent.parent
# What importing any transformers model class brings (masking_utils imports torch._dynamo).
MODELING = ("torch._dynamo", "transformers.masking_utils", "transformers.modeling_utils")
# What transformers' Llama config class brings (checkpoint.COSTLY_CONFIGS).
LLAMA_CONFIG = ("transformers.models.llama.configuration_llama", "transformers.activations",
                "sympy")


def _transformers(folder: Path) -> torch.nn.Module:
    """transformers' model of ``folder``, GPT-2's Conv1D as the Linear the server serves."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    conv1d_to_linear(model)
    return model


@pytest.fixture(params=PRESETS)
def preset(request: pytest.FixtureRequest, tiny_decoders: dict[str, Path],
           tiny_model: Path) -> Path:
    """Each tiny preset's build in turn."""
    return {"tiny": tiny_model, **tiny_decoders}[request.param]


@pytest.fixture(params=TINY_DECODERS)
def folder(request: pytest.FixtureRequest, tiny_decoders: dict[str, Path]) -> Path:
    """Each tiny Llama-family preset's build in turn."""
    return tiny_decoders[request.param]


def test_the_tree_holds_what_from_pretrained_loads(preset: Path) -> None:
    ours, theirs = read_model(str(preset)), _transformers(preset)
    assert isinstance(ours, (gpt2_model.GPT2LM, llama_model.CausalLM))
    mine, hf = dict(ours.named_parameters()), dict(theirs.named_parameters())
    assert sorted(mine) == sorted(hf)
    for name, tensor in hf.items():
        assert mine[name].dtype == torch.float32 and torch.equal(mine[name], tensor), name
    assert ours.lm_head.weight is ours.get_input_embeddings().weight  # tied, one copy
    assert ours.get_output_embeddings() is ours.lm_head
    assert ours.generation_config.eos_token_id == theirs.generation_config.eos_token_id
    assert not ours.training


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_rotary_module_gives_transformers_cosines_and_sines(folder: Path,
                                                                dtype: torch.dtype) -> None:
    """Bit for bit at positions up to 100k: tiny-llama's Llama 3 scaling (which bends the
    frequencies past 8,192) and tiny-qwen's plain RoPE."""
    ours, theirs = llama_model.load(str(folder)), _transformers(folder)
    positions = torch.arange(0, 100_000, 37)[None]
    like = torch.zeros(1, dtype=dtype)
    for a, b in zip(ours.model.rotary_emb(like, positions),
                    theirs.model.rotary_emb(like, positions), strict=True):
        assert a.dtype == dtype and torch.equal(a, b)


def test_the_lean_forward_gives_the_same_logits_on_either_tree(preset: Path) -> None:
    """The same weights and operations: equal bit for bit (greedy tokens against
    transformers' generate(): tests/test_llama_forward.py, test_engine.py)."""
    ids = list(range(900, 925))
    ours = lean_logits(read_model(str(preset)), ids, split=11)
    assert torch.equal(ours, lean_logits(_transformers(preset), ids, split=11))


def test_the_tree_builds_every_model_type_the_lean_forward_computes() -> None:
    from server.engine import llama_forward

    assert sorted(llama_model.BIASES) == sorted(llama_forward.MODEL_TYPES)


def test_gpt2_gelu_is_transformers_to_the_bit() -> None:
    from transformers.activations import NewGELUActivation

    x = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 4
    assert torch.equal(gpt2_model.NewGELUActivation()(x), NewGELUActivation()(x))


def _modules_after_requests(models: list[str],
                            names: tuple[str, ...] = MODELING) -> dict[str, bool]:
    """Which of ``names`` a fresh interpreter holds after serving one chat completion on each
    of ``models`` in turn (each app as Gunicorn's master builds it, DTYPE=float32)."""
    script = textwrap.dedent(f"""
        import json, sys
        from server import create_app
        for model in {models!r}:
            app = create_app({{"MODEL": model, "MODELS_DIR": {str(MODELS_DIR)!r},
                              "DTYPE": "float32", "TORCH_THREADS": 1, "API_KEYS": "k1",
                              "RATE_LIMIT": "", "GLOBAL_RATE_LIMIT": "", "REQUEST_LOG": ""}})
            reply = app.test_client().post(
                "/v1/chat/completions", headers={{"Authorization": "Bearer k1"}},
                json={{"messages": [{{"role": "user", "content": "Hi"}}], "max_tokens": 3}})
            assert reply.status_code == 200, reply.get_data(as_text=True)
        print(json.dumps({{name: name in sys.modules for name in {names!r}}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_server_never_imports_transformers_modeling(
        tiny_decoders: dict[str, Path], tiny_model: Path, tmp_path: Path) -> None:
    """~80 MB of the master's memory (server.engine.checkpoint), on every preset family (one
    interpreter serving the three in turn). The probe can tell: a model loaded by
    from_pretrained shows every module."""
    served = _modules_after_requests([f"synthetic:{name}" for name in PRESETS])
    assert served == dict.fromkeys(MODELING, False)
    fallback = _copy(tiny_decoders["tiny-qwen"], tmp_path, hidden_act="gelu")
    assert _modules_after_requests([str(fallback)]) == dict.fromkeys(MODELING, True)


def test_a_llama_server_never_imports_transformers_llama_config(
        tiny_decoders: dict[str, Path], tmp_path: Path) -> None:
    """50 MiB of the Gunicorn tree's PSS on llama-3.2-1b (checkpoint.COSTLY_CONFIGS): neither
    the tree nor the tokenizer reads tiny-llama's complete config through LlamaConfig. The
    probe can tell: the same folder with a field left to its default imports it all."""
    served = _modules_after_requests(["synthetic:tiny-llama"], LLAMA_CONFIG)
    assert served == dict.fromkeys(LLAMA_CONFIG, False)
    partial = _copy(tiny_decoders["tiny-llama"], tmp_path, drop=("mlp_bias",))
    assert _modules_after_requests([str(partial)], LLAMA_CONFIG) == \
        dict.fromkeys(LLAMA_CONFIG, True)


def test_a_complete_llama_config_reads_as_autoconfig_reads_it(
        tiny_decoders: dict[str, Path]) -> None:
    """Every field LlamaConfig has, and what from_pretrained records, hold the same values;
    COSTLY_CONFIGS names exactly the fields the class adds (a new one in a later transformers
    fails here first)."""
    import dataclasses

    from transformers import AutoConfig, LlamaConfig, PreTrainedConfig

    base = {field.name for field in dataclasses.fields(PreTrainedConfig)}
    added = {field.name for field in dataclasses.fields(LlamaConfig)} - base
    assert checkpoint.COSTLY_CONFIGS["llama"] == added
    folder = tiny_decoders["tiny-llama"]
    ours, theirs = checkpoint.read_config(folder), AutoConfig.from_pretrained(folder)
    assert type(ours) is PreTrainedConfig and type(theirs) is LlamaConfig
    for name in sorted(added | base | {"model_type", "name_or_path"}):
        assert getattr(ours, name) == getattr(theirs, name), name


@pytest.mark.parametrize("change", [
    {"drop": ("head_dim",)},  # left to the class's default
    {"drop": ("rope_parameters",), "rope_scaling": {"rope_type": "llama3", "factor": 32.0,
     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8192}, "rope_theta": 500000.0},  # transformers 4's
])
def test_an_incomplete_llama_config_goes_through_autoconfig(
        tiny_decoders: dict[str, Path], tmp_path: Path, change: dict) -> None:
    from transformers import AutoConfig, LlamaConfig

    target = _copy(tiny_decoders["tiny-llama"], tmp_path, **change)
    config = checkpoint.read_config(target)
    assert type(config) is LlamaConfig
    assert config.to_dict() == AutoConfig.from_pretrained(target).to_dict()


def _copy(folder: Path, tmp_path: Path, drop: tuple[str, ...] = (),
          **config_changes: object) -> Path:
    """``folder`` copied with ``config_changes`` in its config.json, ``drop`` removed."""
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    config = json.loads((target / "config.json").read_text())
    config.update(config_changes)
    for name in drop:
        del config[name]
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.mark.parametrize(("name", "change"), [
    ("tiny-qwen", {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 0}),
    ("tiny-qwen", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0,
                                       "rope_theta": 10000.0}}),
    ("tiny-qwen", {"hidden_act": "gelu"}),
    ("tiny", {"activation_function": "relu"}),
    ("tiny", {"reorder_and_upcast_attn": True}),
])
def test_what_the_trees_do_not_compute_is_loaded_by_from_pretrained(
        tiny_decoders: dict[str, Path], tiny_model: Path, tmp_path: Path, name: str,
        change: dict) -> None:
    source = {"tiny": tiny_model, **tiny_decoders}[name]
    target = str(_copy(source, tmp_path, **change))
    assert llama_model.load(target) is None and gpt2_model.load(target) is None
    model = read_model(target)
    assert type(model).__module__.startswith("transformers.models.")
    if "reorder_and_upcast_attn" in change:  # nor does the lean forward compute it
        assert not gpt2_forward.supports(model)


def test_an_original_gpt2_file_loads_as_from_pretrained_loads_it(tiny_model: Path,
                                                                 tmp_path: Path) -> None:
    """OpenAI's GPT-2 files name tensors without ``transformer.`` and store each layer's
    causal mask (``attn.bias``), which neither loader keeps."""
    target = _copy(tiny_model, tmp_path)
    state = load_file(target / "model.safetensors")
    state = {name.removeprefix("transformer."): t for name, t in state.items()}
    state["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 8, 8))
    save_file(state, target / "model.safetensors")
    ours, theirs = gpt2_model.load(str(target)), _transformers(target)
    assert sorted(dict(ours.named_parameters())) == sorted(dict(theirs.named_parameters()))
    assert all(torch.equal(p, dict(theirs.named_parameters())[n])
               for n, p in ours.named_parameters())


def test_a_hub_id_or_a_folder_without_safetensors_is_not_built_here(tmp_path: Path) -> None:
    for family in (gpt2_model, llama_model):
        assert family.load("Qwen/Qwen2.5-1.5B") is None  # never a download from here
        assert family.load(str(tmp_path)) is None


def test_a_missing_tensor_is_named(tiny_decoders: dict[str, Path], tmp_path: Path) -> None:
    target = _copy(tiny_decoders["tiny-llama"], tmp_path)
    state = load_file(target / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, target / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing \['model\.layers\.1\.mlp\.up_proj\.weight'\]"):
        llama_model.load(str(target))


def test_a_sharded_untied_checkpoint_loads_as_from_pretrained_loads_it(
        tiny_decoders: dict[str, Path], tmp_path: Path) -> None:
    """Two shards and an index, and a head of its own (``tie_word_embeddings`` false)."""
    target = _copy(tiny_decoders["tiny-qwen"], tmp_path, tie_word_embeddings=False)
    state = load_file(target / "model.safetensors")
    state["lm_head.weight"] = state["model.embed_tokens.weight"].flip(0).contiguous()
    (target / "model.safetensors").unlink()
    names = sorted(state)
    shards = {"a.safetensors": names[:len(names) // 2], "b.safetensors": names[len(names) // 2:]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, target / file)
    index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (target / checkpoint.INDEX).write_text(json.dumps(index))
    ours, theirs = llama_model.load(str(target)), _transformers(target)
    assert ours.lm_head.weight is not ours.model.embed_tokens.weight
    assert torch.equal(ours.lm_head.weight, theirs.lm_head.weight)
    assert torch.equal(ours.lm_head.weight, state["lm_head.weight"])


def test_the_served_tokenizer_drops_its_vocabulary_copies_and_encodes_the_same(
        tiny_decoders: dict[str, Path]) -> None:
    """Qwen2Tokenizer keeps the vocabulary and merges it was built from (26 MB at 151,936
    tokens); load_model drops them, and encoding, decoding, the vocabulary and the chat
    template are what a tokenizer that kept them gives."""
    from transformers import AutoTokenizer

    from server.engine.model import BUILD_COPIES, load_model

    served = load_model("synthetic:tiny-qwen", "float32", MODELS_DIR).tokenizer
    fresh = AutoTokenizer.from_pretrained(tiny_decoders["tiny-qwen"])
    assert all(hasattr(fresh, name) for name in BUILD_COPIES)
    assert not any(hasattr(served, name) for name in BUILD_COPIES)
    text = "It's 12,345 Ångström-wide: naïve café <|im_end|> 東京 🚀"
    ids = fresh(text)["input_ids"]
    assert served(text)["input_ids"] == ids
    assert served.decode(ids) == fresh.decode(ids) == text
    assert served.get_vocab() == fresh.get_vocab()
    chat = [{"role": "user", "content": text}]
    assert served.apply_chat_template(chat, tokenize=False) == \
        fresh.apply_chat_template(chat, tokenize=False)


@pytest.mark.parametrize("name", TINY_DECODERS)
def test_the_served_tokenizer_is_the_one_autotokenizer_loads(
        tiny_decoders: dict[str, Path], name: str) -> None:
    """load_model hands AutoTokenizer the config the tree reads (a base PreTrainedConfig for
    a complete Llama one): the same class, ids, special tokens and chat template."""
    from transformers import AutoTokenizer

    from server.engine.model import load_model

    served = load_model(f"synthetic:{name}", "float32", MODELS_DIR).tokenizer
    fresh = AutoTokenizer.from_pretrained(tiny_decoders[name])
    assert type(served) is type(fresh)
    text = "It's 12,345 Ångström-wide:\n\n  naïve café 東京 🚀"
    assert served(text)["input_ids"] == fresh(text)["input_ids"]
    assert served.all_special_ids == fresh.all_special_ids
    assert served.eos_token == fresh.eos_token and served.chat_template == fresh.chat_template
