"""How close each run's decode comes to this box's memory floor for one request.

    python -m bench decode-floor --roofline results/profile/roofline-zen4.json \
        results/reference/lone-user-2cores-zen4-v2/01-ours-defaults-u1 \
        results/reference/lone-user-2cores-zen4-v2/02-llama-f16-u1

A lone request's decode step reads every weight once, so at ``--bytes-per-param`` (2: bf16
and f16 alike) it can take no less than the weights' bytes over the read bandwidth (the
roofline's median streaming read, ``python -m bench roofline``): the floor. For each run
folder it prints the p10 and p50 time per output token of the streamed requests
(requests.csv; TPOT as the report defines it, analysis.streaming) and, for a llama.cpp row,
the ``eval time`` ms per token its llama-server.log printed per request; each also as the
floor's share of it (100% = at the floor). Meaningful for one-user runs: with more users a
step serves several requests and TPOT is not one step.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from analysis.readers import read_requests
from analysis.streaming import streamed, tpot_ms
from bench.roofline import load

# llama-server's per-request timing line (decode part), e.g.
# "slot print_timing: id  7 | task 0 |        eval time =  933.65 ms /  16 tokens (62.24 ms ..."
EVAL_LINE = re.compile(r"\|\s+eval time =.*\(\s*([\d.]+) ms per token")


def floor_ms(params: int, bytes_per_param: float, bandwidth_gb_s: float) -> float:
    """ms to read ``params`` weights of ``bytes_per_param`` bytes once at the bandwidth."""
    return params * bytes_per_param / (bandwidth_gb_s * 1e9) * 1000.0


def run_tpot_ms(run_dir: Path) -> pd.Series:
    """TPOT (ms) of the run's successful streamed requests."""
    rows = streamed(read_requests(run_dir / "requests.csv"))
    return tpot_ms(rows[rows["success"]]).dropna()


def llama_eval_ms(run_dir: Path) -> pd.Series:
    """ms per token of each request's decode, from llama-server.log (empty without one)."""
    log = run_dir / "llama-server.log"
    if not log.exists():
        return pd.Series(dtype=float)
    return pd.Series([float(m.group(1)) for m in EVAL_LINE.finditer(log.read_text())])


def lines(run_dirs: list[Path], floor: float) -> list[str]:
    """One Markdown table row per measure per run."""
    out = ["| run | measure | requests | p10 ms | p50 ms | floor / p10 | floor / p50 |",
           "| :-- | :-- | --: | --: | --: | --: | --: |"]
    for run_dir in run_dirs:
        for measure, values in (("TPOT (client)", run_tpot_ms(run_dir)),
                                ("eval (llama-server.log)", llama_eval_ms(run_dir))):
            if values.empty:
                continue
            p10, p50 = values.quantile(0.1), values.median()
            name = f"{run_dir.parent.name}/{run_dir.name}"
            out.append(f"| {name} | {measure} | {len(values)} | {p10:.1f} | {p50:.1f} "
                       f"| {floor / p10:.0%} | {floor / p50:.0%} |")
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the floor and the table."""
    parser = argparse.ArgumentParser(prog="python -m bench decode-floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    parser.add_argument("--roofline", type=Path, required=True, help="a roofline.json")
    parser.add_argument("--bytes-per-param", type=float, default=2.0)
    args = parser.parse_args(argv)
    roofline = load(args.roofline)
    floor = floor_ms(roofline.params, args.bytes_per_param, roofline.read_bandwidth_gb_s)
    print(f"Floor: {roofline.params / 1e6:,.1f} M parameters x {args.bytes_per_param:g} bytes "
          f"at {roofline.read_bandwidth_gb_s:.1f} GB/s ({roofline.cpu}, roofline measured "
          f"{roofline.measured_at}) = {floor:.1f} ms a token\n")
    print("\n".join(lines(args.runs, floor)))
    return 0
