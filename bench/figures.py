"""The headline figures, one generated table (docs/figures.md) from the committed runs.

    python -m bench figures            # (re)write docs/figures.md
    python -m bench figures --check    # exit 1 when docs/figures.md is not what the runs give

Each figure has a stable key. README.md and docs/ quote one as ``<!-- fig:KEY -->VALUE``, and
tests/bench/test_figures.py fails when a quoted VALUE is not this table's. The numbers are
the reference table's (``bench.reference_table``: its rows and ratios) and the analysis
report's (the run's Findings), formatted here and not derived again.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from analysis.document import num, table
from analysis.records import Findings
from bench.reference_table import (
    ReferenceRow,
    peak_until_answered,
    ratio,
    read_findings,
    reference_row,
)

REPO = Path(__file__).resolve().parent.parent
FIGURES_MD = REPO / "docs" / "figures.md"

# The runs the headline rests on: (command folder, our row, llama.cpp's rows).
REF_U8 = ("results/reference/u8-2cores-zen4-c", "01-ours-defaults-u8", "02-llama-f16-u8")
REF_U1 = ("results/reference/lone-user-2cores-zen4-c", "01-ours-defaults-u1", "02-llama-f16-u1")
REF_INT8 = ("results/reference/u8-2cores-zen4-v3", "02-ours-int8-u8", "03-llama-f16-u8",
            "04-llama-q8_0-u8")
MAIN_JOB = "results/sample/steady-10-users-native-zen4"  # make loadtest: 10 users, 300 s
TENANTS = ("results/tenants/before-fifo-zen3", "results/tenants/after-fair-zen3")
SAMPLER = "results/profile/sampler-cost.json"
# Issue 31's three engines on one closed loop (python -m bench engines), and the host's read
# bandwidth measured right after it (python -m bench roofline) for the decode floor.
ENGINES = "results/reference/engines-gpt2-large-v4-zen3"
ENGINES_ZEN4 = "results/reference/engines-gpt2-large-zen4"  # the same command on the Zen 4
# The Llama family on the Zen 4 with its bf16 C layers (issue 33), c = 1 and 8.
FAMILY_ZEN4 = {"qwen": "results/reference/engines-qwen2.5-1.5b-v2-zen4",
               "llama": "results/reference/engines-llama-3.2-1b-v2-zen4"}
# The same closed loop on the AVX2 Zen 2, ours and llama.cpp f16 (no OpenVINO build there).
FAMILY_ZEN2 = {"qwen": "results/reference/engines-qwen2.5-1.5b-zen2",
               "llama": "results/reference/engines-llama-3.2-1b-zen2"}
# Then with OpenVINO's fp16 IR built there too, after the worker pinned its mmap threshold.
FAMILY_ZEN2_OV = {"qwen": "results/reference/engines-qwen2.5-1.5b-ov-zen2",
                  "llama": "results/reference/engines-llama-3.2-1b-ov-zen2"}
# The same presets one request at a time, ours and llama.cpp alternating request by request
# with the read rate probed after each (python -m bench alternate).
ALTERNATE_ZEN4 = {"qwen": "results/reference/alternate-qwen2.5-1.5b-zen4",
                  "llama": "results/reference/alternate-llama-3.2-1b-zen4"}
# Our int8 (GPT-2's layers in C on the int8 GEMMs) against OpenVINO's int8 IR, c = 1 and 8.
# The family presets on the OpenAI mix (python -m bench reference --preset P --users 8
# --lone-user --quants f16), after the kernel table moved into a child process.
FAMILY_MIX_ZEN4 = {"qwen": "results/reference/mix-qwen2.5-1.5b-v3-zen4",
                   "llama": "results/reference/mix-llama-3.2-1b-v3-zen4"}
# The same command on the AVX2-only Zen 3, with the trees of server.engine.checkpoint.
FAMILY_MIX_ZEN3 = {"qwen": "results/reference/mix-qwen2.5-1.5b-v4-zen3",
                   "llama": "results/reference/mix-llama-3.2-1b-v4-zen3"}
# Qwen2.5-1.5B on the AVX2 Zen 2 after the prefix cache kept one entry per prompt and 32 rows:
# 8 users with PREFIX_CACHE_ROWS=8 beside the defaults in one command, then the lone user.
# Then Llama-3.2-1B's defaults, 8 users and one, in one command; then 8 users for 300 s.
# Then that Llama command again once the server stopped importing transformers' LlamaConfig,
# and both presets' once each worker trimmed after its warm-up and pinned its mmap threshold.
MIX_ZEN2 = {"u8": "results/reference/mix-qwen2.5-1.5b-v5-zen2-u8",
            "u1": "results/reference/mix-qwen2.5-1.5b-v5-zen2-u1",
            "llama": "results/reference/mix-llama-3.2-1b-v5-zen2",
            "llama_300s": "results/reference/mix-llama-3.2-1b-v5-zen2-300s",
            "llama_v6": "results/reference/mix-llama-3.2-1b-v6-zen2",
            "llama_v7": "results/reference/mix-llama-3.2-1b-v7-zen2",
            "qwen_v7": "results/reference/mix-qwen2.5-1.5b-v7-zen2"}
ENGINES_INT8_ZEN4 = "results/reference/engines-gpt2-large-int8-zen4"
# Our int8 against our own default (bfloat16+native) in one command, for the recommendation.
INT8_VS_BF16_ZEN4 = "results/reference/engines-gpt2-large-int8-vs-bf16-zen4"


@dataclass(frozen=True)
class Source:
    """Where a figure was measured: a run folder or file, and the CPU its host record names."""

    path: str  # relative to the repository
    cpu_model: str
    cores: int
    isa: tuple[str, ...]
    cpu_id: str = ""  # x86 "family F model M", where the run recorded it

    def cpu(self) -> str:
        """Short label: model (family and model number where recorded), cores and the widest
        vector ISA that matters here."""
        best = next((label for flag, label in [("avx512_bf16", "AVX-512 BF16"),
                                              ("avx512f", "AVX-512"), ("avx2", "AVX2")]
                     if flag in self.isa), "no AVX2")
        model = f"{self.cpu_model} ({self.cpu_id})" if self.cpu_id else self.cpu_model
        return f"{model}, {self.cores} core{'s' if self.cores != 1 else ''}, {best}"


@dataclass(frozen=True)
class Figure:
    """One quotable number: its key, what it is (with the unit), its text, its source."""

    section: str
    key: str
    what: str
    value: str  # exactly as the docs quote it
    source: Source


def _run(root: Path, path: str) -> tuple[Findings, ReferenceRow, Source]:
    findings, requests = read_findings(root / path)
    hw = findings.hardware
    source = Source(path, (hw and hw.cpu_model) or "?", int(findings.settings.get("host.cores", 0)),
                    tuple(hw.isa) if hw else (), (hw and hw.cpu_id) or "")
    return findings, reference_row(findings, requests), source


def _json(root: Path, path: str) -> tuple[dict, Source]:
    data = json.loads((root / path / "run.json" if (root / path).is_dir() else root / path)
                      .read_text())
    host = data.get("host", {})
    return data, Source(path, host.get("cpu_model", "?"), int(host.get("cores", 0)),
                        tuple(host.get("isa", ())), host.get("cpu_id") or "")


TIMES = "\u00d7"  # the multiplication sign the docs write ratios with


def _x(value: float, base: float) -> str:
    return num(ratio(value, base), 2) + TIMES


def _figures(section: str, rows: list[tuple[str, str, str, Source]]) -> list[Figure]:
    return [Figure(section, key, what, value, source) for key, what, value, source in rows]


def reference(root: Path, prefix: str, folders: tuple[str, str, str],
              section: str, equal_work: bool = False) -> Iterator[Figure]:
    """Ours (defaults) against llama.cpp f16 from one ``python -m bench reference`` command;
    with ``equal_work``, also our peak PSS up to our answer numbered as many as llama.cpp
    answered in its whole row (``bench.reference_table.peak_until_answered``)."""
    top, ours_dir, llama_dir = folders
    f, us, src = _run(root, f"{top}/{ours_dir}")
    _, ref, ref_src = _run(root, f"{top}/{llama_dir}")
    pair = Source(top, src.cpu_model, src.cores, src.isa, src.cpu_id)
    yield from _figures(section, [
        (f"{prefix}_ours_tok_s", "ours, output tokens/s", num(us.output_tokens_per_s, 2), src),
        (f"{prefix}_llama_tok_s", "llama.cpp f16, output tokens/s",
         num(ref.output_tokens_per_s, 2), ref_src),
        (f"{prefix}_tok_ratio", "output tokens/s, ours / llama.cpp's (higher is better)",
         _x(us.output_tokens_per_s, ref.output_tokens_per_s), pair),
        (f"{prefix}_ours_ttft_s", "ours, TTFT p50, s", num(us.ttft_p50_s, 2), src),
        (f"{prefix}_llama_ttft_s", "llama.cpp f16, TTFT p50, s", num(ref.ttft_p50_s, 2), ref_src),
        (f"{prefix}_ttft_ratio", "TTFT p50, ours / llama.cpp's (lower is better)",
         _x(us.ttft_p50_s, ref.ttft_p50_s), pair),
        (f"{prefix}_ours_pss_mb", "ours, peak total PSS, MB", num(us.peak_total_pss_mb, 0), src),
        (f"{prefix}_llama_rss_mb", "llama.cpp f16, peak RSS, MB",
         num(ref.peak_total_rss_mb, 0), ref_src),
        (f"{prefix}_mem_ratio", "our peak PSS / llama.cpp's peak RSS (lower is better)",
         _x(us.peak_total_pss_mb, ref.peak_total_rss_mb), pair),
        (f"{prefix}_ours_served", "ours, requests served", num(us.requests - us.failures), src),
        (f"{prefix}_llama_served", "llama.cpp f16, requests served",
         num(ref.requests - ref.failures), ref_src),
    ])
    if equal_work:
        answered = ref.requests - ref.failures
        peak = peak_until_answered(root / top / ours_dir, answered)
        yield from _figures(section, [
            (f"{prefix}_ours_pss_equal_mb", "ours, peak total PSS until as many answers as "
             "llama.cpp gave in its whole row, MB", num(peak, 0), src),
            (f"{prefix}_mem_ratio_equal", "that peak / llama.cpp's peak RSS (lower is better)",
             _x(peak, ref.peak_total_rss_mb), pair)])
    if prefix == "ref_u1":  # the lone-user run's startup kernel table, ms a decode step
        for precision, name in [("bfloat16+native", "native"), ("bfloat16", "bf16"),
                                ("float16", "fp16")]:
            k = f.hardware.timing(precision) if f.hardware else None
            for rows, ms in [(1, k.batch_1_ms), (k.max_batch, k.batch_max_ms)] if k else []:
                yield Figure("Startup kernel table of the lone-user run",
                             f"kern_{name}_b{rows}_ms",
                             f"{precision}, {rows}-row decode step on one thread, ms",
                             num(ms, 0), src)


def int8(root: Path) -> Iterator[Figure]:
    """int8 against llama.cpp's q8_0 and f16, 8 users, one command (before the native path)."""
    top, ours_dir, f16_dir, q8_dir = REF_INT8
    _, us, src = _run(root, f"{top}/{ours_dir}")
    _, f16, _ = _run(root, f"{top}/{f16_dir}")
    _, q8, _ = _run(root, f"{top}/{q8_dir}")
    pair = Source(top, src.cpu_model, src.cores, src.isa, src.cpu_id)
    yield from _figures("int8 against llama.cpp: 8 users, an earlier command", [
        ("int8_u8_tok_s", "ours int8, output tokens/s", num(us.output_tokens_per_s, 2), src),
        ("int8_u8_q8_ratio", "output tokens/s, int8 / llama.cpp q8_0's",
         _x(us.output_tokens_per_s, q8.output_tokens_per_s), pair),
        ("int8_u8_f16_ratio", "output tokens/s, int8 / llama.cpp f16's",
         _x(us.output_tokens_per_s, f16.output_tokens_per_s), pair),
        ("int8_u8_pss_mb", "ours int8, peak total PSS, MB", num(us.peak_total_pss_mb, 0), src),
        ("int8_u8_mem_ratio", "int8 peak PSS / llama.cpp f16's peak RSS",
         _x(us.peak_total_pss_mb, f16.peak_total_rss_mb), pair),
    ])


