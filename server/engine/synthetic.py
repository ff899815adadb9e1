"""Synthetic models: published architectures with seeded random weights, built offline.

Two families: GPT-2 (``Preset``: tiny, gpt2, gpt2-large, gpt2-xl) and the Llama family
(``DecoderPreset``: RMSNorm, rotary positions, grouped-query attention, SwiGLU, tied
embeddings; llama-3.2-1b, qwen2.5-1.5b and their tiny twins for tests). The weights are
meaningless, so generated text is gibberish; the memory and compute profile is that of the
real model, which is what a load test measures. A preset is built once into
``<models_dir>/synthetic-<preset>/`` (safetensors + tokenizer files) and then loaded by the
ordinary ``from_pretrained`` path, exactly like a downloaded model.

Every preset's tokenizer is the byte-level BPE trained on the shipped corpus, padded to the
preset's vocabulary, with the family's special tokens at their real ids (``Vocabulary``);
the Llama-family presets add their chat template (Llama 3's header tokens, Qwen's ChatML),
so the task routes and ``/v1/chat/completions`` send chat messages, as to an instruct model,
and their instruct checkpoints' stop lists (generation_config.json's ``eos_token_id``).

CLI: ``python -m server.engine.synthetic build gpt2-large`` (idempotent), ``... params``.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import itertools
import json
import shutil
import string
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

VOCAB_SIZE = 50257  # GPT-2's vocabulary; <|endoftext|> is the last id.
EOS_TOKEN = "<|endoftext|>"
N_POSITIONS = 1024
SEED = 1234
# Bump when the build recipe changes so cached builds are rebuilt (every preset's: a change
# of the Llama-family recipe alone changes its ``Vocabulary`` or ``DecoderPreset`` instead,
# which only those presets' fingerprints hold).
BUILDER_VERSION = 1
CORPUS_DIR = Path(__file__).parent / "corpus"


@dataclass(frozen=True)
class Preset:
    """A GPT-2 architecture: layers, width, heads (and the published parameter count)."""

    n_layer: int
    n_embd: int
    n_head: int
    published_params: int | None = None


@dataclass(frozen=True)
class DecoderPreset:
    """A Llama-family decoder as its transformers config states it: ``model_type`` llama or
    qwen2 (Qwen2 adds biases to the q/k/v projections), RMSNorm (``rms_eps``), rotary
    positions (``rope_theta``, Llama 3's ``rope_scaling``), ``kv_heads`` key/value heads
    shared by the ``heads`` query heads, a SwiGLU MLP of ``intermediate`` units, the LM head
    tied to the token embedding (and the published parameter count)."""

    model_type: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    max_positions: int
    rope_theta: float
    rms_eps: float
    rope_scaling: dict | None = None
    published_params: int | None = None


# Llama 3.1/3.2's rotary scaling (config.json ``rope_scaling``): long wavelengths stretched 32x
# beyond the 8,192 positions of pre-training.
LLAMA3_ROPE_SCALING = {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                       "original_max_position_embeddings": 8192, "rope_type": "llama3"}

PRESETS: dict[str, Preset | DecoderPreset] = {
    "tiny": Preset(n_layer=2, n_embd=64, n_head=2),
    "gpt2": Preset(n_layer=12, n_embd=768, n_head=12, published_params=124_439_808),
    "gpt2-large": Preset(n_layer=36, n_embd=1280, n_head=20, published_params=774_030_080),
    "gpt2-xl": Preset(n_layer=48, n_embd=1600, n_head=25, published_params=1_557_611_200),
    # meta-llama/Llama-3.2-1B(-Instruct) config.json.
    "llama-3.2-1b": DecoderPreset(
        "llama", layers=16, hidden=2048, heads=32, kv_heads=8, intermediate=8192,
        vocab=128_256, max_positions=131_072, rope_theta=500_000.0, rms_eps=1e-5,
        rope_scaling=LLAMA3_ROPE_SCALING, published_params=1_235_814_400),
    # Qwen/Qwen2.5-1.5B-Instruct config.json (its context: 32,768 positions, as the model
    # card states; sliding-window attention is off there, as here).
    "qwen2.5-1.5b": DecoderPreset(
        "qwen2", layers=28, hidden=1536, heads=12, kv_heads=2, intermediate=8960,
        vocab=151_936, max_positions=32_768, rope_theta=1_000_000.0, rms_eps=1e-6,
        published_params=1_543_714_304),
    # The same structures in miniature for tests (GQA, SwiGLU, tied embeddings, Qwen's
    # biases, Llama 3's rotary scaling) with the real vocabularies: the tokenizers, special
    # token ids and chat templates under test are the ones the big presets ship.
    "tiny-llama": DecoderPreset(
        "llama", layers=2, hidden=64, heads=4, kv_heads=2, intermediate=176,
        vocab=128_256, max_positions=131_072, rope_theta=500_000.0, rms_eps=1e-5,
        rope_scaling=LLAMA3_ROPE_SCALING),
    "tiny-qwen": DecoderPreset(
        "qwen2", layers=2, hidden=64, heads=4, kv_heads=1, intermediate=160,
        vocab=151_936, max_positions=32_768, rope_theta=1_000_000.0, rms_eps=1e-6),
}


@dataclass(frozen=True)
class Vocabulary:
    """A preset's tokenizer: ``size`` ids, the corpus BPE padded with filler first, then
    ``specials`` (special tokens, in id order) at the end; which of them are the bos, eos,
    unk and pad tokens; the tokens that end a generation as the checkpoint's
    generation_config.json lists them (``stops``; empty: the eos alone, left as the model
    config states it); whether encoding prepends the bos token (Llama 3 does); the chat
    template (None: a base model's plain prompts)."""

    size: int
    specials: tuple[str, ...]
    eos: str
    stops: tuple[str, ...] = ()
    bos: str | None = None
    unk: str | None = None
    pad: str | None = None
    prepend_bos: bool = False
    chat_template: str | None = None
    max_length: int = N_POSITIONS

    @property
    def regular(self) -> int:
        """Ids before the special tokens (trained and filler BPE tokens)."""
        return self.size - len(self.specials)

    def special_id(self, token: str) -> int:
        """The id of special token ``token`` (ValueError when it is not one)."""
        return self.regular + self.specials.index(token)

    @property
    def stop_ids(self) -> list[int]:
        """The ids of ``stops``, in their order (generation_config.json's eos_token_id)."""
        return [self.special_id(token) for token in self.stops]


# Meta-Llama-3-Instruct's template: a header per message, <|eot_id|> after each.
LLAMA3_CHAT_TEMPLATE = (
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] "
    "+ '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
# Qwen2.5-Instruct's ChatML template without tools: its default system message when the
# conversation brings none.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\n' }}{% endif %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

GPT2_VOCABULARY = Vocabulary(VOCAB_SIZE, (EOS_TOKEN,), eos=EOS_TOKEN, bos=EOS_TOKEN,
                             unk=EOS_TOKEN)


def _llama3_specials() -> tuple[str, ...]:
    """Llama 3's 256 special tokens, ids 128000-128255, in order."""
    named = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
             "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
             "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
             "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
    return (*named, *(f"<|reserved_special_token_{i}|>" for i in range(3, 248)))


def _qwen2_specials(size: int) -> tuple[str, ...]:
    """Qwen2.5's 22 special tokens from id 151643, then reserved ones to ``size``: the real
    tokenizer leaves those embedding rows without a token; here every id decodes."""
    named = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
             "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
             "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
             "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
             "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
             "<|repo_name|>", "<|file_sep|>"]
    return (*named, *(f"<|extra_{i}|>" for i in range(size - 151_643 - len(named))))


def vocabulary(name: str) -> Vocabulary:
    """The tokenizer recipe of preset ``name``."""
    preset = get_preset(name)
    if isinstance(preset, Preset):
        return GPT2_VOCABULARY
    # The stop lists of Llama-3.2-1B-Instruct's and Qwen2.5-Instruct's generation_config.json:
    # an instruct model may end its answer with any of them, not only with its eos token.
    if preset.model_type == "llama":
        return Vocabulary(preset.vocab, _llama3_specials(), eos="<|eot_id|>",
                          stops=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
                          bos="<|begin_of_text|>", prepend_bos=True,
                          chat_template=LLAMA3_CHAT_TEMPLATE, max_length=preset.max_positions)
    return Vocabulary(preset.vocab, _qwen2_specials(preset.vocab), eos="<|im_end|>",
                      stops=("<|im_end|>", "<|endoftext|>"), pad="<|endoftext|>",
                      chat_template=QWEN_CHAT_TEMPLATE, max_length=preset.max_positions)


def get_preset(name: str) -> Preset | DecoderPreset:
    """Return the preset called ``name`` or raise ValueError naming the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        valid = ", ".join(PRESETS)
        raise ValueError(f"unknown synthetic preset {name!r}; choose one of {valid}") from None


def model_config(name: str):  # -> a transformers PretrainedConfig (import kept lazy)
    """Build the transformers config of a preset (GPT2Config, LlamaConfig, Qwen2Config)."""
    from transformers import AutoConfig, GPT2Config

    preset = get_preset(name)
    if isinstance(preset, Preset):
        return GPT2Config(
            n_layer=preset.n_layer,
            n_embd=preset.n_embd,
            n_head=preset.n_head,
            n_positions=N_POSITIONS,
            vocab_size=VOCAB_SIZE,
            bos_token_id=VOCAB_SIZE - 1,
            eos_token_id=VOCAB_SIZE - 1,
        )
    words = vocabulary(name)
    # A copy of the scaling: transformers writes rope_theta into the dict it is given, and
    # the preset's own must not change (the build fingerprint holds it).
    extra = {"use_sliding_window": False, "max_window_layers": preset.layers} \
        if preset.model_type == "qwen2" else {"rope_scaling": dict(preset.rope_scaling)}
    return AutoConfig.for_model(
        preset.model_type,
        num_hidden_layers=preset.layers,
        hidden_size=preset.hidden,
        num_attention_heads=preset.heads,
        num_key_value_heads=preset.kv_heads,
        intermediate_size=preset.intermediate,
        vocab_size=preset.vocab,
        max_position_embeddings=preset.max_positions,
        rope_theta=preset.rope_theta,
        rms_norm_eps=preset.rms_eps,
        hidden_act="silu",
        tie_word_embeddings=True,
        bos_token_id=words.special_id(words.bos) if words.bos else None,
        eos_token_id=words.special_id(words.eos),
        pad_token_id=words.special_id(words.pad) if words.pad else None,
        **extra,
    )


def new_model(name: str):  # -> the preset's transformers causal LM, freshly initialised
    """The preset's model with transformers' random init (GPT2LMHeadModel, LlamaForCausalLM,
    Qwen2ForCausalLM: the class its config names), on torch's current device and seed, with
    its generation config's stop ids (saved as generation_config.json, as a checkpoint's)."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    config = model_config(name)
    model = AutoModelForCausalLM.from_config(config)
    stop_ids = vocabulary(name).stop_ids
    if stop_ids:  # GPT-2's stays derived from its config (one id): its builds do not change
        model.generation_config = GenerationConfig(
            bos_token_id=config.bos_token_id, eos_token_id=stop_ids,
            pad_token_id=config.pad_token_id)
    return model


