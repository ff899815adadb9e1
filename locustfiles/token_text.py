"""Texts of an exact number of tokens of the served tokenizer, cut from the shipped corpus.

Locust processes must not import torch, so the tokenizer is read with the ``tokenizers``
package from a ``tokenizer.json``: ``--tokenizer PATH`` (the file, or a model folder holding
it), else the synthetic models' one under ``$MODELS_DIR`` (default ``models/``; every
``synthetic:*`` preset encodes text with one BPE, trained on the project's own corpus; the
Llama-family ones add special tokens and a chat template around it). When no
tokenizer is found (a llama.cpp server elsewhere, say) lengths are counted in words and
run.json's manifest says so: they are then only an approximation of the server's tokens.

The corpus is the texts of locustfiles/data (prompts, articles, QA passages) in file order,
tokenized once; ``text(n, offset)`` decodes ``n`` tokens from ``offset`` (wrapping around)
and takes as many as re-encode to exactly ``n`` tokens (the next start when a seam
merges).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from locustfiles.inputs import DATA_DIR, load_inputs

WORDS_NOTE = ("no tokenizer.json found (--tokenizer, $MODELS_DIR/synthetic-*): lengths are "
              "in words, an approximation of the server's tokens")


def find_tokenizer(given: str = "", models_dir: str = "") -> Path | None:
    """The tokenizer.json to count with: ``given`` (file or folder), else a synthetic one."""
    if given:
        path = Path(given)
        path = path / "tokenizer.json" if path.is_dir() else path
        if not path.is_file():
            raise ValueError(f"--tokenizer {given}: no tokenizer.json there")
        return path
    root = Path(models_dir or os.environ.get("MODELS_DIR", "") or "models")
    found = sorted(root.glob("synthetic-*/tokenizer.json"))
    return found[0] if found else None


@dataclass(frozen=True)
class TokenText:
    """Counts tokens and cuts texts of a given token count from the corpus."""

    kind: str  # "tokenizer" or "words"
    source: str  # the tokenizer.json path, or WORDS_NOTE
    sha256: str  # of tokenizer.json ("" for words)
    _tokenizer: Any
    _corpus: tuple[int, ...] | tuple[str, ...]

    def count(self, text: str) -> int:
        """Tokens of ``text`` as the server counts them (words without a tokenizer)."""
        if self._tokenizer is None:
            return len(text.split())
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def text(self, n: int, offset: int) -> str:
        """A text of exactly ``n`` tokens, starting ``offset`` tokens into the corpus."""
        if self._tokenizer is None:
            size = len(self._corpus)
            return " ".join(self._corpus[(offset + i) % size] for i in range(n))
        for start in range(offset, offset + 64):  # a seam that merges: try the next start
            text = self._cut(n, start)
            if text is not None:
                return text
        raise RuntimeError(f"could not cut a text of {n} tokens at offset {offset}")

    def _cut(self, n: int, start: int) -> str | None:
        """Decode the fewest corpus tokens from ``start`` that re-encode to ``n``, if any."""
        size = len(self._corpus)
        ids = [self._corpus[(start + i) % size] for i in range(n + 16)]
        low, high = 1, len(ids)  # re-encoded count grows with the ids decoded: bisect
        while low < high:
            mid = (low + high) // 2
            if self.count(self._tokenizer.decode(ids[:mid])) < n:
                low = mid + 1
            else:
                high = mid
        text = self._tokenizer.decode(ids[:low])
        return text if self.count(text) == n else None

    def manifest(self) -> dict[str, str]:
        """What counted the tokens, for run.json."""
        return {"kind": self.kind, "source": self.source, "sha256": self.sha256}


def corpus_text(data_dir: Path = DATA_DIR) -> str:
    """The shipped texts, one per paragraph, in file order."""
    inputs = load_inputs(data_dir)
    parts = [*inputs.prompts, *(a.text for a in inputs.articles),
             *(q.context for q in inputs.qa if q.context)]
    return "\n\n".join(parts)


@cache
def load_token_text(tokenizer_path: str = "", models_dir: str = "") -> TokenText:
    """The counter for ``--tokenizer`` (cached: every user of a process shares it)."""
    path = find_tokenizer(tokenizer_path, models_dir)
    corpus = corpus_text()
    if path is None:
        return TokenText("words", WORDS_NOTE, "", None, tuple(corpus.split()))
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    ids = tuple(tokenizer.encode(corpus, add_special_tokens=False).ids)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return TokenText("tokenizer", str(path), digest, tokenizer, ids)