def main_job(root: Path) -> Iterator[Figure]:
    """The main job (``make loadtest``: 10 users, 300 s, the default mix), its report's numbers."""
    f, _, src = _run(root, MAIN_JOB)
    t, ram, memory = f.traffic, f.ram, f.memory
    yield from _figures("The main job: `make loadtest`, 10 users, 300 s", [
        ("main_requests", "requests sent", num(t.requests), src),
        ("main_served", "requests served", num(t.successes), src),
        ("main_504", "requests timed out (504)", num(t.status_counts.get(504, 0)), src),
        ("main_tok_s", "output tokens/s", num(t.output_tokens_per_s, 1), src),
        ("main_ram_p95_mb", "RAM per request p95 (RSS delta), MB", num(ram.p95_rss_delta_mb, 0),
         src),
        ("main_peak_pss_mb", "peak total PSS, MB", num(memory.peak_pss_mb, 0), src),
    ])


def tenants(root: Path) -> Iterator[Figure]:
    """Issue 29: key B's latency beside key A's queue, before and after the fair queue."""
    for path, name in zip(TENANTS, ("fifo", "fair"), strict=True):
        data, src = _json(root, path)
        yield from _figures("Tenants: key B beside key A's queue (`python -m bench tenants`)", [
            (f"tenant_{name}_lone_s", f"{name}: B alone, s", num(data["b_lone_s"], 2), src),
            (f"tenant_{name}_b_s", f"{name}: B beside A, s", num(data["b"]["latency_s"], 2), src),
            (f"tenant_{name}_bound_s", f"{name}: bound (twice alone + one step), s",
             num(data["bound_s"], 2), src),
        ])


