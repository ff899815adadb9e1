"""python -m bench decode-floor: each run's time per token against the weights-read floor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from bench.roofline import Roofline, save
from harness.gunicorn_process import REPO


def _run_folder(path: Path, tpots: list[float], llama_evals: list[float] | None) -> Path:
    """A run folder whose streamed requests have the given TPOTs (plus one failed one and
    one unstreamed, both to be ignored)."""
    path.mkdir()
    rows = [{"timestamp": 1.0 + i, "method": "POST", "route": "/v1/chat/completions",
             "status_code": 200, "success": 1, "stream": 1, "completion_tokens": 11,
             "ttft_ms": 100.0, "response_time_ms": 100.0 + 10 * tpot}
            for i, tpot in enumerate(tpots)]
    rows.append({**rows[0], "success": 0, "status_code": 503, "response_time_ms": 9000.0})
    rows.append({**rows[0], "stream": 0, "response_time_ms": 9000.0})
    pd.DataFrame(rows).to_csv(path / "requests.csv", index=False)
    if llama_evals is not None:
        (path / "llama-server.log").write_text("".join(
            f"slot print_timing: id  7 | task {i} | prompt eval time =  80.0 ms /  8 tokens "
            f"( 10.00 ms per token, 100.0 tokens per second)\n"
            f"slot print_timing: id  7 | task {i} |        eval time = {ms * 16:.2f} ms /  16 "
            f"tokens ( {ms:.2f} ms per token, {1000 / ms:.2f} tokens per second)\n"
            for i, ms in enumerate(llama_evals)))
    return path


def test_floor_and_shares_come_from_the_roofline_and_the_runs(tmp_path: Path) -> None:
    roofline = tmp_path / "roofline.json"
    # 1,000 M parameters x 2 bytes at 40 GB/s: 50 ms a token.
    save(Roofline("synthetic:x", 1_000_000_000, 2, 40.0, {}, 64, 256, "now", "Test CPU"),
         roofline)
    ours = _run_folder(tmp_path / "ours", [100.0] * 9, None)
    llama = _run_folder(tmp_path / "llama", [50.0] * 4, [62.5, 62.5, 62.5])
    run = subprocess.run([sys.executable, "-m", "bench", "decode-floor", "--roofline",
                          str(roofline), str(ours), str(llama)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "at 40.0 GB/s (Test CPU" in run.stdout and "= 50.0 ms a token" in run.stdout
    table = [line for line in run.stdout.splitlines() if line.startswith(f"| {tmp_path.name}/")]
    assert table == [
        f"| {tmp_path.name}/ours | TPOT (client) | 9 | 100.0 | 100.0 | 50% | 50% |",
        f"| {tmp_path.name}/llama | TPOT (client) | 4 | 50.0 | 50.0 | 100% | 100% |",
        f"| {tmp_path.name}/llama | eval (llama-server.log) | 3 | 62.5 | 62.5 | 80% | 80% |",
    ]
