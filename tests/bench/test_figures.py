"""docs/figures.md is what ``python -m bench figures`` makes of the committed runs, and every
figure README.md and docs/ quote as ``<!-- fig:KEY -->VALUE`` is that table's VALUE."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.figures import FIGURES_MD, REPO, collect, main, render, values

QUOTING = [REPO / "README.md", *(p for p in sorted((REPO / "docs").glob("*.md"))
                                 if p != FIGURES_MD)]
MARK = re.compile(r"<!-- fig:([a-z0-9_]+) -->")
# 1.87 + the multiplication sign, 2,497, 0.21%, 23.3 (a trailing comma or full stop is prose)
NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?[\u00d7%]?")
# The headline each doc must quote from the table, not type in.
REQUIRED = {
    "README.md": {"ref_u8_tok_ratio", "ref_u8_ttft_ratio", "ref_u8_mem_ratio",
                  "ref_u1_tok_ratio", "main_served", "main_504", "main_tok_s",
                  "main_ram_p95_mb"},
    "docs/results.md": {"ref_u8_tok_ratio", "ref_u8_ours_tok_s", "ref_u8_llama_tok_s",
                        "ref_u1_tok_ratio", "ref_u1_ours_tok_s", "main_served", "main_tok_s",
                        "main_ram_p95_mb", "main_peak_pss_mb", "sampler_cpu_pct",
                        "tenant_fifo_b_s", "tenant_fair_b_s"},
    "docs/recommendations.md": {"ref_u8_tok_ratio", "ref_u1_tok_ratio", "int8_u8_tok_s",
                                "ref_u8_ours_tok_s", "kern_bf16_b8_ms", "kern_fp16_b8_ms",
                                "sampler_cpu_pct"},
}  # fmt: skip


@pytest.fixture(scope="module")
def table() -> dict[str, str]:
    return values(collect())


def quotes(text: str) -> list[tuple[str, str]]:
    """(key, the number written right after its marker) for each marker in ``text``."""
    found = []
    for mark in MARK.finditer(text):
        number = NUMBER.match(text, mark.end())
        found.append((mark.group(1), number.group() if number else text[mark.end():][:20]))
    return found


def mismatches(text: str, table: dict[str, str]) -> list[str]:
    """Each quote whose key is not in the table or whose number is not the table's."""
    return [f"fig:{key} says {said!r}, the table {table.get(key, 'has no such key')!r}"
            for key, said in quotes(text) if table.get(key) != said]


def test_figures_md_is_up_to_date() -> None:
    assert FIGURES_MD.read_text() == render(collect()), (
        "docs/figures.md is out of date: run python -m bench figures")


def test_keys_are_unique() -> None:
    keys = [f.key for f in collect()]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("doc", QUOTING, ids=lambda p: p.relative_to(REPO).as_posix())
def test_quoted_figures_are_the_tables(doc: Path, table: dict[str, str]) -> None:
    assert mismatches(doc.read_text(), table) == []


@pytest.mark.parametrize(("doc", "keys"), REQUIRED.items())
def test_the_headline_is_quoted_from_the_table(doc: str, keys: set[str],
                                               table: dict[str, str]) -> None:
    quoted = {key for key, _ in quotes((REPO / doc).read_text())}
    assert keys <= set(table)
    assert keys - quoted == set(), f"{doc} does not quote these from docs/figures.md"


def test_a_wrong_or_unknown_quote_is_caught(table: dict[str, str]) -> None:
    text = ("made <!-- fig:ref_u8_tok_ratio -->1.88× at 8 users, "  # noqa: RUF001
            "<!-- fig:main_served -->212 served, <!-- fig:no_such_key -->3 of them")
    assert table["main_served"] == "212"
    assert [m.split(" says")[0] for m in mismatches(text, table)] == [
        "fig:ref_u8_tok_ratio", "fig:no_such_key"]
    assert quotes("2,497, <!-- fig:x -->2,497, and <!-- fig:y -->0.21%.") == [
        ("x", "2,497"), ("y", "0.21%")]


def test_check_fails_on_a_stale_table(tmp_path: Path) -> None:
    stale = tmp_path / "figures.md"
    stale.write_text(FIGURES_MD.read_text().replace("1.87×", "1.88×"))  # noqa: RUF001
    assert main(["--check", "--out", str(stale)]) == 1
    assert main(["--out", str(stale)]) == 0
    assert main(["--check", "--out", str(stale)]) == 0


def test_readme_is_a_front_door() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; results go to docs/"