def sampler(root: Path) -> Iterator[Figure]:
    """The server's memory sampler (``python -m bench sampler-cost``)."""
    data, src = _json(root, SAMPLER)
    on, every = data["summary"]["on"], data["summary"]["every-sample"]
    yield from _figures("What measuring costs: the server's memory sampler", [
        ("sampler_cpu_pct", "defaults: the sampler thread's CPU, % of a core",
         num(on["sampler_cpu_share"] * 100, 2) + "%", src),
        ("sampler_vs_off", "defaults: tokens/s, sampler on / off",
         num(on["throughput_vs_off"], 3), src),
        ("sampler_every_cpu_pct", "smaps_rollup every sample (before): CPU, % of a core",
         num(every["sampler_cpu_share"] * 100, 2) + "%", src),
    ])


def _engine_rows(data: dict) -> dict[tuple[str, str, int], dict]:
    return {(r["engine"], r["variant"], int(r["concurrency"])): r for r in data["rows"]}


def _host_source(folder: str, host: dict) -> Source:
    return Source(folder, host.get("cpu_model", "?"), int(host.get("cores", 0)),
                  tuple(host.get("isa", ())), host.get("cpu_id") or "")


def _engine_rows_of(root: Path, folder: str) -> tuple[Source, dict, Callable]:
    """One ``python -m bench engines`` folder: its source, rows by (engine, variant, c) and a
    tokens/s reader."""
    data = json.loads((root / folder / "engines.json").read_text())
    rows = _engine_rows(data)

    def tok(engine: str, variant: str, c: int) -> float:
        return float(rows[(engine, variant, c)]["output_tokens_per_s"])

    return _host_source(folder, data["host"]), rows, tok


