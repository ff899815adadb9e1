"""server.engine.native_gemm: the AVX-512 BF16 kernel computes what oneDNN's bf16 matmul does, a
row's result does not depend on its batch, it shares torch's OpenMP runtime, it is one more
timed candidate, and a model served by it generates from preloaded, forked Gunicorn workers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import torch
from torch import nn

from harness.gunicorn_process import GunicornServer
from server.engine import kernels, native_gemm, native_ops
from server.engine.decoding import GenerationRequest
from server.engine.model import load_model, resolve_source
from server.engine.quantize import conv1d_to_linear, weight_bytes
from server.engine.row_cache import NativeDecode
from server.engine.step import StepEngine
from tests.conftest import MODELS_DIR, server_env

needs_native = pytest.mark.skipif(not native_gemm.available(),
                                  reason=f"not run here: {native_gemm.unavailable()}")


def _bf16_reference(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """float32 math on the bf16-rounded operands."""
    bias = 0.0 if linear.bias is None else linear.bias.detach().to(torch.bfloat16).float()
    return x.float() @ linear.weight.detach().to(torch.bfloat16).float().T + bias


@needs_native
@pytest.mark.parametrize(("inputs", "outputs", "bias"),
                         [(64, 48, True), (128, 50, False), (96, 300, True)])
def test_native_linear_computes_the_bf16_product(inputs: int, outputs: int, bias: bool) -> None:
    """Output widths that are not a multiple of 16 are padded inside and sliced off."""
    torch.manual_seed(inputs + outputs)
    linear = nn.Linear(inputs, outputs, bias=bias)
    x = torch.randn(2, 5, inputs).to(torch.bfloat16)
    out = native_gemm.NativeBF16Linear(linear)(x)
    assert out.shape == (2, 5, outputs) and out.dtype == torch.bfloat16
    # Summed in fp32 like the reference, then rounded once to bf16: within bf16's rounding.
    torch.testing.assert_close(out.float(), _bf16_reference(linear, x), rtol=1e-2, atol=1e-2)
    if kernels.packing_available():
        torch.testing.assert_close(out, kernels.PackedBF16Linear(linear)(x), rtol=1e-2,
                                   atol=1e-2)


@needs_native
def test_a_layer_of_odd_input_width_stays_a_plain_bf16_linear() -> None:
    """The kernel reads inputs in pairs: such a layer keeps torch's bf16 matmul, and the
    model around it still packs (it used to refuse the whole candidate)."""
    torch.manual_seed(2)
    model = native_gemm.pack_native(nn.Sequential(nn.Linear(64, 33), nn.Linear(33, 48)))
    assert [type(m) for m in model] == [native_gemm.NativeBF16Linear, nn.Linear]
    assert model[1].weight.dtype == torch.bfloat16
    x = torch.randn(3, 64).to(torch.bfloat16)
    assert model(x).shape == (3, 48)


@needs_native
def test_a_rows_result_is_the_same_alone_and_in_any_batch() -> None:
    torch.manual_seed(1)
    layer = native_gemm.NativeBF16Linear(nn.Linear(256, 200))
    x = torch.randn(19, 256).to(torch.bfloat16)
    together = layer(x)
    for rows in range(1, 20):  # every register tile (1-8 rows) and their combinations
        assert torch.equal(layer(x[:rows]), together[:rows])
    assert torch.equal(layer(x[11:12]), together[11:12])


@needs_native
def test_the_kernel_runs_on_torchs_openmp_runtime_and_thread_count() -> None:
    """One libgomp in the process (the kernel's loops share torch's pool), and the result
    is the same on one thread and on two."""
    native_gemm.library()
    gomp = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
            if "libgomp" in line}
    assert len(gomp) == 1, gomp
    layer = native_gemm.NativeBF16Linear(nn.Linear(64, 256))
    x = torch.randn(4, 64).to(torch.bfloat16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = layer(x)
        torch.set_num_threads(2)
        assert torch.equal(layer(x), one)
    finally:
        torch.set_num_threads(threads)


def test_without_the_cpu_flag_the_candidate_is_absent(monkeypatch) -> None:
    monkeypatch.setattr(native_ops, "cpu_flags", lambda: {"avx2", "avx512f"})
    native_gemm.library.cache_clear()
    try:
        assert native_gemm.library() is None
        assert kernels.BF16_NATIVE not in kernels.candidates("auto", allow_int8=False)
        assert kernels.candidates("bfloat16", allow_int8=False) == ["bfloat16"]
    finally:
        native_gemm.library.cache_clear()


@needs_native
def test_bfloat16_times_both_kernel_paths_and_serves_the_faster(tiny_model: Path) -> None:
    """The faster in the table, or, when the two were close enough for a runoff, the
    runoff's winner by its rule (on tiny they often are: this failed in CI when it read the
    table alone); each candidate's weight memory is in the table."""
    loaded = load_model("synthetic:tiny", "bfloat16", MODELS_DIR)
    table = {t.precision: t for t in loaded.kernels.table}
    assert set(table) == {"bfloat16", "bfloat16+native"} and loaded.precision == "bfloat16"
    fastest = min(table.values(), key=lambda t: (t.batch_max_ms, t.batch_1_ms))
    runoff = loaded.kernels.runoff  # two finalists within RUNOFF_MARGIN: timed again
    if runoff:
        assert set(runoff) == set(table)
        names = tuple(runoff)
        fastest = table[kernels.runoff_winner(names, tuple(runoff.values()),
                                              tuple(table[n].weight_mb for n in names))]
    assert loaded.kernels.chosen == fastest.precision
    # tiny ties its LM head to the embedding: oneDNN's packed head is a second copy of it
    assert table["bfloat16"].weight_mb > table["bfloat16+native"].weight_mb > 0
    assert "bfloat16+native" in loaded.kernels.summary()


