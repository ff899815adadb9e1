"""Workload building blocks without a server: length distributions, texts of exact token
length, the ShareGPT fixture and its pinned hashes, the pool and its manifest, the new
requests.csv columns, and the analysis of cached tokens and RAM by context."""

from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

import pandas as pd
import pytest
from tokenizers import Tokenizer

from analysis.memory import ram_by_context
from analysis.workloads import prefix_cache_hits
from locustfiles.lengths import parse_lengths
from locustfiles.request_recorder import COLUMNS, request_row
from locustfiles.sharegpt import read_sharegpt, write_sharegpt
from locustfiles.token_text import load_token_text
from locustfiles.workload_options import length_option
from locustfiles.workloads import WorkloadSpec, build_workload
from tests.conftest import MODELS_DIR

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "sharegpt_small.json"
TINY = str(Path(MODELS_DIR) / "synthetic-tiny")
# Pinned: the committed fixture's bytes, and the pool built from it with the tiny tokenizer.
FIXTURE_SHA256 = "bafcd58382798b4f83e31835c2b131d1dbd92b0092ab1cce7811c678b440e15b"


@pytest.mark.parametrize(("spec", "mean", "low", "high"), [
    ("fixed:128", 128, 128, 128),
    ("uniform:min=16,max=64", 40, 16, 64),
    ("normal:mean=200,sd=50,min=8,max=900", 200, 8, 900),
    ("lognormal:mean=200,sd=80,min=8,max=900", 200, 8, 900),
])
def test_lengths_are_seeded_bounded_and_have_their_mean(spec: str, mean: float, low: int,
                                                        high: int) -> None:
    dist = parse_lengths(spec)
    first, second = random.Random(7), random.Random(7)
    draws = [dist.draw(first) for _ in range(5000)]

    assert draws == [dist.draw(second) for _ in range(5000)]
    assert low <= min(draws) and max(draws) <= high
    assert statistics.fmean(draws) == pytest.approx(mean, rel=0.03)
    assert parse_lengths(dist.spec()) == dist


def test_lognormal_has_its_sd() -> None:
    rng = random.Random(1)
    draws = [parse_lengths("lognormal:mean=200,sd=80,min=1,max=100000").draw(rng)
             for _ in range(20000)]
    assert statistics.stdev(draws) == pytest.approx(80, rel=0.05)


@pytest.mark.parametrize("bad", ["", "poisson:mean=3", "uniform:min=5", "fixed:0",
                                 "normal:mean=10", "uniform:min=9,max=3", "normal:mean=x,sd=1",
                                 "lognormal:mean=10,sd=2,mode=3"])