def _engine_folder(root: Path, folder: str) -> tuple[Source, dict, Callable, float]:
    """``_engine_rows_of``, and the lone stream's decode floor (read bandwidth over the weights'
    bytes at 2 B/param, tokens/s, from the folder's roofline.json)."""
    src, rows, tok = _engine_rows_of(root, folder)
    roof = json.loads((root / folder / "roofline.json").read_text())
    return src, rows, tok, roof["read_bandwidth_gb_s"] * 1e9 / (roof["params"] * 2)


def engines(root: Path, folder: str = ENGINES, prefix: str = "eng",
            section: str = "Three engines, one closed loop (`python -m bench engines`)"
            ) -> Iterator[Figure]:
    """Ours, llama.cpp and OpenVINO GenAI on the same closed loop (64 -> 128 tokens), with the
    lone stream's decode floor: the fp16 weights' bytes over the measured read bandwidth; one
    ``python -m bench engines`` folder, its keys prefixed ``prefix``."""
    src, rows, tok, floor = _engine_folder(root, folder)
    c32 = rows[("ours", "auto", 32)]
    yield from _figures(section, [
        (f"{prefix}_c8_ours_tok_s", "c = 8, ours (defaults), output tokens/s",
         num(tok("ours", "auto", 8), 1), src),
        (f"{prefix}_c8_ov_tok_s", "c = 8, OpenVINO GenAI fp16 IR (in-process), output tokens/s",
         num(tok("openvino", "fp16", 8), 1), src),
        (f"{prefix}_c8_vs_ov", "c = 8, ours / OpenVINO fp16",
         _x(tok("ours", "auto", 8), tok("openvino", "fp16", 8)), src),
        (f"{prefix}_c8_vs_llama", "c = 8, ours / llama.cpp f16",
         _x(tok("ours", "auto", 8), tok("llama.cpp", "f16", 8)), src),
        (f"{prefix}_int8_c1_vs_ov", "c = 1, ours int8 / OpenVINO int8",
         _x(tok("ours", "int8", 1), tok("openvino", "int8", 1)), src),
        (f"{prefix}_int8_c8_vs_ov", "c = 8, ours int8 / OpenVINO int8",
         _x(tok("ours", "int8", 8), tok("openvino", "int8", 8)), src),
        (f"{prefix}_c32_served", "c = 32, ours (defaults): requests served of 32",
         num(c32["served"]), src),
        (f"{prefix}_c32_vs_ov", "c = 32, ours / OpenVINO fp16",
         _x(tok("ours", "auto", 32), tok("openvino", "fp16", 32)), src),
        (f"{prefix}_floor_tok_s", "decode floor of one stream: read bandwidth / fp16 weight bytes, "
         "tokens/s", num(floor, 1), src),
        (f"{prefix}_c1_ours_floor", "c = 1, ours (defaults) / the floor",
         num(tok("ours", "auto", 1) / floor * 100, 0) + "%", src),
        (f"{prefix}_c1_llama_floor", "c = 1, llama.cpp f16 / the floor",
         num(tok("llama.cpp", "f16", 1) / floor * 100, 0) + "%", src),
    ])


