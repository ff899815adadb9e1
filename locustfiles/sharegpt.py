"""ShareGPT-format conversations: read a local JSON/JSONL file, or write a small one.

The format (as vLLM's and guidellm's benchmarks read it): a JSON list, or JSON Lines, of
records ``{"id": ..., "conversations": [{"from": "human"|"gpt"|"system", "value": text}]}``.
Nothing is ever downloaded: ``--dataset PATH`` names a file on disk.

``read_sharegpt`` keeps each conversation's turns in order, ``human`` as the user, ``gpt``
as the assistant (a ``system`` turn becomes the system prompt); a record with no human turn
is skipped and counted. The file's SHA-256 goes in the manifest.

``write_sharegpt`` writes a small file from the shipped corpus (seeded), the project's own
fixture: ``python -m locustfiles.sharegpt tests/fixtures/sharegpt_small.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from locustfiles.inputs import load_inputs

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "chatgpt": "assistant", "system": "system"}


@dataclass(frozen=True)
class Conversation:
    """One conversation: its id, an optional system prompt and (role, text) turns."""

    id: str
    system: str
    turns: tuple[tuple[str, str], ...]

    def exchanges(self) -> list[tuple[str, str]]:
        """(user text, reference answer or "") per user turn, in order."""
        pairs: list[tuple[str, str]] = []
        for role, text in self.turns:
            if role == "user":
                pairs.append((text, ""))
            elif pairs and not pairs[-1][1]:
                pairs[-1] = (pairs[-1][0], text)
        return pairs


@dataclass(frozen=True)
class ShareGPTFile:
    """What a file held: its conversations, how many records were skipped, its hash."""

    path: str
    conversations: tuple[Conversation, ...]
    records: int
    skipped: int
    sha256: str


def _records(text: str) -> list[object]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        return json.loads(stripped)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _conversation(record: object, index: int) -> Conversation | None:
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        return None
    system, turns = "", []
    for turn in record["conversations"]:
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            continue
        role = ROLES.get(str(turn.get("from", "")).lower())
        if role == "system":
            system = turn["value"]
        elif role and turn["value"].strip():
            turns.append((role, turn["value"]))
    if not any(role == "user" for role, _ in turns):
        return None
    return Conversation(str(record.get("id", index)), system, tuple(turns))


def read_sharegpt(path: Path | str) -> ShareGPTFile:
    """Read a ShareGPT JSON or JSONL file; ValueError when it is neither."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        records = _records(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"--dataset {path}: not ShareGPT JSON or JSONL ({error})") from None
    if not isinstance(records, list):
        raise ValueError(f"--dataset {path}: expected a list of conversation records")
    kept = [c for i, r in enumerate(records) if (c := _conversation(r, i)) is not None]
    return ShareGPTFile(str(path), tuple(kept), len(records), len(records) - len(kept),
                        hashlib.sha256(raw).hexdigest())


def fixture_records(conversations: int, seed: int) -> list[dict]:
    """ShareGPT records made from the shipped corpus: questions, prompts and passages."""
    inputs = load_inputs()
    rng = random.Random(seed)
    records = []
    for n in range(conversations):
        turns = []
        for _ in range(rng.randint(1, 4)):
            pair = rng.choice(inputs.qa)
            answer = pair.context or rng.choice(inputs.prompts)
            asked = pair.question if rng.random() < 0.5 else rng.choice(inputs.prompts)
            turns += [{"from": "human", "value": asked}, {"from": "gpt", "value": answer}]
        records.append({"id": f"fixture-{n:03d}", "conversations": turns})
    return records


def write_sharegpt(path: Path | str, conversations: int = 24, seed: int = 0) -> Path:
    """Write ``conversations`` fixture records to ``path`` as a JSON list (stable bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(fixture_records(conversations, seed), indent=1, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Write a ShareGPT fixture file from the shipped corpus."""
    parser = argparse.ArgumentParser(prog="python -m locustfiles.sharegpt",
                                     description="write a ShareGPT-format file from the "
                                                 "shipped corpus")
    parser.add_argument("path", type=Path)
    parser.add_argument("--conversations", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_sharegpt(args.path, args.conversations, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
