"""bench gemm-f16 --against / --huge-pages: both sides run and are reported, on small shapes."""

from __future__ import annotations

import re

import pytest

from bench.micro import gemm_f16, gemm_f16_ab
from server.engine import native_f16

pytestmark = pytest.mark.skipif(not native_f16.available(),
                                reason=str(native_f16.unavailable()))

LINE = re.compile(r"^\s+(\d+) rows: (\S+) ([\d.]+) GB/s, (\S+) ([\d.]+) GB/s, "
                  r"(\S+)/(\S+) speed ([\d.]+)$", re.MULTILINE)


@pytest.fixture(autouse=True)
def small_shapes(monkeypatch) -> None:
    monkeypatch.setitem(gemm_f16_ab.SHAPES, "qwen2.5-1.5b", [(72, 40), (1024, 1100)])


def test_against_builds_the_commit_and_the_tree_and_reports_both(capsys) -> None:
    assert gemm_f16.main(["--against", "HEAD", "--rows", "1,5", "--reps", "2"]) == 0
    out = capsys.readouterr().out
    rows = LINE.findall(out)
    assert [r[0] for r in rows] == ["1", "5"], out
    for _, old, old_gbps, new, new_gbps, left, right, speed in rows:
        assert (old, new, left, right) == ("HEAD", "tree", "tree", "HEAD")
        assert float(old_gbps) > 0 and float(new_gbps) > 0 and float(speed) > 0


def test_against_a_revision_that_does_not_exist_fails() -> None:
    with pytest.raises(Exception, match="git"):
        gemm_f16.main(["--against", "no-such-revision", "--rows", "1", "--reps", "1"])


def test_huge_pages_times_both_copies(capsys) -> None:
    assert gemm_f16.main(["--huge-pages", "--rows", "2", "--reps", "2"]) == 0
    out = capsys.readouterr().out
    assert "weights on 2 MB pages" in out
    [(_, old, _, new, _, left, right, _)] = LINE.findall(out)
    assert (old, new, left, right) == ("4k", "2m", "2m", "4k")