def family_engines(root: Path, folder: str, prefix: str, section: str) -> Iterator[Figure]:
    """A Llama-family preset on the closed loop at c = 1 and 8 (issue 33's yardstick): ours
    against llama.cpp f16 and, where the folder has them, OpenVINO's fp16 and int8 IR, and the
    lone stream against its decode floor; one ``python -m bench engines`` folder, keys
    prefixed ``prefix``."""
    src, rows, tok, floor = _engine_folder(root, folder)
    figures = [
        (f"{prefix}_c1_vs_llama", "c = 1, ours (defaults) / llama.cpp f16",
         _x(tok("ours", "auto", 1), tok("llama.cpp", "f16", 1)), src),
        (f"{prefix}_c8_vs_llama", "c = 8, ours / llama.cpp f16",
         _x(tok("ours", "auto", 8), tok("llama.cpp", "f16", 8)), src),
    ]
    if ("openvino", "fp16", 8) in rows:  # a box with OpenVINO's build
        figures.append((f"{prefix}_c8_vs_ov", "c = 8, ours / OpenVINO fp16 IR (in-process)",
                        _x(tok("ours", "auto", 8), tok("openvino", "fp16", 8)), src))
    if ("openvino", "int8", 8) in rows:  # its int8 IR too (OV_FORMATS)
        figures.append((f"{prefix}_c8_vs_ov_int8", "c = 8, ours / OpenVINO int8 IR (in-process)",
                        _x(tok("ours", "auto", 8), tok("openvino", "int8", 8)), src))
    yield from _figures(section, [
        *figures,
        (f"{prefix}_c1_ours_floor", "c = 1, ours (defaults) / the 16-bit decode floor",
         num(tok("ours", "auto", 1) / floor * 100, 0) + "%", src),
        (f"{prefix}_c1_llama_floor", "c = 1, llama.cpp f16 / the floor",
         num(tok("llama.cpp", "f16", 1) / floor * 100, 0) + "%", src),
    ])


