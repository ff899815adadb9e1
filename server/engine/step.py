"""One generation step over a packed set of rows: the kernel of continuous batching.

A ``Row`` is one request in flight: its prompt, how much of it is already in its KV cache,
its generated tokens and its own sampler. ``StepEngine.step(rows)`` runs ONE model forward
over the rows' new tokens packed together (server.engine.row_cache): every decoding row
contributes its last token, prefilling rows contribute chunks of their prompt within a
token budget (``prefill_chunk``), shortest remaining prompt first, so a short request that
arrives while a long article is being read in gets its first token at the next step rather
than after the article. Each row then samples with its own temperature, top_p and seed.

Greedy rows compute what they would alone: each row attends to its own cache only, with
its own positions; only the matrix shapes around it change (float rounding aside).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace

import torch

from server.engine import code_path, llama_forward
from server.engine.code_path import CodePath
from server.engine.decoding import Generation, GenerationRequest, choose_token, make_rng
from server.engine.native_gpt2 import NativeGPT2, NativeGPT2F16, NativeGPT2Int8
from server.engine.native_llama import NativeLlama
from server.engine.native_llama_bf16 import NativeLlamaBF16
from server.engine.row_cache import (
    ATTENTION_NAME,
    PackedStep,
    RowCache,
    Segment,
    register,
    storage_dtype,
)


@dataclass
class Row:
    """A request in flight: prompt progress, generated tokens, its sampler and cache."""

    request: GenerationRequest
    cache: RowCache
    rng: torch.Generator
    prefilled: int = 0  # prompt tokens already in the cache
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # set once done: length | stop | cancelled | error
    error: BaseException | None = None  # why this row alone failed (finish_reason "error")

    @property
    def prompt_left(self) -> int:
        """Prompt tokens not yet in the cache."""
        return len(self.request.input_ids) - self.prefilled

    @property
    def steps_left(self) -> int:
        """Decode steps this row may still take (its max_new_tokens minus what it has)."""
        return self.request.max_new_tokens - len(self.tokens)

    def result(self) -> Generation:
        """The finished row's tokens and finish reason."""
        return Generation(list(self.tokens), self.finish_reason or "length")


@dataclass(frozen=True)
class StepReport:
    """What one step did: phase (prefill|decode|mixed), rows, tokens fed (of them prompt
    tokens), the tokens sampled per row (row index -> token; the stop token is not
    reported), seconds, and the tokens each row fed (row index -> tokens; what its share
    of the step's CPU follows, server.engine.step_cost)."""

    phase: str
    rows: int
    tokens_in: int
    sampled: dict[int, int]
    forward_s: float
    step_s: float
    prompt_tokens: int = 0
    fed: dict[int, int] = field(default_factory=dict)