def count_params(name: str) -> int:
    """Count a preset's parameters on the meta device (no memory is allocated)."""
    import torch

    with torch.device("meta"):
        model = new_model(name)
    return model.num_parameters()  # tied input/output embeddings are counted once


def model_dir(models_dir: str | Path, name: str) -> Path:
    """Return where preset ``name`` is (or will be) built."""
    return Path(models_dir) / f"synthetic-{name}"


def _corpus_texts() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(CORPUS_DIR.glob("*.txt"))]


def fingerprint(name: str) -> dict:
    """Describe a build; a cached build with a different fingerprint is rebuilt."""
    corpus = hashlib.sha256("\x00".join(_corpus_texts()).encode()).hexdigest()
    found = {
        "preset": name,
        "architecture": asdict(get_preset(name)),
        "seed": SEED,
        "corpus_sha256": corpus,
        "builder_version": BUILDER_VERSION,
    }
    if isinstance(get_preset(name), DecoderPreset):  # GPT-2's stays as it was: no rebuild
        recipe = json.dumps(asdict(vocabulary(name)), sort_keys=True).encode()
        found["vocabulary_sha256"] = hashlib.sha256(recipe).hexdigest()
    return found


def _filler_tokens(taken: set[str], count: int) -> list[str]:
    """Letter strings (byte-level alphabet) to pad the vocab: they decode to pseudo-words."""
    letters = string.ascii_lowercase
    out: list[str] = []
    for size in itertools.count(2):
        for combo in itertools.product(letters, repeat=size):
            for prefix in ("Ġ", ""):  # Ġ is byte-level BPE's leading space
                token = prefix + "".join(combo)
                if token not in taken:
                    out.append(token)
                    if len(out) == count:
                        return out