def int8_engines(root: Path, folder: str = ENGINES_INT8_ZEN4) -> Iterator[Figure]:
    """Our int8 against OpenVINO's int8 IR on the closed loop at c = 1 and 8 (issue 31's int8
    bars: tokens/s at both, TTFT p50 at 8); one ``python -m bench engines`` folder."""
    src, rows, tok = _engine_rows_of(root, folder)
    ttft = {engine: float(rows[(engine, "int8", 8)]["ttft_p50_s"])
            for engine in ("ours", "openvino")}
    yield from _figures("Our int8 against OpenVINO's int8 IR on the Zen 4 (int8 C layers)", [
        ("int8z4_c1_vs_ov", "c = 1, ours int8 / OpenVINO int8 IR (in-process)",
         _x(tok("ours", "int8", 1), tok("openvino", "int8", 1)), src),
        ("int8z4_c8_vs_ov", "c = 8, the same",
         _x(tok("ours", "int8", 8), tok("openvino", "int8", 8)), src),
        ("int8z4_c8_ours_tok_s", "c = 8, ours int8, output tokens/s",
         num(tok("ours", "int8", 8), 1), src),
        ("int8z4_c8_ov_tok_s", "c = 8, OpenVINO int8 IR, output tokens/s",
         num(tok("openvino", "int8", 8), 1), src),
        ("int8z4_c8_ttft_ours", "c = 8, ours int8, TTFT p50 s", num(ttft["ours"], 2), src),
        ("int8z4_c8_ttft_ov", "c = 8, OpenVINO int8 IR, TTFT p50 s", num(ttft["openvino"], 2),
         src),
    ])


def int8_vs_default(root: Path, folder: str = INT8_VS_BF16_ZEN4) -> Iterator[Figure]:
    """``DTYPE=int8`` against the server's default on the same closed loop, one command."""
    src, rows, tok = _engine_rows_of(root, folder)
    pss = {v: float(rows[("ours", v, 8)]["peak_pss_mb"]) for v in ("auto", "int8")}
    yield from _figures("Our int8 against our default on the Zen 4, one command", [
        ("int8bf_c1", "c = 1, ours int8 / ours default (bfloat16+native), tok/s",
         _x(tok("ours", "int8", 1), tok("ours", "auto", 1)), src),
        ("int8bf_c8", "c = 8, the same", _x(tok("ours", "int8", 8), tok("ours", "auto", 8)), src),
        ("int8bf_pss_int8", "c = 8, ours int8, peak PSS MB", num(pss["int8"], 0), src),
        ("int8bf_pss_auto", "c = 8, ours default, peak PSS MB", num(pss["auto"], 0), src),
    ])


def alternate(root: Path, folder: str, prefix: str, section: str) -> Iterator[Figure]:
    """One ``python -m bench alternate`` folder: ours against llama.cpp f16 paired round by
    round (closed-loop tok/s, decode speed), and each side's decode against the floor from
    the read rate probed beside it; keys prefixed ``prefix``."""
    data = json.loads((root / folder / "alternate.json").read_text())
    src = _host_source(folder, data["host"])
    ours, llama = data["summary"]["ours"], data["summary"]["llama.cpp f16"]
    tok, speed = llama["base_tok_s_ratio"], llama["base_decode_speed_ratio"]
    yield from _figures(section, [
        (f"{prefix}_alt_c1_vs_llama", "c = 1 alternating, ours / llama.cpp f16 tok/s "
         "(median of the rounds' ratios)", _x(tok["median"], 1.0), src),
        (f"{prefix}_alt_c1_min", "the same, lowest round", _x(tok["min"], 1.0), src),
        (f"{prefix}_alt_c1_max", "the same, highest round", _x(tok["max"], 1.0), src),
        (f"{prefix}_alt_decode_vs_llama", "decode time per token, llama.cpp / ours (median)",
         _x(speed["median"], 1.0), src),
        (f"{prefix}_alt_ours_tok_s", "ours, tok/s (median)", num(ours["tok_s"], 1), src),
        (f"{prefix}_alt_llama_tok_s", "llama.cpp f16, tok/s (median)", num(llama["tok_s"], 1),
         src),
        (f"{prefix}_alt_ours_floor", "ours, the floor beside it / decode time per token",
         num(ours["floor_share"] * 100, 0) + "%", src),
        (f"{prefix}_alt_llama_floor", "llama.cpp f16, the same",
         num(llama["floor_share"] * 100, 0) + "%", src),
    ])


