"""server.engine.llama_forward on synthetic:tiny-llama and synthetic:tiny-qwen: the logits of
transformers' forward over the same packed step bit for bit, plain transformers' within fp32
rounding, the same greedy tokens alone, batched and joining mid-generation, and the step
engine runs it for the Llama family."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from server.engine import code_path, kernels, llama_forward
from server.engine.code_path import Machine, decide
from server.engine.decoding import GenerationRequest
from server.engine.model import read_model
from server.engine.quantize import quantize_int8
from server.engine.step import StepEngine, generate_alone
from tests.conftest import TINY_DECODERS, alone_together_joined, lean_logits
from tests.test_gpt2_forward import _both, _rows

# Plain transformers (its sdpa attention over the whole sequence, no packed step) against the
# lean forward over the same tokens read in two chunks: the same operations, but torch's
# attention and GEMM kernels see other shapes (a causal flag for one mask; 29 rows for 17 and
# 12) and so sum in other orders. Measured on both tiny presets (AMD EPYC, 2 threads): at most
# 2.4e-7 apart (two float32 steps at logits up to 1.3). The bound leaves room for other CPUs'
# kernels and stays 100 times below what leaving the keys unrotated changes (8e-3, below).
PLAIN_ATOL = 1e-5


def _load(folder: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()


@pytest.fixture(params=TINY_DECODERS)
def folder(request: pytest.FixtureRequest, tiny_decoders: dict[str, Path]) -> Path:
    """Each tiny Llama-family preset's build in turn."""
    return tiny_decoders[request.param]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_lean_forward_gives_transformers_logits(folder: Path, dtype: torch.dtype) -> None:
    """Same submodules, same operations in the same order: equal bit for bit, two decoding
    rows (caches of 9 and 23) and a prompt chunk of 11 in one packed step."""
    model = _load(folder, dtype)
    engine = StepEngine(model, int(model.config.eos_token_id), ignore_eos=True)
    assert engine.path.layers == code_path.LLAMA_LAYERS
    theirs, ours = _both(model, _rows(engine), list(range(300, 311)), llama_forward.forward)
    assert ours.shape == theirs.shape == (3, model.config.vocab_size)
    assert ours.dtype == dtype and torch.equal(ours, theirs)


SERVED = [kernels.ONEDNN, kernels.FLOAT16, kernels.F16_NATIVE, kernels.BFLOAT16, kernels.INT8,
          kernels.BF16_NATIVE, kernels.INT8_NATIVE]


@pytest.mark.parametrize("precision", SERVED)
def test_every_served_precision_runs_the_lean_forward_on_its_kernels(
        folder: Path, precision: str) -> None:
    """The models kernels.choose builds (every linear layer on the precision's kernel, the
    LM head included): the step engine runs llama_forward on them, with the logits
    transformers' forward gives over the same modules, bit for bit."""
    if precision not in kernels.candidates("auto", allow_int8=True):
        pytest.skip(f"{precision} does not run on this CPU")
    model = kernels._build(_load(folder), precision, quantize_int8)
    engine = StepEngine(model, int(model.config.eos_token_id), ignore_eos=True)
    # float16+native and bfloat16+native serve the C layers (tests/test_native_llama.py,
    # test_native_llama_bf16.py); llama_forward is still what they are measured against, so it
    # must stay exact on those models too.
    native = (kernels.F16_NATIVE, kernels.BF16_NATIVE)
    assert engine.path.layers == (code_path.NATIVE_LAYERS if precision in native
                                  else code_path.LLAMA_LAYERS)
    expected = 7 * model.config.num_hidden_layers + 1  # q, k, v, o, gate, up, down; head
    # All of one kernel (bf16 where oneDNN cannot pack: plain bf16 nn.Linear, torch_bf16).
    assert engine.path.linear_why.startswith(f"{expected} of {expected} linear layers")
    theirs, ours = _both(model, _rows(engine), list(range(300, 311)), llama_forward.forward)
    assert torch.equal(ours, theirs)


def _plain_and_lean(folder: Path, ids: list[int]) -> tuple:
    """Logits at every position of ``ids``: plain transformers over the whole sequence, and
    the lean forward on the tree the server reads (server.engine.llama_model) reading it in
    two chunks into one row's cache."""
    plain = _load(folder)
    with torch.inference_mode():
        expected = plain(torch.tensor([ids])).logits[0]
    return expected, lean_logits(read_model(str(folder)), ids, split=17)


def test_the_lean_forward_gives_plain_transformers_logits_in_fp32(folder: Path) -> None:
    expected, ours = _plain_and_lean(folder, list(range(1000, 1029)))
    torch.testing.assert_close(ours, expected, rtol=0, atol=PLAIN_ATOL)