def test_a_malformed_distribution_names_the_valid_forms(bad: str) -> None:
    with pytest.raises(ValueError, match="length distribution"):
        parse_lengths(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        length_option(bad)


def test_texts_have_exactly_n_tokens_of_the_served_tokenizer() -> None:
    tt = load_token_text(TINY)
    served = Tokenizer.from_file(f"{TINY}/tokenizer.json")  # the server's own file
    rng = random.Random(3)
    for n in [1, 2, 7, 64, *(rng.randint(1, 900) for _ in range(40))]:
        text = tt.text(n, rng.randrange(1 << 30))
        assert len(served.encode(text, add_special_tokens=False).ids) == n
    assert tt.text(50, 123) == tt.text(50, 123)  # deterministic
    assert tt.manifest()["kind"] == "tokenizer"


def test_without_a_tokenizer_lengths_are_words_and_say_so(tmp_path: Path) -> None:
    tt = load_token_text("", str(tmp_path))
    assert tt.kind == "words" and "approximation" in tt.source
    assert len(tt.text(30, 5).split()) == 30


def test_the_sharegpt_fixture_is_what_the_generator_writes(tmp_path: Path) -> None:
    written = write_sharegpt(tmp_path / "again.json")
    assert written.read_bytes() == FIXTURE.read_bytes()
    data = read_sharegpt(FIXTURE)
    assert (data.records, data.skipped, len(data.conversations)) == (24, 0, 24)
    assert data.sha256 == FIXTURE_SHA256
    assert all(c.exchanges()[0][1] for c in data.conversations)  # a reference answer each


def test_sharegpt_jsonl_and_bad_records(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "a", "conversations": [{"from": "system", "value": "Be brief."},'
                    ' {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}\n'
                    '{"id": "b", "conversations": [{"from": "gpt", "value": "no question"}]}\n'
                    '{"nothing": 1}\n')
    data = read_sharegpt(path)
    assert (data.records, data.skipped) == (3, 2)
    [conv] = data.conversations
    assert (conv.system, conv.exchanges()) == ("Be brief.", [("Hi", "Hello")])
    (tmp_path / "bad.json").write_text("not json")
    with pytest.raises(ValueError, match="ShareGPT"):
        read_sharegpt(tmp_path / "bad.json")


def test_the_sharegpt_manifest_hash_is_stable() -> None:
    spec = WorkloadSpec(kind="sharegpt", dataset=str(FIXTURE), tokenizer=TINY)
    first, second = build_workload(spec), build_workload(spec)
    manifest = first.manifest
    assert manifest == second.manifest
    assert manifest["dataset_sha256"] == FIXTURE_SHA256
    assert manifest["content_sha256"] == (
        "9205f5c188c3446d1cd229b045054fa32c6f2646688682163262af925dc7dd04")
    assert manifest["counts"] == {"requests": 24, "conversations": 24}
    other = build_workload(WorkloadSpec(kind="sharegpt", dataset=str(FIXTURE), seed=1,
                                        tokenizer=TINY))
    assert other.manifest["content_sha256"] != manifest["content_sha256"]


def test_prefix_pool_shares_each_groups_system_prompt() -> None:
    w = build_workload(WorkloadSpec(kind="prefix", prefix_groups=3, prefix_tokens=40, size=12,
                                    prompt_tokens="fixed:10", tokenizer=TINY))
    tt = load_token_text(TINY)
    systems = {item.group: item.system for item in w.items}
    assert [i.group for i in w.items[:4]] == ["g0", "g1", "g2", "g0"]
    assert len(set(systems.values())) == 3
    assert all(item.system == systems[item.group] for item in w.items)
    assert {tt.count(s) for s in systems.values()} == {40}
    assert {tt.count(i.prompt) for i in w.items} == {10}
    assert w.manifest["prefix"] == {"groups": 3, "tokens": 40, "shared_share": 0.8}


def test_requests_csv_gets_the_workload_columns_and_cached_tokens(make_response) -> None:
    body = {"choices": [{"text": "x"}], "usage": {"prompt_tokens": 90, "completion_tokens": 8,
                                                   "prompt_tokens_details": {"cached_tokens": 64}}}
    context = {"workload_group": "g1", "turn": 2, "context_tokens": 88}
    row = dict(zip(COLUMNS, request_row(request_type="POST", name="/v1/completions",
                                        response_time=5.0, response_length=10,
                                        response=make_response(200, body), context=context),
                   strict=True))
    assert (row["workload_group"], row["turn"], row["context_tokens"],
            row["cached_tokens"]) == ("g1", 2, 88, 64)
    del body["usage"]["prompt_tokens_details"]
    row = dict(zip(COLUMNS, request_row(request_type="POST", name="/v1/completions",
                                        response_time=5.0, response_length=10,
                                        response=make_response(200, body)), strict=True))
    assert (row["workload_group"], row["cached_tokens"]) == ("", "")


def _requests(cached: list[float | None]) -> pd.DataFrame:
    return pd.DataFrame({"success": [True, True, True, False],
                         "prompt_tokens": [100, 100, 50, None],
                         "cached_tokens": cached, "workload_group": ["g0", "g0", "g1", "g1"],
                         "turn": [None] * 4})


def test_prefix_hit_rate_per_group() -> None:
    hits = prefix_cache_hits(_requests([0, 80, 25, None]))
    table = hits.table.set_index("key")
    assert hits.reported and hits.by == "group"
    assert hits.hit_rate == pytest.approx(105 / 250)
    assert table.loc["g0", "hit_rate"] == pytest.approx(0.4)
    assert table.loc["g1", "hit_rate"] == pytest.approx(0.5)


def test_no_cached_tokens_is_not_reported_not_zero() -> None:
    hits = prefix_cache_hits(_requests([None] * 4))
    assert not hits.reported and hits.hit_rate is None and hits.table.empty


def test_ram_by_context_bins() -> None:
    log = pd.DataFrame({"prompt_tokens": [10, 100, 300, 310], "completion_tokens": [8, 8, 8, 8],
                        "rss_mb": [100.0, 101, 102, 103], "rss_delta_mb": [1.0, 1, 2, 3],
                        "rss_peak_mb": [101.0, 102, 110, 112]})
    table = ram_by_context(log).set_index("context")
    assert list(table.index) == ["0-127", "256-511"]
    assert table.loc["0-127", "requests"] == 2
    assert table.loc["0-127", "mean_growth_mb"] == pytest.approx(2.0)
    assert table.loc["256-511", "mean_growth_mb"] == pytest.approx((10 + 12) / 2)