def _tiny(preset: str) -> nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_source(preset, MODELS_DIR),
                                                 dtype=torch.float32).eval()
    conv1d_to_linear(model)
    return model


@needs_native
@pytest.mark.parametrize("preset", ["synthetic:tiny", "synthetic:tiny-llama",
                                    "synthetic:tiny-qwen"])
def test_a_tied_heads_table_is_held_once_and_read_bit_for_bit(preset: str,
                                                               tiny_decoders) -> None:
    """The packed LM head is the only copy of a tied table: the input embedding reads it
    (PackedTableEmbedding), gives the rows the bf16 table held, and the model's weights shrink
    by the table's bytes."""
    model = _tiny(preset)
    table = model.get_input_embeddings().weight.detach().to(torch.bfloat16)
    native = native_gemm.pack_native(model)
    embedding = native.get_input_embeddings()
    assert isinstance(embedding, native_gemm.PackedTableEmbedding)
    assert list(embedding.parameters()) == [] and list(embedding.buffers()) == []
    ids = torch.tensor([[0, table.shape[0] - 1, 7], [15, 16, 17]])
    assert torch.equal(embedding(ids), table[ids])
    assert torch.equal(embedding(torch.arange(table.shape[0])), table)
    untied = _tiny(preset)
    untied.get_output_embeddings().weight = nn.Parameter(
        untied.get_output_embeddings().weight.detach().clone())
    two_copies = native_gemm.pack_native(untied)  # an untied head: the table stays its own
    assert type(two_copies.get_input_embeddings()) is nn.Embedding
    assert weight_bytes(two_copies) - weight_bytes(native) == table.numel() * 2
    with pytest.raises(IndexError, match="outside the embedding table"):
        embedding(torch.tensor([table.shape[0]]))
    with pytest.raises(IndexError, match="outside the embedding table"):
        embedding(torch.tensor([-1]))


@needs_native
def test_a_native_models_greedy_tokens_do_not_depend_on_the_batch(tiny_model: Path,
                                                                  monkeypatch) -> None:
    """Decoding rows attend in the native kernel (server/engine/native/attention_bf16.c) here:
    counted, so this test covers that kernel's batch invariance too."""
    from transformers import AutoModelForCausalLM

    attended = []
    attend = NativeDecode.attend

    def counted(self, *args):
        attended.append(attend(self, *args))
        return attended[-1]

    monkeypatch.setattr(NativeDecode, "attend", counted)

    model = AutoModelForCausalLM.from_pretrained(resolve_source("synthetic:tiny", MODELS_DIR),
                                                 dtype=torch.float32).eval()
    conv1d_to_linear(model)
    native = native_gemm.pack_native(model)
    assert any(isinstance(m, native_gemm.NativeBF16Linear) for m in native.modules())
    engine = StepEngine(native, int(model.config.eos_token_id), ignore_eos=True,
                        prefill_chunk=8)
    requests_ = [GenerationRequest(list(range(100 + n, 100 + 2 * n)), 8) for n in (3, 21, 12)]
    alone = []
    for request in requests_:
        row = engine.new_row(request)
        while row.finish_reason is None:
            engine.step([row])
        alone.append(row.tokens)
    early = [engine.new_row(r) for r in requests_[:-1]]
    for _ in range(5):
        engine.step(early)
    rows = [*early, engine.new_row(requests_[-1])]
    while any(r.finish_reason is None for r in rows):
        engine.step(rows)
    assert [r.tokens for r in rows] == alone and all(len(t) == 8 for t in alone)
    assert attended and all(attended)


@needs_native
def test_the_native_kernel_serves_from_preloaded_forked_workers(tiny_model: Path,
                                                                 tmp_path: Path,
                                                                 api_headers) -> None:
    """Packed in the master before fork (one thread there); both workers then run the
    kernel on their own threads without hanging."""
    env = server_env(tmp_path, DTYPE="bfloat16+native", TORCH_THREADS="2")
    with GunicornServer(tmp_path, env, workers=2) as server:
        ready = requests.get(server.url + "/ready", timeout=10,
                             headers=server.operator_headers).json()
        answers = [requests.post(server.url + "/generate-text", headers=api_headers,
                                 timeout=60, json={"prompt": f"Count to {i}",
                                                   "max_new_tokens": 6})
                   for i in range(8)]
    assert ready["dtype"] == "bfloat16" and ready["kernels"]["chosen"] == "bfloat16+native"
    assert [r.status_code for r in answers] == [200] * 8
    assert all(r.json()["usage"]["completion_tokens"] >= 1 for r in answers)


def test_every_native_source_ships_as_package_data() -> None:
    """An installed package checks its built library against the sources beside it
    (native_ops.source_digest): each source and header must match pyproject's package-data
    globs, and setup.py builds every .c of native/."""
    import fnmatch
    import tomllib

    root = Path(native_ops.__file__).parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["server.engine"]
    sources = [*native_ops.NATIVE.glob("*.c"), *native_ops.NATIVE.glob("*.h")]
    assert {p.name for p in sources} >= {"gemm_bf16.c", "attention_bf16.c", "gpt2_bf16.c",
                                          "simd_bf16.h", "module.c"}
    for path in sources:
        relative = path.relative_to(native_ops.NATIVE.parent).as_posix()
        assert any(fnmatch.fnmatch(relative, glob) for glob in globs), relative
    assert 'NATIVE.glob("*.c")' in (root / "setup.py").read_text()