def collect(root: Path = REPO) -> list[Figure]:
    """Every headline figure, read from the committed runs under ``root``."""
    return [*reference(root, "ref_u8", REF_U8, "Ours against llama.cpp's server: 8 users"),
            *reference(root, "ref_u1", REF_U1, "Ours against llama.cpp's server: one user"),
            *int8(root), *main_job(root), *tenants(root), *sampler(root), *engines(root),
            *engines(root, ENGINES_ZEN4, "eng4",
                     "Three engines, one closed loop, on the AVX-512 BF16 Zen 4"),
            *family_engines(root, FAMILY_ZEN4["qwen"], "qwen4",
                            "Qwen2.5-1.5B, three engines, on the Zen 4 (bf16 C layers)"),
            *family_engines(root, FAMILY_ZEN4["llama"], "llama4",
                            "Llama-3.2-1B, three engines, on the Zen 4 (bf16 C layers)"),
            *alternate(root, ALTERNATE_ZEN4["qwen"], "qwen4",
                       "Qwen2.5-1.5B, one request at a time, alternating with llama.cpp"),
            *alternate(root, ALTERNATE_ZEN4["llama"], "llama4",
                       "Llama-3.2-1B, one request at a time, alternating with llama.cpp"),
            *int8_engines(root), *int8_vs_default(root), *family_mix(root),
            *mix_zen2(root),
            *family_engines(root, FAMILY_ZEN2["qwen"], "zen2_qwen",
                            "Qwen2.5-1.5B, ours and llama.cpp, on the AVX2 Zen 2 (fp16 C layers)"),
            *family_engines(root, FAMILY_ZEN2["llama"], "zen2_llama",
                            "Llama-3.2-1B, ours and llama.cpp, on the AVX2 Zen 2 (fp16 C layers)"),
            *family_engines(root, FAMILY_ZEN2_OV["qwen"], "zen2ov_qwen",
                            "Qwen2.5-1.5B, three engines, on the AVX2 Zen 2 (fp16 C layers)"),
            *family_engines(root, FAMILY_ZEN2_OV["llama"], "zen2ov_llama",
                            "Llama-3.2-1B, three engines, on the AVX2 Zen 2 (fp16 C layers)")]


def family_mix(root: Path) -> Iterator[Figure]:
    """Each family preset's default server against llama.cpp f16 on the OpenAI mix, at 8
    users and at one, from one ``python -m bench reference`` command per preset."""
    for folders, key, cpu in [(FAMILY_MIX_ZEN4, "{family}4", "Zen 4"),
                              (FAMILY_MIX_ZEN3, "zen3_{family}", "Zen 3")]:
        for family, name in [("qwen", "Qwen2.5-1.5B"), ("llama", "Llama-3.2-1B")]:
            for users, ours, llama in [(8, "01-ours-defaults-u8", "02-llama-f16-u8"),
                                       (1, "03-ours-defaults-u1", "04-llama-f16-u1")]:
                yield from reference(root, f"{key.format(family=family)}_mix_u{users}",
                                     (folders[family], ours, llama),
                                     f"{name} on the OpenAI mix, {users} "
                                     f"user{'s' * (users > 1)}, against llama.cpp f16 ({cpu})")


