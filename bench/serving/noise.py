"""Run-to-run spread of the same configuration on the same machine: the regression gate's
noise bands (analysis/compare.py DEFAULT_BANDS) are set from it.

    taskset -c 1 python -m bench noise --presets tiny,gpt2 --runs 5 --duration 30

Runs scripts/loadtest.py ``--runs`` times per preset, one after the other, with the same
options (each a fresh server); then reads every run folder with the analysis and prints,
per gated metric, the median, min, max, the widest and the median absolute deviation from
the median (relative),
and the band it suggests (three median absolute deviations), and writes noise.json and
noise.md into ``--out``. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from analysis.compare import DEFAULT_BANDS, HEADLINES, headline_values
from analysis.config import load_config
from analysis.document import table
from analysis.findings import build_findings
from analysis.run import load_run
from harness.run_folder import new_run_dir
from server.engine.hardware import describe, fingerprint_subprocess

REPO = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (defaults: five 30 s runs of tiny and gpt2, 4 users, 1 worker)."""
    p = argparse.ArgumentParser(prog="python -m bench noise", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="tiny,gpt2", help="comma-separated synthetic presets")
    p.add_argument("--runs", type=int, default=5, help="runs per preset")
    p.add_argument("--users", type=int, default=4)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load per run")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--models-dir", default=os.environ.get("MODELS_DIR", "models"))
    p.add_argument("--out", type=Path, help="default: results/<UTC timestamp>-noise/")
    p.add_argument("--reuse", action="store_true",
                   help="keep run folders of --out that already have requests.csv (only "
                        "re-read them); run the missing ones")
    return p.parse_args(argv)


def run_once(args: argparse.Namespace, preset: str, run_dir: Path) -> None:
    """One scripts/loadtest.py run of ``preset`` into ``run_dir`` (no analysis)."""
    cmd = [sys.executable, "scripts/loadtest.py", "--model", f"synthetic:{preset}",
           "--models-dir", args.models_dir, "--workers", str(args.workers),
           "--users", str(args.users), "--spawn-rate", str(args.users),
           "--duration", f"{args.duration:g}", "--stop-timeout", "60",
           "--label", run_dir.name, "--run-dir", str(run_dir), "--no-analysis"]
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
        subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False)


def spread(values: list[float]) -> dict[str, float]:
    """Median, min, max, the widest and the median absolute deviation from the median of
    ``values``, both relative to the median."""
    median = statistics.median(values)
    deviations = [abs(v - median) / abs(median) for v in values] if median else [math.nan]
    return {"median": median, "min": min(values), "max": max(values),
            "widest": max(deviations), "mad": statistics.median(deviations), "n": len(values)}


def suggested_band(mad: float, floor: float = 0.1) -> float:
    """A relative band of three median absolute deviations (about two standard deviations,
    and robust to the one run a busy box slowed down), rounded up to 0.05, at least ``floor``.

    Formula: band = max(floor, ceil(3 x MAD / median, to 0.05)); NaN when the median is 0
    (an error rate of 0: its band is absolute, DEFAULT_BANDS' floor).
    """
    if not math.isfinite(mad):
        return math.nan
    return max(floor, math.ceil(round(3 * mad * 20, 9)) / 20)


def metric_spreads(run_dirs: list[Path]) -> dict[str, dict[str, float]]:
    """The spread of every gated metric over ``run_dirs``."""
    names = [name for name, _, _, _ in HEADLINES]
    values = [headline_values(build_findings(load_run(d), load_config())) for d in run_dirs]
    found = {}
    for key, (name, _) in DEFAULT_BANDS.items():
        column = [v[names.index(name)] for v in values]
        measured = [float(x) for x in column if x is not None]
        if len(measured) >= 2:
            found[key] = spread(measured)
    return found


def render(record: dict[str, Any]) -> str:
    """noise.md: the command, the CPU and one table per preset."""
    parts = [f"# Run-to-run spread\n\nCommand: `{record['command']}`\n\n"
             f"Host: {record['host']}\n"]
    for preset, metrics in record["presets"].items():
        rows = [(k, s["n"], s["median"], s["min"], s["max"], f"{100 * s['widest']:.1f}%",
                 f"{100 * s['mad']:.1f}%",
                 suggested_band(s["mad"]) if math.isfinite(s["mad"]) else "n/a")
                for k, s in metrics.items()]
        parts.append(f"## synthetic:{preset}\n\n" + table(
            ["Metric", "Runs", "Median", "Min", "Max", "Widest deviation", "MAD",
             "Band (3 MAD)"], rows))
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run every preset ``--runs`` times, then write and print the spreads."""
    args = parse_args(argv)
    out = args.out or new_run_dir("noise")
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "command": " ".join(["python", "-m", "bench", "noise",
                             *(sys.argv[2:] if argv is None else argv)]),
        "host": describe(fingerprint_subprocess()), "presets": {}}
    for preset in args.presets.split(","):
        dirs = []
        for i in range(1, args.runs + 1):
            run_dir = out / f"{preset}-{i}"
            run_dir.mkdir(exist_ok=True)
            print(f"== {preset} run {i}/{args.runs}: {run_dir}", flush=True)
            if not (args.reuse and (run_dir / "requests.csv").is_file()):
                run_once(args, preset, run_dir)
            dirs.append(run_dir)
            # Written after every run: an interrupted measurement keeps what it measured.
            record["presets"][preset] = metric_spreads(dirs)
            record["load_1m"] = os.getloadavg()[0]
            (out / "noise.json").write_text(json.dumps(record, indent=2) + "\n")
    text = render(record)
    (out / "noise.md").write_text(text)
    print(text)
    return 0
