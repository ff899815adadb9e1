"""server.engine.huge_pages: weights moved onto 2 MB pages, checked in /proc/self/smaps."""

from __future__ import annotations

import ctypes
import errno

import pytest
import torch
from torch import nn

from server.config import ConfigError, load_config
from server.engine.huge_pages import (
    COLLAPSE_TRIES,
    HUGE_PAGE,
    MADV_COLLAPSE,
    Collapse,
    collapse_range,
    collapse_weights,
    libc,
)
from server.engine.procfs import anon_huge_page_bytes as huge_bytes


def _collapsible() -> str | None:
    """Why this kernel cannot collapse (THP off, no MADV_COLLAPSE), or None."""
    probe = torch.ones(3 * HUGE_PAGE, dtype=torch.uint8)
    moved, refused = collapse_range(libc(), probe.data_ptr(), probe.nbytes)
    return None if moved else f"this kernel collapses nothing ({refused})"


CANNOT_COLLAPSE = _collapsible()  # None where this kernel moves ranges onto 2 MB pages
needs_thp = pytest.mark.skipif(CANNOT_COLLAPSE is not None, reason=str(CANNOT_COLLAPSE))


@needs_thp
def test_a_collapsed_range_is_on_huge_pages_with_its_bytes_unchanged() -> None:
    weights = torch.randn(4 * HUGE_PAGE // 4)  # 8 MB of float32
    before = weights.clone()
    start, size = weights.data_ptr(), weights.nbytes
    moved, refused = collapse_range(libc(), start, size)
    assert refused is None
    # The 2 MB-aligned interior: at least 3 of the 4 huge pages the tensor spans.
    assert 3 * HUGE_PAGE <= moved <= size
    assert huge_bytes(start, size) >= moved
    assert torch.equal(weights, before)


def test_a_range_without_an_aligned_2mb_interior_is_left_alone() -> None:
    small = torch.ones(HUGE_PAGE // 2, dtype=torch.uint8)
    assert collapse_range(libc(), small.data_ptr(), small.nbytes) == (0, None)


class _RefusingLibc:
    """A stand-in C library whose MADV_COLLAPSE fails with ``errors`` in turn, then works:
    the retry rule under test decides, not this kernel's free huge pages."""

    def __init__(self, *errors: int) -> None:
        self.errors, self.collapses = list(errors), 0

    def madvise(self, start: object, size: object, advice: int) -> int:
        if advice != MADV_COLLAPSE:
            return 0
        self.collapses += 1
        if self.errors:
            ctypes.set_errno(self.errors.pop(0))
            return -1
        return 0


@pytest.mark.parametrize("errors, moved, refused, calls", [
    ((errno.EAGAIN, errno.EAGAIN), 4 * HUGE_PAGE, None, 3),  # busy twice, then collapsed
    ((errno.EAGAIN,) * COLLAPSE_TRIES, 0, "EAGAIN", COLLAPSE_TRIES),  # busy every try
    ((errno.EINVAL,), 0, "EINVAL", 1),  # not transient: no retry
])
def test_collapse_retries_only_a_busy_kernel(errors: tuple, moved: int, refused: str | None,
                                             calls: int) -> None:
    fake = _RefusingLibc(*errors)
    assert collapse_range(fake, HUGE_PAGE, 4 * HUGE_PAGE) == (moved, refused)
    assert fake.collapses == calls


class _Held(nn.Module):
    """A tied pair, a plain packed tensor attribute and a small buffer, as the native
    kernels' modules hold them."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(4096, 256)  # 4 MB of float32
        self.head = nn.Linear(256, 4096, bias=False)
        self.head.weight = self.embed.weight  # tied: one storage
        self.packed = torch.zeros(3 * HUGE_PAGE, dtype=torch.uint8)  # not a parameter
        self.register_buffer("small", torch.zeros(16))


@needs_thp
def test_collapse_weights_counts_each_storage_once_and_finds_packed_attributes() -> None:
    model = _Held()
    done = collapse_weights(model)
    assert done.eligible_bytes == 4096 * 256 * 4 + 3 * HUGE_PAGE
    assert HUGE_PAGE * 3 <= done.collapsed_bytes <= done.eligible_bytes
    assert done.refused is None
    assert huge_bytes(model.packed.data_ptr(), model.packed.nbytes) >= HUGE_PAGE * 2
    assert "weights on 2 MB pages" in done.summary()


def test_a_model_of_small_tensors_has_nothing_eligible() -> None:
    assert collapse_weights(nn.Linear(8, 8)) == Collapse(0, 0, None)


def test_huge_pages_setting_is_validated_naming_the_field() -> None:
    assert load_config({"HUGE_PAGES": "false"})["HUGE_PAGES"] is False
    with pytest.raises(ConfigError, match="HUGE_PAGES"):
        load_config({"HUGE_PAGES": "sometimes"})
