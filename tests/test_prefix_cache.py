"""server.engine.prefix_cache: a prompt that starts like a finished row copies that row's keys and
values instead of computing them, generates what it would have alone, and the kept caches
stay within their count and the KV budget; under real Gunicorn /metrics counts the copied
tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import torch

from harness.gunicorn_process import GunicornServer
from harness.waiting import wait_until
from server.engine.decoding import GenerationRequest
from server.engine.jobs import Job
from server.engine.model import LoadedModel, load_model
from server.engine.prefix_cache import MIN_SHARED, PrefixCache, cached_tokens
from server.engine.row_cache import RowCache
from server.engine.scheduler import Scheduler
from server.engine.step import StepEngine, generate_alone
from tests.conftest import MODELS_DIR, TEST_API_KEY, server_env
from tests.logits_engine import LogitsEngine

KEY_A, KEY_B = "tenant-a-0123456789abcdef", "tenant-b-0123456789abcdef"


@pytest.fixture(scope="module")
def loaded(tiny_model: Path) -> LoadedModel:
    torch.set_num_threads(1)
    return load_model("synthetic:tiny", "float32", MODELS_DIR)


def _engine(loaded: LoadedModel) -> LogitsEngine:
    return LogitsEngine(loaded.model, loaded.eos_id, ignore_eos=True, prefill_chunk=8)


def _assert_same_logits(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4 * b.abs().max().item())


def _finished(engine: StepEngine, request: GenerationRequest):
    row = engine.new_row(request)
    while row.finish_reason is None:
        engine.step([row])
    return row


def _cache_of(tokens: list[int]) -> RowCache:
    cache = RowCache(len(tokens) + 4, "model", layers=1)
    cache.ensure(0, torch.zeros(1, 2, 1, 4))
    cache.length = len(tokens)
    return cache


def test_a_shared_prefix_is_copied_and_the_tokens_are_those_generated_alone(loaded) -> None:
    engine = _engine(loaded)
    first = _finished(engine, GenerationRequest(list(range(100, 140)), 6))
    kept = PrefixCache(4)
    kept.keep(cached_tokens(first.request.input_ids, first.tokens, first.cache.length),
              first.cache)
    assert first.cache.length == 45  # 40 prompt tokens and 5 of the 6 generated fed back

    request = GenerationRequest(list(range(100, 130)) + list(range(500, 512)), 6)
    found = kept.find(request.input_ids)
    assert found is not None and found[1] == 30
    row = engine.new_row(request, found)
    assert row.prefilled == 30 and row.cache.length == 30
    prompt_fed = 0
    engine.seen.clear()
    while row.finish_reason is None:
        prompt_fed += engine.step([row]).prompt_tokens
    assert prompt_fed == 12  # only the tokens after the shared prefix were computed
    copied, engine.seen = engine.seen, []
    assert row.tokens == generate_alone(engine, request).token_ids
    _assert_same_logits(copied, engine.seen)


def test_the_same_prompt_again_feeds_only_its_last_token(loaded) -> None:
    engine = _engine(loaded)
    request = GenerationRequest(list(range(200, 236)), 4)
    engine.seen.clear()
    first = _finished(engine, request)
    kept = PrefixCache(2)
    kept.keep(cached_tokens(request.input_ids, first.tokens, first.cache.length), first.cache)
    cache, shared = kept.find(request.input_ids)
    assert shared == 35  # the last prompt token's logits give the first new token
    computed, engine.seen = engine.seen, []
    row = engine.new_row(request, (cache, shared))
    assert engine.step([row]).prompt_tokens == 1
    while row.finish_reason is None:
        engine.step([row])
    assert row.tokens == first.tokens
    _assert_same_logits(engine.seen, computed)


def test_find_takes_the_longest_shared_prefix_and_ignores_short_ones() -> None:
    kept = PrefixCache(4)
    short, long = list(range(MIN_SHARED + 4)), list(range(MIN_SHARED + 10))
    kept.keep([*short, 9000], _cache_of([*short, 9000]))
    kept.keep([*long, 9001], _cache_of([*long, 9001]))
    assert kept.find([*list(range(MIN_SHARED - 1)), 7, 7]) is None  # too short to copy
    cache, shared = kept.find([*long, 5, 5])
    assert shared == MIN_SHARED + 10 and cache.length == MIN_SHARED + 11


def test_kept_caches_are_bounded_oldest_first_and_superseded_ones_dropped() -> None:
    kept = PrefixCache(2)
    caches = [_cache_of([i] * 20) for i in range(3)]
    for i, cache in enumerate(caches):
        kept.keep([i] * 20, cache)
    assert len(kept) == 2 and caches[0].store is None  # the oldest was released
    kept.find([1] * 25)  # used: now the newest
    kept.keep([3] * 20, _cache_of([3] * 20))
    assert caches[2].store is None and caches[1].store is not None
    longer = _cache_of([1] * 30)
    kept.keep([1] * 30, longer)  # holds all of [1] * 20: that entry goes
    assert caches[1].store is None and kept.positions == 20 + 30
    none = PrefixCache(0)
    dropped = _cache_of([4] * 20)
    none.keep([4] * 20, dropped)
    assert len(none) == 0 and dropped.store is None


def test_another_answer_to_the_same_prompt_replaces_the_first() -> None:
    kept = PrefixCache(4)
    prompt = list(range(MIN_SHARED + 10))
    first, second = _cache_of([*prompt, 7, 8]), _cache_of([*prompt, 9])
    kept.keep([*prompt, 7, 8], first, prompt_length=len(prompt))
    kept.keep([*prompt, 9], second, prompt_length=len(prompt))  # the same prompt answered again
    assert len(kept) == 1 and first.store is None and second.store is not None
    assert kept.find([*prompt, 5])[0] is second
    # a prompt that only starts the same way is another entry, and so is another scope's
    other = _cache_of([*prompt[:-1], 1, 2])
    kept.keep([*prompt[:-1], 1, 2], other, prompt_length=len(prompt) + 1)
    kept.keep([*prompt, 9], _cache_of([*prompt, 9]), scope=("key-b", ""),
              prompt_length=len(prompt))
    assert len(kept) == 3 and second.store is not None and other.store is not None
    # without a prompt length only the entries it extends go, as before
    kept.keep([*prompt, 4], _cache_of([*prompt, 4]))
    assert len(kept) == 4 and second.store is not None


def test_the_scheduler_copies_a_kept_prefix_and_keeps_within_the_kv_budget(loaded) -> None:
    cached = []
    scheduler = Scheduler(_engine(loaded), 4, max_queue=8, timeout_s=60.0, kv_tokens=120,
                          prefix_rows=4, on_cached=cached.append)
    scheduler.start()
    shared = list(range(300, 340))
    first = scheduler.submit(Job(GenerationRequest([*shared, 1, 2], 5)))
    assert first.wait(60)
    second = scheduler.submit(Job(GenerationRequest([*shared, 3, 4, 5], 5)))
    assert second.wait(60)
    assert cached == [40]
    engine = StepEngine(loaded.model, loaded.eos_id, ignore_eos=True, prefill_chunk=8)
    alone = generate_alone(engine, GenerationRequest([*shared, 3, 4, 5], 5)).token_ids
    assert second.result.token_ids == alone
    # The same prompt answered differently (sampled): this answer's cache replaces the
    # earlier answer's (kept before the job finishes), it is not kept beside it.
    again = scheduler.submit(Job(GenerationRequest([*shared, 3, 4, 5], 5, temperature=1.0,
                                                   seed=7)))
    assert again.wait(60) and again.result.token_ids[0] != second.result.token_ids[0]
    assert cached == [40, 42] and len(scheduler.prefixes) == 2
    # so the first prompt's entry is still there (with both answers kept, 46 + 47 + 47
    # positions, the 120-position budget would have evicted it)
    assert scheduler.prefixes.find([*shared, 1, 2, 0], scope=("", ""))[1] == 42
    # Its 109 cached positions beside the two kept ones (46 + 47) pass the 120-position
    # budget: the oldest are evicted.
    big = scheduler.submit(Job(GenerationRequest(list(range(600, 700)), 10)))
    assert big.wait(60)
    wait_until(lambda: scheduler.prefixes.positions == 109, "kept caches trimmed to the budget",
               interval_s=0.01)  # just after the answers of that step
    assert len(scheduler.prefixes) == 1


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """One Gunicorn worker for both tests through it: their prompts share no prefix, and a
    kept cache is reused only by its own key (which test_one_key_never_reuses... proves)."""
    workdir = tmp_path_factory.mktemp("prefix-server")
    env = server_env(workdir, API_KEYS=f"{TEST_API_KEY},{KEY_A},{KEY_B}")
    with GunicornServer(workdir, env, workers=1) as running:
        yield running


def test_gunicorn_workers_count_copied_prompt_tokens(server: GunicornServer,
                                                      api_headers) -> None:
    body = {"prompt": "The same long instruction, word for word, " * 6 + "then a question",
            "max_new_tokens": 4}
    before = _cached_total(server)  # the other test may have run first on this server
    answers = [requests.post(server.url + "/generate-text", headers=api_headers,
                             json=body, timeout=60) for _ in range(2)]
    ready = requests.get(server.url + "/ready", timeout=10,
                         headers=server.operator_headers).json()
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json()["text"] == answers[1].json()["text"]
    assert _cached_total(server) - before >= MIN_SHARED
    assert ready["prefix_cache_rows"] > 0


def _cached_total(server: GunicornServer) -> float:
    """/metrics' gpt_prompt_tokens_cached_total (0 before the first copied token)."""
    metrics = requests.get(server.url + "/metrics", timeout=10,
                           headers=server.operator_headers).text
    cached = [line for line in metrics.splitlines()
              if line.startswith("gpt_prompt_tokens_cached_total")]
    return float(cached[0].split()[-1]) if cached else 0.0


