"""`make bench` end to end on synthetic:tiny: two rows, a few seconds each, the whole folder."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.gunicorn_process import REPO
from harness.script_run import run_script
from tests.conftest import MODELS_DIR
from tests.locust_runs import locust_env

# A whole-server run of the measurement tool: `make test-tools`, not `make test` (CI's 30 min).
pytestmark = pytest.mark.tool

ROWS = ("naive", "batch-bf16")


@pytest.fixture(scope="module")
def bench(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """(folder, stdout) of one reduced `make bench` run."""
    out = tmp_path_factory.mktemp("bench") / "bench"
    args = (f"--out {out} --models-dir {MODELS_DIR} --no-run-analysis --stop-timeout 60 "
            "--roofline-args '--size 128 --buffer-mb 16 --seconds 0.05'")
    result = run_script(
        ["make", "-s", "bench", f"PY={sys.executable}", "BENCH_MODEL=synthetic:tiny",
         "BENCH_SECONDS=4", "BENCH_WARMUP=1", f"BENCH_ROWS={','.join(ROWS)}",
         f"BENCH_ARGS={args}"],
        cwd=REPO, env=locust_env())
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out, result.stdout


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_bench_folder_holds_each_run_the_comparison_and_the_table(bench) -> None:
    out, _ = bench
    runs = [out / f"{i:02d}-{name}" for i, name in enumerate(ROWS, 1)]
    for run in runs:
        assert {"run.json", "requests.csv", "memory.csv", "server_requests.jsonl",
                "locust_stats.csv"} <= {p.name for p in run.iterdir()}, run
        assert json.loads((run / "run.json").read_text())["bench"]["row"] == run.name[3:]
    assert (out / "comparison" / "comparison.md").read_text().startswith(
        "# Run comparison: naive vs batch-bf16")
    for name in ("roofline.json", "roofline.md", "prompts.jsonl", "bench.json", "table.csv"):
        assert (out / name).is_file(), name
    host = json.loads((out / "bench.json").read_text())["host"]
    assert host["cpu_model"] and host["torch_cpu_capability"] and host["blas"]
    assert f"Host: {host['cpu_model']} (" in (out / "table.md").read_text()


def test_rows_ran_their_configuration_with_fixed_length_requests(bench) -> None:
    out, _ = bench
    naive, batched = (rows_of(out / f"{i:02d}-{n}" / "requests.csv")
                      for i, n in enumerate(ROWS, 1))
    assert "Using worker: sync" in (out / "01-naive" / "gunicorn.log").read_text()
    assert json.loads((out / "01-naive" / "run.json").read_text())["dtype"] == "float32"
    assert json.loads((out / "02-batch-bf16" / "run.json").read_text())["dtype"] == "bfloat16"
    assert {r["batch_size"] for r in naive if r["success"] == "1"} == {"1"}
    assert max(int(r["batch_size"]) for r in batched if r["success"] == "1") <= 8
    for rows in (naive, batched):
        ok = [r for r in rows if r["success"] == "1"]
        assert ok and all(r["user_class"] == "BenchUser" for r in rows)
        assert {(r["prompt_tokens"], r["completion_tokens"]) for r in ok} == {("64", "64")}


def test_table_ratios_are_computed_against_the_first_row(bench) -> None:
    out, stdout = bench
    table = pd.read_csv(out / "table.csv", index_col="row")
    assert list(table.index) == list(ROWS)
    tokens = table["output_tokens_per_s"]
    assert (tokens > 0).all()
    assert table["x_naive"].tolist() == pytest.approx((tokens / tokens["naive"]).tolist())
    assert table["of_limit"].tolist() == pytest.approx(
        (tokens / table["limit_tokens_per_s"]).tolist())
    markdown = (out / "table.md").read_text()
    assert "| naive | 1 sync x cores/W thr, float32" in markdown
    assert "| 1.00x |" in markdown
    assert markdown.splitlines()[0] in stdout  # printed as well as saved
