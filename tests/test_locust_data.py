"""The Locust input files in locustfiles/data/ keep the format documented in their README."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parent.parent / "locustfiles" / "data"
# A sentence ends with . ! or ? (optionally closed by a quote or bracket) before space or the end.
SENTENCE_END = re.compile(r"[.!?][\"')]?(?=\s|$)")


def read_jsonl(name: str) -> list[dict]:
    """Parse one JSON object per non-blank line of a data file."""
    text = (DATA_DIR / name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def words(text: str) -> int:
    return len(text.split())


def sentences(text: str) -> int:
    return len(SENTENCE_END.findall(text))


@pytest.fixture(scope="module")
def prompts() -> list[dict]:
    return read_jsonl("prompts.jsonl")


@pytest.fixture(scope="module")
def articles() -> list[dict]:
    return read_jsonl("articles.jsonl")


@pytest.fixture(scope="module")
def qa() -> list[dict]:
    return read_jsonl("qa.jsonl")


@pytest.mark.parametrize(
    ("name", "prefix", "minimum"),
    [("prompts.jsonl", "p", 60), ("articles.jsonl", "a", 20), ("qa.jsonl", "q", 40)],
)
def test_file_has_enough_rows_with_unique_well_formed_ids(name: str, prefix: str, minimum: int):
    rows = read_jsonl(name)
    ids = [row["id"] for row in rows]
    assert len(rows) >= minimum
    assert len(set(ids)) == len(ids), [i for i, n in Counter(ids).items() if n > 1]
    assert all(re.fullmatch(rf"{prefix}\d{{3}}", i) for i in ids), ids


def test_every_line_is_one_json_object():
    for name in ("prompts.jsonl", "articles.jsonl", "qa.jsonl"):
        for line in (DATA_DIR / name).read_text(encoding="utf-8").splitlines():
            assert isinstance(json.loads(line), dict), f"{name}: {line[:60]}"


def test_prompts_have_the_documented_fields(prompts: list[dict]):
    for row in prompts:
        assert set(row) == {"id", "prompt", "length"}, row["id"]
        assert isinstance(row["prompt"], str) and row["prompt"].strip(), row["id"]
        assert row["length"] in {"short", "medium", "long"}, row["id"]


def test_prompt_lengths_are_roughly_a_third_each(prompts: list[dict]):
    counts = Counter(row["length"] for row in prompts)
    for length in ("short", "medium", "long"):
        assert 0.25 <= counts[length] / len(prompts) <= 0.42, counts


@pytest.mark.parametrize(
    ("length", "min_sentences", "max_sentences", "min_words", "max_words"),
    [("short", 1, 1, 3, 30), ("medium", 2, 4, 10, 90), ("long", 2, 12, 80, 150)],
)
def test_prompt_length_matches_its_label(
    prompts: list[dict], length: str, min_sentences: int, max_sentences: int,
    min_words: int, max_words: int,
):
    for row in (r for r in prompts if r["length"] == length):
        text = row["prompt"]
        assert min_sentences <= sentences(text) <= max_sentences, (row["id"], sentences(text))
        assert min_words <= words(text) <= max_words, (row["id"], words(text))
        assert "\n" not in text, row["id"]


def test_articles_have_the_documented_fields(articles: list[dict]):
    for row in articles:
        assert set(row) == {"id", "title", "text", "words"}, row["id"]
        assert row["title"].strip() and row["text"].strip(), row["id"]
        assert isinstance(row["words"], int), row["id"]


def test_article_word_counts_are_exact(articles: list[dict]):
    for row in articles:
        assert row["words"] == len(row["text"].split()), row["id"]


def test_articles_are_half_short_half_long(articles: list[dict]):
    lengths = [words(row["text"]) for row in articles]
    short = [n for n in lengths if n < 250]
    long_ = [n for n in lengths if n > 350]
    assert all(100 <= n <= 600 for n in lengths), lengths
    assert len(short) + len(long_) == len(lengths), "an article falls in 250-350 words"
    assert len(short) >= 10 and len(long_) >= 10, (len(short), len(long_))
    assert abs(len(short) - len(long_)) <= 2, (len(short), len(long_))


def test_article_titles_are_distinct(articles: list[dict]):
    titles = [row["title"] for row in articles]
    assert len(set(titles)) == len(titles)


def test_qa_rows_have_the_documented_fields(qa: list[dict]):
    for row in qa:
        assert set(row) == {"id", "question", "context", "answer"}, row["id"]
        assert all(isinstance(row[k], str) for k in ("question", "context", "answer")), row["id"]
        assert row["question"].strip(), row["id"]


def test_qa_contexts_are_bounded_and_contain_their_answer(qa: list[dict]):
    with_context = [row for row in qa if row["context"]]
    assert len(with_context) >= 35
    for row in with_context:
        assert 40 <= words(row["context"]) <= 150, (row["id"], words(row["context"]))
        assert row["answer"].strip(), row["id"]
        assert row["answer"] in row["context"], row["id"]


def test_some_questions_are_open(qa: list[dict]):
    assert sum(1 for row in qa if row["context"] == "") >= 5
