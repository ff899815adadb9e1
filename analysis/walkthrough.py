# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Walk-through: one load-test run, step by step
#
# The same functions `python -m analysis RUN_DIR` uses, one cell at a time, so each number
# in `report.md` can be traced to the rows it came from. Open this file in Jupyter (with
# jupytext) or VS Code, or run it as a script from the repository root:
# `python -m analysis.walkthrough RUN_DIR`. The run folder comes from the command line,
# else `WALKTHROUGH_RUN_DIR`, else `results/sample/steady-10-users`.

# %%
import os
import sys
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis import charts, charts_memory, memory, traffic
from analysis.config import load_config
from analysis.findings import build_findings
from analysis.report import render_markdown
from analysis.run import load_run

args = [a for a in sys.argv[1:] if not a.startswith("-")]  # Jupyter passes -f kernel.json
# The committed sample run, next to the analysis package in the repository.
SAMPLE = Path(memory.__file__).resolve().parent.parent / "results/sample/steady-10-users"
RUN_DIR = Path(args[0] if args else os.environ.get("WALKTHROUGH_RUN_DIR", SAMPLE))
print(f"run folder: {RUN_DIR.resolve()}")

# %% [markdown]
# ## 1. Read the run folder
# Each `read_*` is one pandas chain: snake_case columns, "N/A" as NaN, and `elapsed_s`
# counted from the run start in `run.json`. Missing files become notes, not errors.

# %%
run = load_run(RUN_DIR)
for note in run.notes:
    print("note:", note)
pd.Series(run.settings, dtype=object).to_frame("value")

# %%
run.requests.head()

# %% [markdown]
# ## 2. Compute the findings
# SLO targets: defaults in `analysis.config`, `ANALYSIS_*` environment variables on top,
# then the run's own `slo` in run.json.

# %%
cfg = load_config().for_run(run.settings)
findings = build_findings(run, cfg)
pd.DataFrame([vars(r) for r in findings.routes])

# %%
pd.Series(vars(findings.traffic) if findings.traffic else {}, dtype=object).to_frame("value")

# %% [markdown]
# ## 3. Latency and throughput over time


# %%
def chart(draw) -> Figure:
    """A 10x4 inch figure with ``draw(ax)`` applied (shown inline by Jupyter)."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    draw(fig.add_subplot())
    return fig


chart(lambda ax: charts.plot_latency_over_time(ax, run.history, cfg.slo_p95_ms))

# %%
chart(lambda ax: charts.plot_throughput(ax, run.history))

# %%
chart(lambda ax: charts.plot_tokens_per_s(ax, run.requests, cfg.bin_s))

# %% [markdown]
# ## 4. Where the time goes: queue vs inference, batch size

# %%
print(traffic.time_split(run.requests))
chart(lambda ax: charts.plot_queue_vs_inference(ax, run.requests))

# %%
chart(lambda ax: charts.plot_latency_vs_batch_size(ax, run.requests))

# %% [markdown]
# ## 5. Memory: total PSS vs summed RSS
# PSS divides each shared page among the processes mapping it, so total PSS is the real
# footprint; the gap to summed RSS is what preloading the model before forking saves.

# %%
print(findings.memory)
chart(lambda ax: charts_memory.plot_memory_over_time(ax, run.memory))

# %%
memory.totals(run.memory).head()

# %%
print(findings.ram)
chart(lambda ax: charts_memory.plot_ram_per_request(ax, run.server_log))

# %% [markdown]
# ## 6. The step sweep and its knee (only for a sweep run)

# %%
if findings.sweep is not None:
    print(f"knee: {findings.sweep.knee_users} users; "
          f"SLO held up to {findings.sweep.max_users_within_slo} users")  # fmt: skip
    display_steps = findings.sweep.steps
else:
    print("one load level: no sweep")
    display_steps = pd.DataFrame()
chart(lambda ax: charts_memory.plot_sweep(ax, display_steps, cfg.slo_p95_ms))

# %% [markdown]
# ## 7. Streamed answers: TTFT, TPOT, goodput
# A request is "good" when it succeeded and met every TTFT / TPOT / E2E target; goodput is
# good requests per second, SLO attainment the share of streamed requests that were good.

# %%
if findings.streaming is not None:
    print(pd.DataFrame([vars(p) for p in findings.streaming.percentiles]))
    print(findings.goodput)
else:
    print("no streamed requests in this run: TTFT/TPOT not measured")
chart(lambda ax: charts.plot_ttft_tpot(ax, run.requests, cfg.slo_ttft_ms,
                                         cfg.slo_tpot_ms))  # fmt: skip

# %% [markdown]
# ## 8. Verdicts and recommendations
# Each recommendation comes from an explicit rule in `analysis/rules_*.py` and quotes the
# numbers that made it fire.

# %%
pd.DataFrame(findings.slo)

# %%
for rec in findings.recommendations:
    print(f"[{rec.severity}] {rec.rule}: {rec.text}\n")

# %%
print(render_markdown(findings)[:3000])