class StepEngine:
    """Runs packed steps on one model; rows are created with ``new_row``.

    ``path`` is the code path decided for the model (server.engine.code_path, once per loaded
    model); None decides it here from the model and ``kv_dtype``. The engine follows it: the
    layers' forward, whether the C decode attention may run, the attention's dtype and the
    caches' KV dtype (``path.kv_dtype``, in place of ``kv_dtype``).

    A row stops on any of ``stop_ids`` and on ``eos_id`` (the model's eos, also the context an
    empty prompt is fed): a model may declare several (LoadedModel.stop_ids). ``ignore_eos``
    ignores them all.
    """

    def __init__(self, model: torch.nn.Module, eos_id: int, ignore_eos: bool = False,
                 prefill_chunk: int = 128, kv_dtype: str = "model",
                 path: CodePath | None = None, *, stop_ids: Collection[int] = ()) -> None:
        self.path = path or code_path.decide(model, kv_dtype)
        self.kv_dtype = self.path.kv_dtype
        storage_dtype(torch.float32, self.kv_dtype)  # reject an unknown policy here, not mid-step
        if self.path.layers == code_path.MODEL_FORWARD:
            # Only ``model(...)`` looks the attention up by name, and registering it imports
            # transformers' modeling code (~80 MB, server.engine.checkpoint says why): a
            # model served by a lean forward or the C layers never pays for it.
            register()
            model.config._attn_implementation = ATTENTION_NAME
        self.model = model
        self.eos_id = eos_id
        self.stop_ids = frozenset({eos_id, *stop_ids})
        self.ignore_eos = ignore_eos
        self.prefill_chunk = max(1, prefill_chunk)
        self.layers = int(model.config.num_hidden_layers)  # every layer's cache in one mapping
        # The family's lean torch forward (server.engine.gpt2_forward, llama_forward) or None.
        self._lean = code_path.LEAN_FORWARDS.get(self.path.layers)
        # Layers in C: a GPT-2 on the native bf16 kernels or fp16 GEMM
        # (server.engine.native_gpt2), a Llama-family decoder on either (native_llama,
        # native_llama_bf16).
        self._native = _c_layers(model, self.path) \
            if self.path.layers == code_path.NATIVE_LAYERS else None

    def new_row(self, request: GenerationRequest,
                prefix: tuple[RowCache, int] | None = None) -> Row:
        """A row for ``request`` (an empty prompt is fed the stop token as its context).
        ``prefix``: a finished row's cache whose first n positions hold this prompt's first
        n tokens (server.engine.prefix_cache); they are copied, not computed again."""
        if not request.input_ids:
            request = replace(request, input_ids=[self.eos_id])
        cache = RowCache(kv_positions(request), self.kv_dtype, self.layers)
        row = Row(request, cache, make_rng(request.seed))
        if prefix is not None and prefix[1] < len(request.input_ids):
            cache.copy_prefix(*prefix)
            row.prefilled = prefix[1]
        if request.max_new_tokens <= 0:
            row.finish_reason = "length"
        return row

    def _plan(self, rows: Sequence[Row], prefill: Collection[int] | None
              ) -> list[tuple[int, list[int], bool]]:
        """(row index, tokens to feed, whether they are prompt tokens) for this step."""
        plan = []
        for i, row in enumerate(rows):
            if row.finish_reason is None and row.prompt_left == 0:
                plan.append((i, [row.tokens[-1]], False))
        budget = self.prefill_chunk
        waiting = sorted((i for i, r in enumerate(rows)
                          if r.finish_reason is None and r.prompt_left > 0),
                         key=lambda i: rows[i].prompt_left)
        if prefill is not None and (prefill or plan):  # never an empty step
            waiting = [i for i in waiting if i in prefill]
        for i in waiting:
            if budget <= 0:
                break
            row = rows[i]
            take = min(budget, row.prompt_left)
            ids = list(row.request.input_ids[row.prefilled:row.prefilled + take])
            plan.append((i, ids, True))
            budget -= take
        return plan

    @torch.inference_mode()
    def step(self, rows: Sequence[Row], prefill: Collection[int] | None = None) -> StepReport:
        """Feed every live row's next tokens in one forward; sample where a row is due.
        ``prefill``: the indexes of the rows whose prompt may be read in this step (None:
        any, shortest first; empty: decode only, unless no row is decoding)."""
        started = time.perf_counter()
        plan = self._plan(rows, prefill)
        if not plan:
            return StepReport("decode", 0, 0, {}, 0.0, 0.0)
        ids, positions, segments, due = [], [], [], []
        for i, feed, _ in plan:
            first = rows[i].cache.length
            segments.append(Segment(rows[i].cache, len(ids), len(feed)))
            ids.extend(feed)
            positions.extend(range(first, first + len(feed)))
            if rows[i].prompt_left in (0, len(feed)):
                due.append((i, len(ids) - 1))  # its last position's logits give a token
        packed = PackedStep(segments, self.path.attention == code_path.NATIVE_ATTENTION,
                            self.path.torch_attention_dtype)
        logits = self._forward(torch.tensor(ids), torch.tensor(positions), packed,
                               torch.tensor([at for _, at in due], dtype=torch.long)).float()
        packed.advance()
        forward_s = time.perf_counter() - started
        for i, feed, prompt in plan:
            if prompt:
                rows[i].prefilled += len(feed)
        sampled = {i: self._sample_or_fail(rows[i], logits[n]) for n, (i, _) in enumerate(due)}
        prefilling = sum(1 for _, _, prompt in plan if prompt)
        phase = _phase(len(plan) - prefilling, prefilling)
        return StepReport(phase, len(plan), len(ids),
                          {i: t for i, t in sampled.items() if t is not None},
                          forward_s, time.perf_counter() - started,
                          sum(len(feed) for _, feed, prompt in plan if prompt),
                          {i: len(feed) for i, feed, _ in plan})

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, packed: PackedStep,
                 due: torch.Tensor) -> torch.Tensor:
        """Logits of the packed indexes ``due``: a native-packed GPT-2 through
        server.engine.native_gpt2, another GPT-2 through server.engine.gpt2_forward, a Llama,
        Qwen2 or Mistral decoder through server.engine.llama_forward, any other model through
        its own forward."""
        if self._native is not None:
            return self._native.forward(ids, positions, packed, due)
        if self._lean is not None:
            return self._lean.forward(self.model, ids, positions, packed, due)
        out = self.model(input_ids=ids[None], position_ids=positions[None], cache=packed,
                         use_cache=True, packed_step=packed, logits_to_keep=due)
        return out.logits[0]

    def _sample_or_fail(self, row: Row, logits: torch.Tensor) -> int | None:
        """``_sample``, except that a row whose sampling raises is finished with that error
        (the other rows of the step keep their tokens)."""
        try:
            return self._sample(row, logits)
        except Exception as error:
            row.finish_reason, row.error = "error", error
            return None

    def _sample(self, row: Row, logits: torch.Tensor) -> int | None:
        """Append the next token to ``row`` (None when it is a stop token)."""
        if len(row.tokens) < row.request.min_new_tokens:
            logits = logits.clone()  # a view of the step's logits: leave the other rows'
            logits[list(self.stop_ids)] = float("-inf")  # any one would end the row early
        token = choose_token(logits, row.request, row.rng)
        if token in self.stop_ids and not self.ignore_eos:
            row.finish_reason = "stop"
            return None
        row.tokens.append(token)
        if row.steps_left <= 0:
            row.finish_reason = "length"
        return token


def _c_layers(model: torch.nn.Module,
              path: CodePath) -> NativeGPT2 | NativeGPT2F16 | NativeLlama:
    """The C layers code_path chose (``NATIVE_LAYERS``) for ``model``'s family and kernel."""
    if llama_forward.supports(model):
        return (NativeLlamaBF16 if path.linear == "native_bf16" else NativeLlama).build(model)
    kinds = {"native_f16": NativeGPT2F16, "native_int8": NativeGPT2Int8}
    return kinds.get(path.linear, NativeGPT2).build(model)


def kv_positions(request: GenerationRequest) -> int:
    """KV positions a row for ``request`` may fill (its cache's capacity): its prompt (at
    least the stop token an empty prompt is fed) and every token it may generate."""
    return max(1, len(request.input_ids)) + max(0, request.max_new_tokens)


def _phase(decoding: int, prefilling: int) -> str:
    if decoding and prefilling:
        return "mixed"
    return "prefill" if prefilling else "decode"


def generate_alone(engine: StepEngine, request: GenerationRequest) -> Generation:
    """Generate ``request`` by itself (warm-up, kernel timing, tests)."""
    row = engine.new_row(request)
    while row.finish_reason is None:
        engine.step([row])
    return row.result()
