"""The master's file-page release: reclaims pages only this process maps, keeps shared ones."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.engine import file_pages, procfs

MB = 2**20


def _mapping_rss_mb(path: Path, pid: int | str = "self") -> float:
    """Resident MB of ``path``'s mappings in process ``pid`` (smaps)."""
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as lines:
        for line in lines:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                inside = len(head) >= 6 and head[5] == str(path)
            elif inside and head[0] == "Rss:":
                total += int(head[1])
    return total / 1024


def _touched_file(tmp_path: Path, mb: int) -> tuple[Path, mmap.mmap]:
    path = tmp_path / "code.bin"
    path.write_bytes(os.urandom(mb * MB))
    with path.open("rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    assert sum(mapped[i] for i in range(0, len(mapped), 4096)) >= 0  # fault every page in
    return path, mapped


def test_lists_file_mappings_and_not_anonymous_ones(tmp_path: Path) -> None:
    path, mapped = _touched_file(tmp_path, 1)
    anonymous = mmap.mmap(-1, 1 * MB)
    try:
        starts = {start for start, _ in procfs.file_mappings()}
        lines = Path("/proc/self/maps").read_text().splitlines()
        mine = [line for line in lines if line.endswith(str(path))]
        assert len(mine) == 1 and int(mine[0].split("-")[0], 16) in starts
        assert not any(int(line.split("-")[0], 16) in starts for line in lines
                       if line.split()[-1].startswith("[") or len(line.split()) == 5)
        assert len(anonymous) == MB  # mapped while file_mappings read maps
    finally:
        anonymous.close()
        mapped.close()


def test_reclaims_a_file_only_this_process_maps(tmp_path: Path) -> None:
    path, mapped = _touched_file(tmp_path, 16)
    assert _mapping_rss_mb(path) > 15
    released = file_pages.release_file_pages()
    if released.refused:
        pytest.skip(f"this kernel keeps file pages: {released.refused}")
    assert _mapping_rss_mb(path) < 1, released.summary()
    assert released.before_mb - released.after_mb > 15
    assert "released" in released.summary()
    assert mapped[123] == path.read_bytes()[123]  # read back from the file when needed
    mapped.close()


def test_keeps_pages_another_process_maps(tmp_path: Path) -> None:
    """The kernel skips shared pages: what a worker also maps stays resident for it."""
    path, mapped = _touched_file(tmp_path, 16)
    (tmp_path / "alone").mkdir()
    alone, alone_mapped = _touched_file(tmp_path / "alone", 4)  # proves the release ran
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import mmap, sys\n"
         f"f = open({str(path)!r}, 'rb'); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\n"
         "sum(m[i] for i in range(0, len(m), 4096)); print('in', flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "in"
        released = file_pages.release_file_pages()
        if released.refused:
            pytest.skip(f"this kernel keeps file pages: {released.refused}")
        assert _mapping_rss_mb(alone) < 1
        assert _mapping_rss_mb(path) > 15
        assert _mapping_rss_mb(path, holder.pid) > 15
    finally:
        alone_mapped.close()
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()
        mapped.close()


def test_anonymous_memory_is_left_alone() -> None:
    buffer = bytearray(32 * MB)
    buffer[::4096] = b"x" * len(buffer[::4096])
    before = _anonymous_mb()
    file_pages.release_file_pages()
    assert _anonymous_mb() > before - 4
    assert buffer[4096] == ord("x")


def _anonymous_mb() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no Anonymous line")
