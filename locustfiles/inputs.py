"""What the users send: the texts in locustfiles/data/, drawn so no two requests are equal.

Each user gets a number unique across all Locust processes (worker index * 1,000,000 + a
per-process count) and walks the data from its own offset. Every body also carries the
request's reference ``<user>-<n>`` (the generate body as its ``seed``; summaries as a "[ref]"
line before the article; questions before their context, or before the question when it has
none), so two concurrent users never send the same body by construction, even when there
are more users than texts. Article titles are not sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TypeVar

DATA_DIR = Path(__file__).resolve().parent / "data"
USERS_PER_PROCESS = 1_000_000
Item = TypeVar("Item")


@dataclass(frozen=True)
class Article:
    """A text to summarize."""

    title: str
    text: str

    @property
    def words(self) -> int:
        """Length in words."""
        return len(self.text.split())


@dataclass(frozen=True)
class QAPair:
    """A question and the passage that answers it."""

    question: str
    context: str


@dataclass(frozen=True)
class Inputs:
    """All the data files, loaded."""

    prompts: tuple[str, ...]
    articles: tuple[Article, ...]
    qa: tuple[QAPair, ...]


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@cache
def load_inputs(data_dir: Path = DATA_DIR) -> Inputs:
    """Read prompts.jsonl, articles.jsonl and qa.jsonl (formats in data/README.md)."""
    return Inputs(
        prompts=tuple(r["prompt"] for r in _read_jsonl(data_dir / "prompts.jsonl")),
        articles=tuple(Article(r["title"], r["text"])
                       for r in _read_jsonl(data_dir / "articles.jsonl")),
        qa=tuple(QAPair(r["question"], r["context"]) for r in _read_jsonl(data_dir / "qa.jsonl")),
    )


class Draws:
    """One user's walk through the data: ``next_ref()`` then ``pick(items)`` per request."""

    def __init__(self, user_number: int) -> None:
        self.user_number = user_number
        self.count = 0

    def next_ref(self) -> str:
        """Start the next request; return its reference "<user>-<n>" (unique in the run)."""
        self.count += 1
        return f"{self.user_number}-{self.count}"

    @property
    def seed(self) -> int:
        """A sampling seed unique to the current request."""
        return self.user_number * USERS_PER_PROCESS + self.count

    def pick(self, items: tuple[Item, ...]) -> Item:
        """The current request's item: consecutive users start at consecutive items."""
        return items[(self.user_number + self.count - 1) % len(items)]