def build_tokenizer(words: Vocabulary = GPT2_VOCABULARY):  # -> PreTrainedTokenizerFast
    """Train a byte-level BPE on the shipped corpus and pad it to exactly ``words.size`` ids:
    ``words.regular`` BPE tokens, then the special tokens (GPT-2's: 50,256 and
    <|endoftext|>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = _corpus_texts()
    if not texts:
        raise RuntimeError(f"no tokenizer corpus in {CORPUS_DIR}")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=words.regular,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    # A small corpus yields far fewer merges than a real vocabulary: pad with entries no
    # merge produces (encoding never emits them; decoding a sampled one gives letters, like
    # real gibberish).
    spec = json.loads(bpe.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    for token in _filler_tokens(set(vocab), words.regular - len(vocab)):
        vocab[token] = len(vocab)
    bpe = Tokenizer.from_str(json.dumps(spec))
    bpe.add_special_tokens(list(words.specials))
    for offset in (0, len(words.specials) - 1):
        token = words.specials[offset]
        assert bpe.token_to_id(token) == words.regular + offset, "vocab padding is off by some"
    if words.prepend_bos:
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{words.bos}:0 $A:0", pair=f"{words.bos}:0 $A:0 {words.bos}:1 $B:1",
            special_tokens=[(words.bos, bpe.token_to_id(words.bos))])
    roles = {"bos_token": words.bos, "eos_token": words.eos, "unk_token": words.unk,
             "pad_token": words.pad}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        **{role: token for role, token in roles.items() if token is not None},
        model_max_length=words.max_length,
    )
    if words.chat_template is not None:
        tokenizer.chat_template = words.chat_template
    return tokenizer


def _write_build(name: str, target: Path) -> None:
    import torch

    start = time.monotonic()
    torch.manual_seed(SEED)
    model = new_model(name).eval()
    size_gb = model.num_parameters() * 4 / 1e9
    print(f"[synthetic] {name}: {model.num_parameters():,} params, writing {size_gb:.2f} GB "
          f"of safetensors to {target} ...", file=sys.stderr, flush=True)
    model.save_pretrained(target, safe_serialization=True, max_shard_size="20GB")
    build_tokenizer(vocabulary(name)).save_pretrained(target)
    (target / "build.json").write_text(json.dumps(fingerprint(name), indent=2))
    print(f"[synthetic] {name}: built in {time.monotonic() - start:.1f} s",
          file=sys.stderr, flush=True)


def is_built(models_dir: str | Path, name: str) -> bool:
    """True when the preset's folder holds a complete build of the current recipe."""
    marker = model_dir(models_dir, name) / "build.json"
    return marker.exists() and json.loads(marker.read_text()) == fingerprint(name)


