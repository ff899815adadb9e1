"""Synthetic GPT-2 models: the published architectures with seeded random weights, built offline.

The weights are meaningless, so generated text is gibberish; the memory and compute profile
is that of the real model, which is what a load test measures. A preset is built once into
``<models_dir>/synthetic-<preset>/`` (safetensors + tokenizer files) and then loaded by the
ordinary ``from_pretrained`` path, exactly like a downloaded model.

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
# Bump when the build recipe changes so cached builds are rebuilt.
BUILDER_VERSION = 1
CORPUS_DIR = Path(__file__).parent / "corpus"


@dataclass(frozen=True)
class Preset:
    """A GPT-2 architecture: layers, width, heads (and the published parameter count)."""

    n_layer: int
    n_embd: int
    n_head: int
    published_params: int | None = None


PRESETS: dict[str, Preset] = {
    "tiny": Preset(n_layer=2, n_embd=64, n_head=2),
    "gpt2": Preset(n_layer=12, n_embd=768, n_head=12, published_params=124_439_808),
    "gpt2-large": Preset(n_layer=36, n_embd=1280, n_head=20, published_params=774_030_080),
    "gpt2-xl": Preset(n_layer=48, n_embd=1600, n_head=25, published_params=1_557_611_200),
}


def get_preset(name: str) -> Preset:
    """Return the preset called ``name`` or raise ValueError naming the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        valid = ", ".join(PRESETS)
        raise ValueError(f"unknown synthetic preset {name!r}; choose one of {valid}") from None


def gpt2_config(name: str):  # -> transformers.GPT2Config (import kept lazy: torch is heavy)
    """Build the transformers GPT2Config of a preset."""
    from transformers import GPT2Config

    preset = get_preset(name)
    return GPT2Config(
        n_layer=preset.n_layer,
        n_embd=preset.n_embd,
        n_head=preset.n_head,
        n_positions=N_POSITIONS,
        vocab_size=VOCAB_SIZE,
        bos_token_id=VOCAB_SIZE - 1,
        eos_token_id=VOCAB_SIZE - 1,
    )


def count_params(name: str) -> int:
    """Count a preset's parameters on the meta device (no memory is allocated)."""
    import torch
    from transformers import GPT2LMHeadModel

    with torch.device("meta"):
        model = GPT2LMHeadModel(gpt2_config(name))
    return model.num_parameters()  # tied input/output embeddings are counted once


def model_dir(models_dir: str | Path, name: str) -> Path:
    """Return where preset ``name`` is (or will be) built."""
    return Path(models_dir) / f"synthetic-{name}"


def _corpus_texts() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(CORPUS_DIR.glob("*.txt"))]


def fingerprint(name: str) -> dict:
    """Describe a build; a cached build with a different fingerprint is rebuilt."""
    corpus = hashlib.sha256("\x00".join(_corpus_texts()).encode()).hexdigest()
    return {
        "preset": name,
        "architecture": asdict(get_preset(name)),
        "seed": SEED,
        "corpus_sha256": corpus,
        "builder_version": BUILDER_VERSION,
    }


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


def build_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    """Train a byte-level BPE on the shipped corpus and pad it to exactly VOCAB_SIZE."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = _corpus_texts()
    if not texts:
        raise RuntimeError(f"no tokenizer corpus in {CORPUS_DIR}")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - 1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    # A small corpus yields far fewer than 50256 merges: pad with entries no merge produces
    # (encoding never emits them; decoding a sampled one gives letters, like real gibberish).
    spec = json.loads(bpe.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    for token in _filler_tokens(set(vocab), VOCAB_SIZE - 1 - len(vocab)):
        vocab[token] = len(vocab)
    bpe = Tokenizer.from_str(json.dumps(spec))
    bpe.add_special_tokens([EOS_TOKEN])
    assert bpe.token_to_id(EOS_TOKEN) == VOCAB_SIZE - 1, "vocab padding is off by some"
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        model_max_length=N_POSITIONS,
    )


def _write_build(name: str, target: Path) -> None:
    import torch
    from transformers import GPT2LMHeadModel

    start = time.monotonic()
    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(gpt2_config(name)).eval()
    size_gb = model.num_parameters() * 4 / 1e9
    print(f"[synthetic] {name}: {model.num_parameters():,} params, writing {size_gb:.2f} GB "
          f"of safetensors to {target} ...", file=sys.stderr, flush=True)
    model.save_pretrained(target, safe_serialization=True, max_shard_size="20GB")
    build_tokenizer().save_pretrained(target)
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