def test_kept_caches_are_reused_only_within_their_scope() -> None:
    kept = PrefixCache(4)
    secret = list(range(MIN_SHARED + 10))
    kept.keep([*secret, 1], _cache_of([*secret, 1]), scope=("key-a", ""))
    assert kept.find([*secret, 2], scope=("key-b", "")) is None  # another key: never
    assert kept.find([*secret, 2], scope=("key-a", "salt")) is None  # another salt: never
    assert kept.find([*secret, 2], scope=("key-a", ""))[1] == len(secret)
    # key b's own copy of the same prompt does not supersede key a's entry
    kept.keep([*secret, 1], _cache_of([*secret, 1]), scope=("key-b", ""))
    assert len(kept) == 2
    # equal tokens in two scopes: extending b's drops b's alone (a crash here once stopped
    # the generation thread)
    kept.keep([*secret, 1, 5], _cache_of([*secret, 1, 5]), scope=("key-b", ""))
    assert len(kept) == 2 and kept.find([*secret, 1, 5, 6], scope=("key-b", ""))[1] == \
        len(secret) + 2
    assert kept.find([*secret, 1, 5, 6], scope=("key-a", ""))[1] == len(secret) + 1


def test_one_key_never_reuses_another_keys_cached_prompt(server: GunicornServer) -> None:
    """Issue 29: key B's lookalike of key A's prompt (a secret in it) reused 78 of A's cached
    tokens. Through real Gunicorn, each answer's usage says how many prompt tokens came from
    a cache (OpenAI's prompt_tokens_details.cached_tokens)."""
    secret = "Instructions for the vault: the passphrase is tangerine-4471, " * 4

    def cached(key: str, tail: str, **extra) -> int:
        answer = requests.post(server.url + "/v1/completions", timeout=60,
                               headers={"Authorization": f"Bearer {key}"},
                               json={"prompt": secret + tail, "max_tokens": 2, **extra})
        assert answer.status_code == 200, answer.text
        return answer.json()["usage"]["prompt_tokens_details"]["cached_tokens"]

    assert cached(KEY_A, "first") == 0
    assert cached(KEY_B, "guess") == 0  # A's prompt is not B's to reuse
    assert cached(KEY_A, "again") >= MIN_SHARED  # A still reuses its own
    assert cached(KEY_A, "salted", cache_salt="user-7") == 0
    assert cached(KEY_A, "salted again", cache_salt="user-7") >= MIN_SHARED


def test_positions_follow_every_keep_replacement_and_eviction() -> None:
    """The counter request threads read (the request log's kv_kept_mb) is the entries' sum
    after entries are kept, replaced (extended, same prompt), found and evicted."""
    kept = PrefixCache(3)
    steps = [(list(range(40)), 30), (list(range(50)), 40),  # extends the first: replaces it
             ([*range(40), 7, 8], 40),  # the same 40-token prompt again: replaces
             (list(range(100, 130)), None), (list(range(200, 220)), None),
             (list(range(300, 330)), None)]  # a fourth entry: the oldest evicted
    for tokens, prompt in steps:
        kept.keep(tokens, _cache_of(tokens), prompt_length=prompt)
        kept.find([*range(100, 130), 1])
        assert kept.positions == sum(len(entry.tokens) for entry in kept._entries)
    assert len(kept) == 3 and kept.positions == 30 + 20 + 30
    while kept.evict_oldest():
        pass
    assert kept.positions == 0