def build(name: str, models_dir: str | Path = "models") -> Path:
    """Build preset ``name`` unless an up-to-date build exists; return its folder."""
    get_preset(name)
    target = model_dir(models_dir, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A lock file serialises concurrent builders (parallel tests, several servers).
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(models_dir, name):
            return target
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        _write_build(name, partial)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)  # atomic: readers see a whole build or none
    return target


def ensure_built(name: str, models_dir: str | Path = "models") -> Path:
    """Return the preset's folder, building it in a child process when missing.

    A child process keeps torch computation (random init) out of the caller, which may be
    a Gunicorn master about to fork: OpenMP thread pools do not survive fork.
    """
    if not is_built(models_dir, name):
        cmd = [sys.executable, "-m", "server.engine.synthetic", "build", name, "--models-dir",
               str(Path(models_dir).resolve())]
        subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[2])
    return model_dir(models_dir, name)


def main(argv: list[str] | None = None) -> int:
    """Command line: build a preset, or print the parameter counts of all presets."""
    parser = argparse.ArgumentParser(prog="python -m server.engine.synthetic", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build_cmd = sub.add_parser("build", help="build a preset (no-op when up to date)")
    build_cmd.add_argument("preset", choices=sorted(PRESETS))
    build_cmd.add_argument("--models-dir", default="models")
    sub.add_parser("params", help="print each preset's parameter count")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(build(args.preset, args.models_dir))
    else:
        for name in PRESETS:
            print(f"{name}\t{count_params(name):,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
