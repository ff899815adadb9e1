"""The synthetic builder: exact GPT-2 architectures, padded tokenizer, idempotent builds."""

import copy
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from server.engine import synthetic


@pytest.mark.parametrize(
    ("preset", "published"),
    [("gpt2", 124_439_808), ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)],
)
def test_preset_parameter_count_equals_published_model(preset: str, published: int) -> None:
    assert synthetic.count_params(preset) == published
    assert synthetic.PRESETS[preset].published_params == published


def test_unknown_preset_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="gpt2-large"):
        synthetic.get_preset("gpt5")


def test_tiny_build_loads_through_from_pretrained(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert len(tokenizer) == synthetic.VOCAB_SIZE == model.config.vocab_size
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == 50256
    assert model.config.n_positions == 1024
    assert (tiny_model / "model.safetensors").exists()


def test_tokenizer_round_trips_text(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    text = "Byte-level BPE keeps every byte: café, 42 %, ✓."
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_build_is_idempotent(tiny_model: Path) -> None:
    weights = tiny_model / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert synthetic.build("tiny", tiny_model.parent) == tiny_model
    assert weights.stat().st_mtime_ns == before


def test_stale_build_is_rebuilt(tmp_path: Path) -> None:
    target = synthetic.build("tiny", tmp_path)
    (target / "build.json").write_text('{"builder_version": 0}')
    assert not synthetic.is_built(tmp_path, "tiny")
    synthetic.build("tiny", tmp_path)
    assert synthetic.is_built(tmp_path, "tiny")


# -- the Llama family ------------------------------------------------------------------------

# What each published config.json states (Llama-3.2-1B, Qwen2.5-1.5B-Instruct).
PUBLISHED = {
    "llama-3.2-1b": {
        "model_type": "llama", "num_hidden_layers": 16, "hidden_size": 2048,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
        "intermediate_size": 8192, "vocab_size": 128_256, "tie_word_embeddings": True,
        "max_position_embeddings": 131_072, "rms_norm_eps": 1e-5, "hidden_act": "silu",
        "rope_parameters": {"rope_theta": 500_000.0, "rope_type": "llama3", "factor": 32.0,
                            "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                            "original_max_position_embeddings": 8192},
        "bos_token_id": 128_000, "eos_token_id": 128_009},
    "qwen2.5-1.5b": {
        "model_type": "qwen2", "num_hidden_layers": 28, "hidden_size": 1536,
        "num_attention_heads": 12, "num_key_value_heads": 2, "intermediate_size": 8960,
        "vocab_size": 151_936, "tie_word_embeddings": True, "max_position_embeddings": 32_768,
        "rms_norm_eps": 1e-6, "hidden_act": "silu", "use_sliding_window": False,
        "rope_parameters": {"rope_theta": 1_000_000.0, "rope_type": "default"},
        "eos_token_id": 151_645},
}


@pytest.mark.parametrize(("preset", "published"),
                         [("llama-3.2-1b", 1_235_814_400), ("qwen2.5-1.5b", 1_543_714_304)])
def test_decoder_preset_parameter_count_equals_published_model(preset: str,
                                                               published: int) -> None:
    """Counted by transformers' LlamaForCausalLM / Qwen2ForCausalLM on the meta device."""
    assert synthetic.count_params(preset) == published
    assert synthetic.PRESETS[preset].published_params == published


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_decoder_preset_config_is_the_published_architecture(preset: str) -> None:
    config = synthetic.model_config(preset).to_dict()
    assert {key: config[key] for key in PUBLISHED[preset]} == PUBLISHED[preset]


def test_qwen_has_qkv_biases_and_llama_none() -> None:
    import torch

    for preset, biased in (("qwen2.5-1.5b", True), ("llama-3.2-1b", False),
                           ("tiny-qwen", True), ("tiny-llama", False)):
        with torch.device("meta"):
            attn = synthetic.new_model(preset).model.layers[0].self_attn
        assert [p.bias is not None for p in (attn.q_proj, attn.k_proj, attn.v_proj)] == \
            [biased] * 3, preset
        assert attn.o_proj.bias is None


@pytest.mark.parametrize(("tiny", "big"), [("tiny-llama", "llama-3.2-1b"),
                                           ("tiny-qwen", "qwen2.5-1.5b")])
def test_tiny_decoders_share_their_family_s_structure(tiny: str, big: str) -> None:
    small, real = synthetic.PRESETS[tiny], synthetic.PRESETS[big]
    assert small.model_type == real.model_type
    assert small.kv_heads < small.heads and small.heads % small.kv_heads == 0  # GQA
    same = ("vocab", "max_positions", "rope_theta", "rms_eps", "rope_scaling")
    assert [getattr(small, f) for f in same] == [getattr(real, f) for f in same]
    assert synthetic.vocabulary(tiny) == synthetic.vocabulary(big)


@pytest.mark.parametrize(("preset", "specials"), [
    ("tiny-llama", {"<|begin_of_text|>": 128_000, "<|end_of_text|>": 128_001,
                    "<|start_header_id|>": 128_006, "<|end_header_id|>": 128_007,
                    "<|eot_id|>": 128_009, "<|reserved_special_token_247|>": 128_255}),
    ("tiny-qwen", {"<|endoftext|>": 151_643, "<|im_start|>": 151_644, "<|im_end|>": 151_645,
                   "<|file_sep|>": 151_664, "<|extra_270|>": 151_935}),
])
def test_decoder_build_loads_with_its_vocabulary_and_template(
        tiny_decoders: dict[str, Path], preset: str, specials: dict[str, int]) -> None:
    folder = tiny_decoders[preset]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert len(tokenizer) == model.config.vocab_size == synthetic.PRESETS[preset].vocab
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in specials} == specials
    assert set(specials) <= set(tokenizer.all_special_tokens) | set(
        tokenizer.added_tokens_encoder)
    assert tokenizer.eos_token_id == model.config.eos_token_id
    assert tokenizer.chat_template == synthetic.vocabulary(preset).chat_template
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    text = "Byte-level BPE keeps every byte: café, 42 %, ✓."
    assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=True) == text


def test_llama_prepends_its_bos_and_qwen_has_none(tiny_decoders: dict[str, Path]) -> None:
    llama = AutoTokenizer.from_pretrained(tiny_decoders["tiny-llama"])
    qwen = AutoTokenizer.from_pretrained(tiny_decoders["tiny-qwen"])
    assert llama.encode("Hello")[0] == 128_000 and llama.encode("Hello")[1:] == \
        qwen.encode("Hello")  # the same corpus BPE under the specials
    assert qwen.bos_token is None


@pytest.mark.parametrize(("preset", "expected"), [
    ("tiny-llama", "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief."
                   "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    ("tiny-qwen", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                  "<|im_start|>assistant\n"),
])
def test_chat_template_renders_the_family_s_format(tiny_decoders: dict[str, Path],
                                                   preset: str, expected: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_decoders[preset])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                         tokenize=False) == expected


def test_gpt2_fingerprint_is_unchanged_by_the_decoder_presets() -> None:
    """Cached GPT-2 builds stay valid: their fingerprint has the keys and architecture it
    had before the Llama family (a change would rebuild every gpt2-large on disk)."""
    found = synthetic.fingerprint("tiny")
    assert set(found) == {"preset", "architecture", "seed", "corpus_sha256", "builder_version"}
    assert found["architecture"] == {"n_layer": 2, "n_embd": 64, "n_head": 2,
                                     "published_params": None}
    assert found["builder_version"] == 1 and found["seed"] == 1234
    assert "vocabulary_sha256" in synthetic.fingerprint("tiny-qwen")


def test_making_a_config_leaves_the_preset_and_its_fingerprint_alone() -> None:
    """transformers writes rope_theta into the rope_scaling dict it is given: were it the
    preset's own, a build made in one process would look stale in the next."""
    for name in ("llama-3.2-1b", "tiny-llama", "qwen2.5-1.5b"):
        before = (copy.deepcopy(synthetic.PRESETS[name]), synthetic.fingerprint(name))
        synthetic.model_config(name)
        assert (synthetic.PRESETS[name], synthetic.fingerprint(name)) == before, name


def test_every_preset_encodes_text_with_the_same_corpus_bpe(tiny_model: Path,
                                                           tiny_decoders) -> None:
    """One BPE under every preset's specials: plain text gets the same ids from GPT-2's,
    Llama's and Qwen's tokenizer (what Locust's token counts rely on, whichever
    synthetic tokenizer.json they find)."""
    from tokenizers import Tokenizer

    text = (synthetic.CORPUS_DIR / sorted(p.name for p in synthetic.CORPUS_DIR.glob("*.txt"))[0]
            ).read_text()[:2000]
    folders = [tiny_model, *tiny_decoders.values()]
    encoded = [Tokenizer.from_file(str(f / "tokenizer.json")).encode(
        text, add_special_tokens=False).ids for f in folders]
    assert len(encoded[0]) > 300 and all(ids == encoded[0] for ids in encoded)