def mix_zen2(root: Path) -> Iterator[Figure]:
    """Each family preset's defaults (32 prefix rows; Qwen also with PREFIX_CACHE_ROWS=8)
    against llama.cpp f16 on the OpenAI mix (Zen 2), with the share of prompt tokens our
    server copied from its prefix cache at 8 users."""
    qwen = "Qwen2.5-1.5B on the OpenAI mix, {}, against llama.cpp f16 (Zen 2)"
    llama = "Llama-3.2-1B on the OpenAI mix, {}, against llama.cpp f16 (Zen 2)"
    # (key prefix, folder, our row, llama.cpp's row, section, with the cached share)
    rows = [("zen2_qwen_mix_u8", MIX_ZEN2["u8"], "01-ours-defaults-u8", "03-llama-f16-u8",
             qwen.format("8 users"), True),
            ("zen2_qwen_rows8_mix_u8", MIX_ZEN2["u8"], "02-ours-rows8-u8", "03-llama-f16-u8",
             qwen.format("8 users, PREFIX_CACHE_ROWS=8"), True),
            ("zen2_qwen_mix_u1", MIX_ZEN2["u1"], "01-ours-defaults-u1", "02-llama-f16-u1",
             qwen.format("1 user"), False),
            ("zen2_llama_mix_u8", MIX_ZEN2["llama"], "01-ours-defaults-u8", "02-llama-f16-u8",
             llama.format("8 users"), True),
            ("zen2_llama_mix_u1", MIX_ZEN2["llama"], "03-ours-defaults-u1", "04-llama-f16-u1",
             llama.format("1 user"), False),
            ("zen2_llama_300s_mix_u8", MIX_ZEN2["llama_300s"], "01-ours-defaults-u8",
             "02-llama-f16-u8", llama.format("8 users, 300 s"), True),
            ("zen2v6_llama_mix_u8", MIX_ZEN2["llama_v6"], "01-ours-defaults-u8",
             "02-llama-f16-u8", llama.format("8 users, without LlamaConfig's imports"), True),
            ("zen2v6_llama_mix_u1", MIX_ZEN2["llama_v6"], "03-ours-defaults-u1",
             "04-llama-f16-u1", llama.format("1 user, without LlamaConfig's imports"), False),
            *[(f"zen2v7_{family}_mix_u{users}", MIX_ZEN2[f"{family}_v7"], ours, ref,
               template.format(f"{users} user{'s' * (users > 1)}, mmap threshold pinned"),
               users > 1)
              for family, template in (("llama", llama), ("qwen", qwen))
              for users, ours, ref in ((8, "01-ours-defaults-u8", "02-llama-f16-u8"),
                                       (1, "03-ours-defaults-u1", "04-llama-f16-u1"))]]
    for prefix, top, ours, ref, section, with_share in rows:
        yield from reference(root, prefix, (top, ours, ref), section,
                             equal_work=prefix.startswith("zen2v7_"))
        if with_share:
            findings, _, src = _run(root, f"{top}/{ours}")
            cached = float(findings.settings["server.prompt_tokens_cached"])
            computed = float(findings.settings["server.prompt_tokens_computed"])
            yield from _figures(section, [
                (f"{prefix}_cached_share", "ours, prompt tokens copied from the prefix cache / "
                 "prompt tokens", num(100 * cached / (cached + computed), 0) + "%", src)])


def values(figures: list[Figure]) -> dict[str, str]:
    """key -> the value as quoted."""
    return {f.key: f.value for f in figures}


def render(figures: list[Figure]) -> str:
    """docs/figures.md: one table per section, then each source's CPU record."""
    out = ["# Headline figures", "",
           "Generated by `python -m bench figures` from the committed runs named in each row; "
           "do not edit by hand. The docs quote a figure as `<!-- fig:KEY -->VALUE`, and "
           "`tests/bench/test_figures.py` fails when a quote and this table differ. Ratios are "
           "ours over llama.cpp's. Model: gpt2-large with synthetic weights unless a section "
           "names another preset; ours serves its defaults except where a figure says int8.",
           ""]
    sections = list(dict.fromkeys(f.section for f in figures))
    for section in sections:
        rows = [(f"`{f.key}`", f.what, f"`{f.source.path}`", f.source.cpu(), f.value)
                for f in figures if f.section == section]
        out += [f"## {section}", "",
                table(["key", "figure", "source", "CPU", "value"], rows, left_columns=4), ""]
    sources = sorted({f.source for f in figures}, key=lambda s: s.path)
    out += ["## Sources: the host each was measured on (run.json `host`)", "",
            table(["source", "CPU model", "ISA", "cores"],
                  [(f"`{s.path}`", s.cpu_model, " ".join(s.isa), s.cores) for s in sources],
                  left_columns=3), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Write docs/figures.md, or with --check say whether it is up to date."""
    p = argparse.ArgumentParser(prog="python -m bench figures", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=FIGURES_MD, help="default: docs/figures.md")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when --out differs from the runs' figures")
    args = p.parse_args(argv)
    text = render(collect())
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date: run python -m bench figures")
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