def test_the_tolerance_would_catch_unrotated_keys(folder: Path, monkeypatch) -> None:
    """Keys cached without their rotation (queries still rotated) are off by far more than
    PLAIN_ATOL: the comparison above can fail."""
    from transformers import AutoConfig

    _, kv_heads, _ = llama_forward.shape(AutoConfig.from_pretrained(folder))
    real = llama_forward.Rotary.apply
    monkeypatch.setattr(llama_forward.Rotary, "apply",
                        lambda self, x: x if x.shape[1] == kv_heads else real(self, x))
    expected, ours = _plain_and_lean(folder, list(range(1000, 1029)))
    assert (ours - expected).abs().max() > 100 * PLAIN_ATOL


def _engine(folder: Path) -> StepEngine:
    """An engine on the model as the server reads it (server.engine.llama_model's tree)."""
    model = read_model(str(folder))
    return StepEngine(model, int(model.config.eos_token_id), ignore_eos=True, prefill_chunk=8)


def _run(engine: StepEngine, rows: list) -> None:
    while any(r.finish_reason is None for r in rows):
        engine.step(rows)


def test_greedy_tokens_are_the_same_alone_batched_and_joining(folder: Path) -> None:
    """Rows of 3, 37 and 12 prompt tokens (prefilled in chunks of 8): alone, started
    together, and the 12-token row joining after the others ran 9 steps, read in beside
    their decoding; and alone they are what transformers' own generate() gives (the engine
    on the tree the server reads, server.engine.llama_model; generate() on transformers'
    model class). Robust to
    float32 rounding: the closest top-2 logits of these 30 steps are 3.5e-3 apart (tiny-llama;
    5.4e-2 tiny-qwen), the paths differ by ~2e-7."""
    engine = _engine(folder)
    requests = [GenerationRequest(list(range(500 + 7 * n, 500 + 8 * n)), 10)
                for n in (3, 37, 12)]
    alone, together, joined = alone_together_joined(engine, requests)
    assert together == alone and joined == alone
    assert len({tuple(t) for t in alone}) == 3  # different prompts, different tokens
    plain = _load(folder)
    for request, tokens in zip(requests, alone, strict=True):
        prompt = torch.tensor([request.input_ids])
        with torch.inference_mode():
            out = plain.generate(prompt, attention_mask=torch.ones_like(prompt),
                                 max_new_tokens=10, min_new_tokens=10, do_sample=False,
                                 pad_token_id=0)
        assert out[0, prompt.shape[1]:].tolist() == tokens


def test_the_caches_hold_kv_heads_not_query_heads(folder: Path) -> None:
    """Grouped-query attention: a row's cache has the config's key/value heads."""
    engine = _engine(folder)
    row = engine.new_row(GenerationRequest(list(range(100, 110)), 2))
    _run(engine, [row])
    heads, kv_heads, head_dim = llama_forward.shape(engine.model.config)
    assert kv_heads < heads
    assert row.cache.keys[0].shape == (1, kv_heads, row.cache.capacity, head_dim)


def test_code_path_names_the_llama_forward(folder: Path, monkeypatch) -> None:
    model = _load(folder)
    path = decide(model, "model", machine=Machine(None))
    assert path.layers == code_path.LLAMA_LAYERS
    assert path.layers_why.startswith("a Llama-family decoder (model_type ")
    calls = []
    real = llama_forward.forward
    monkeypatch.setattr(llama_forward, "forward", lambda *a: calls.append(1) or real(*a))
    generate_alone(StepEngine(model, 0, ignore_eos=True, path=path),
                   GenerationRequest([5, 6, 7], 2))
    assert len(calls) == 2  # the prompt's step and one decode step


def test_a_sliding_window_or_another_family_is_not_supported(folder: Path) -> None:
    """A window the packed attention does not apply, or layers of another shape, run
    through the model's own forward."""
    model = _load(folder)
    assert llama_forward.supports(model)
    windowed = copy.deepcopy(model)
    windowed.config.sliding_window = 4096
    qwen3 = copy.deepcopy(model)
    qwen3.config.model_type = "qwen3"  # per-head q/k norms: another layer
    for other in (windowed, qwen3):
        assert not llama_forward.supports(other)
        assert decide(other, "model", machine=Machine(None)).layers == code_path.MODEL_FORWARD


def test_a_mistral_runs_the_lean_forward_with_transformers_logits() -> None:
    """Mistral's layer is Llama's (no biases, its own head dim): a seeded in-memory one with
    full attention gives the same logits through llama_forward, bit for bit."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=32, sliding_window=None, eos_token_id=2)
    model = MistralForCausalLM(config).eval()
    engine = StepEngine(model, 2, ignore_eos=True)
    assert engine.path.layers == code_path.LLAMA_LAYERS
    theirs, ours = _both(model, _rows(engine), list(range(300, 311)), llama_forward.forward)
    assert torch.equal(ours, theirs)
