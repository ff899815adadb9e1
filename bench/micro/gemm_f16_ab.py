"""Two side-by-side questions about the fp16 GEMM, each answered in one process, alternating:

    python -m bench gemm-f16 --against 10e91ca       # this tree's gemm_f16.c against a commit's
    python -m bench gemm-f16 --huge-pages            # its weights on 4 KB against 2 MB pages

Both read the weights of a model's decode step from DRAM: ``--shapes`` names a preset whose
layer shapes are used (qwen2.5-1.5b: q, k, v, o, gate, up, down; gpt2-large: c_attn, c_fc,
c_proj), three copies of each layer in order, as a step reads them. Per row count: GB/s of
weights read by each side and new / old speed.

``--against REV``: ``server/engine/native`` as it is in this tree and as it was at ``REV``
(``git archive``), each built with setup.py's flags into a shared library of its own and
called through ctypes with the same operands. The only difference is the C source, so a
kernel change is measured against its parent and not against another process's luck (the
Zen 3 VM drifts ±15% from process to process).

``--huge-pages``: the served kernel (server.engine.native_f16) on two copies of the same
weights, one left on the 4 KB pages torch allocated, one moved onto 2 MB pages by
server.engine.huge_pages (what ``HUGE_PAGES`` does to a served model).
"""

from __future__ import annotations

import ctypes
import io
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from bench.timing import interleaved, ms
from server.engine import native_f16
from server.engine.huge_pages import collapse_weights

REPO = Path(__file__).resolve().parents[2]
NATIVE = "server/engine/native"
# setup.py's code-generation flags (it also gets Python's CFLAGS, whose -fwrapv it undoes).
FLAGS = ["-O3", "-Wall", "-Wextra", "-fopenmp", "-fno-wrapv", "-fPIC", "-shared"]
# (in, out) of one layer's linear maps, in the order a step reads them.
SHAPES = {
    "qwen2.5-1.5b": [(1536, 1536), (1536, 256), (1536, 256), (1536, 1536), (1536, 8960),
                     (1536, 8960), (8960, 1536)],
    "gpt2-large": [(1280, 3840), (1280, 1280), (1280, 5120), (5120, 1280)],
}
COPIES = 3


def build(source_dir: Path, out: Path) -> ctypes.CDLL:
    """gemm_f16.c of ``source_dir`` (a native/ folder) as a shared library at ``out``."""
    subprocess.run(["cc", *FLAGS, f"-I{source_dir}", str(source_dir / "gemm_f16.c"), "-o",
                    str(out)], check=True)
    return ctypes.CDLL(str(out))


def native_at(rev: str, into: Path) -> Path:
    """``server/engine/native`` as committed at ``rev``, extracted under ``into``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, NATIVE], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / NATIVE


def weights(shapes: str) -> list[torch.Tensor]:
    """fp16 weights [out, in] of COPIES layers of the preset's shapes."""
    return [torch.randn(n_out, n_in).to(torch.float16)
            for _ in range(COPIES) for n_in, n_out in SHAPES[shapes]]


def library_calls(libs: dict[str, ctypes.CDLL], ws: list[torch.Tensor], rows: int,
                  threads: int) -> dict[str, Callable[[], object]]:
    """One callable per library: every weight once, on the same random rows."""
    xs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in ws}
    outs = {w.shape[0]: torch.empty(rows, w.shape[0]) for w in ws}

    def run(lib: ctypes.CDLL) -> None:
        for w in ws:
            n, k = w.shape
            code = lib.gemm_f16(ctypes.c_void_p(xs[k].data_ptr()),
                                ctypes.c_void_p(w.data_ptr()), None,
                                ctypes.c_void_p(outs[n].data_ptr()), rows, n, k, threads)
            if code != 0:
                raise RuntimeError(f"gemm_f16 returned {code}")

    return {name: (lambda lib=lib: run(lib)) for name, lib in libs.items()}


def module_calls(sides: dict[str, nn.ModuleList], rows: int) -> dict[str, Callable[[], object]]:
    """One callable per copy of the layers: every layer once, on the same random rows."""
    first = next(iter(sides.values()))
    xs = {m.in_features: torch.randn(rows, m.in_features) for m in first}
    return {name: (lambda mods=mods: [m(xs[m.in_features]) for m in mods])
            for name, mods in sides.items()}


def report(calls: Callable[[int], dict[str, Callable[[], object]]], nbytes: int, rows: str,
           reps: int, old: str, new: str) -> None:
    """Per row count: each side's GB/s and new / old speed."""
    for count in (int(r) for r in rows.split(",")):
        times = interleaved(calls(count), reps, warmup=1)
        each = {name: ms(t) / 1000 for name, t in times.items()}
        line = ", ".join(f"{name} {nbytes / s / 1e9:.1f} GB/s" for name, s in each.items())
        print(f"{count:>3} rows: {line}, {new}/{old} speed {each[old] / each[new]:.3f}",
              flush=True)


def against(rev: str, shapes: str, rows: str, reps: int, threads: int) -> int:
    """This tree's gemm_f16.c against ``rev``'s, alternating in one process."""
    if not native_f16.available():  # the kernel would meet instructions this CPU lacks
        print(f"SKIP: {native_f16.unavailable()}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        libs = {rev: build(native_at(rev, folder / "old"), folder / "old.so"),
                "tree": build(REPO / NATIVE, folder / "new.so")}
        ws = weights(shapes)
        nbytes = sum(w.numel() * 2 for w in ws)
        print(f"gemm_f16.c at {rev} against this tree, {shapes} shapes x {COPIES} "
              f"({nbytes / 2**20:.0f} MB of fp16 weights), {threads} thread(s)")
        report(lambda count: library_calls(libs, ws, count, threads), nbytes, rows, reps,
               rev, "tree")
    return 0


def huge_pages(shapes: str, rows: str, reps: int) -> int:
    """The served fp16 kernel on 4 KB against 2 MB pages, alternating in one process."""
    if not native_f16.available():
        print(f"SKIP: {native_f16.unavailable()}")
        return 0

    def layers() -> nn.ModuleList:
        return nn.ModuleList(native_f16.NativeF16Linear(nn.Linear(n_in, n_out, bias=False))
                             for _ in range(COPIES) for n_in, n_out in SHAPES[shapes])

    sides = {"4k": layers(), "2m": layers()}
    moved = collapse_weights(sides["2m"])
    nbytes = sum(p.numel() * 2 for p in sides["4k"].parameters())
    print(f"{shapes} shapes x {COPIES}, {nbytes / 2**20:.0f} MB of fp16 weights; "
          f"{moved.summary()}; {torch.get_num_threads()} thread(s)")
    report(lambda count: module_calls(sides, count), nbytes, rows, reps, "4k", "2m")
    return 0
