"""The two sides of ``python -m bench crosscheck``, each one run against the same server.

* ours: Locust with the suite's hooks (requests.csv, run.json, memory.csv) and the engines'
  streamed fixed-length user (bench/closed_loop_user.py ``CompletionsLoopUser``: /v1/completions,
  ``max_tokens`` = N with ``ignore_eos``, ``stream_options.include_usage``), driven open-loop
  by ``--arrival constant|poisson --rate R`` (locustfiles/arrivals.py);
* guidellm: ``guidellm run`` from its own venv, ``openai_http`` on /v1/completions (streamed,
  ``ignore_eos``, ``max_tokens`` = N, ``include_usage``), its ``synthetic_text`` prompts of P
  tokens counted by the served model's tokenizer (no hub: ``HF_HUB_OFFLINE=1``).

Both send the same body but for the prompt's text: the model name, ``max_tokens`` = N,
``ignore_eos``, greedy decoding (``temperature`` 0), ``stream`` and ``stream_options``
(``include_usage`` and ``continuous_usage_stats``, as guidellm always sends). commands.sh records
each command; the API key is written as ``<api-key>``, never its value.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.command_log import Commands
from harness.locust_process import LocustProcess, locust_env, suite_command
from harness.script_run import run_script

LOCUSTFILE = "bench/closed_loop_user.py"
USER_CLASS = "CompletionsLoopUser"
SPAWN_S = 2.0  # Locust's -t also covers spawning the pool; the schedule starts after it
KEY_SHOWN = "<api-key>"
# What guidellm's openai_http backend asks for on every streamed request; ours asks the same,
# so the server does the same work (a usage object in every event) for both.
GUIDELLM_STREAM_OPTIONS = {"include_usage": True, "continuous_usage_stats": True}


@dataclass(frozen=True)
class Target:
    """The one server both sides load."""

    url: str
    api_key: str
    model: str  # the id /v1/models lists, sent as "model" by both sides
    pidfile: Path | None = None  # ours: memory.csv samples the server's process tree
    operator_key: str | None = None


@dataclass(frozen=True)
class Load:
    """The shared load: arrival process, rate, duration and request shape."""

    profile: str  # constant | poisson
    rate_rps: float
    duration_s: float
    prompt_tokens: int
    output_tokens: int
    seed: int = 0


def served_model(url: str, api_key: str) -> str:
    """The first model id the server lists at GET /v1/models."""
    response = requests.get(f"{url}/v1/models", timeout=30,
                            headers={"Authorization": f"Bearer {api_key}"})
    response.raise_for_status()
    return str(response.json()["data"][0]["id"])


def run_ours(load: Load, target: Target, run_dir: Path, prompts: Path, pool: int,
             memory_sample_s: float, commands: Commands) -> Path:
    """Our suite at the load's rate; the run folder (raises when it wrote no requests.csv)."""
    options = ["--headless", "-u", str(pool), "-r", str(pool),
               "--memory-sample-s", f"{memory_sample_s:g}",
               "-t", f"{load.duration_s + SPAWN_S:g}s", "--stop-timeout", "120",
               "--arrival", load.profile, "--rate", f"{load.rate_rps:g}",
               "--arrival-seed", str(load.seed)]
    if target.pidfile is not None:
        options += ["--server-pidfile", str(target.pidfile)]
    cmd = suite_command(LOCUSTFILE, target.url, run_dir, "crosscheck-ours",
                        [*options, USER_CLASS])
    extra = {"LOCUST_BENCH_PROMPTS": str(prompts), "LOCUST_BENCH_TOKENS": str(load.output_tokens),
             "LOCUST_BENCH_REQUESTS": "0", "LOCUST_LOOP_BODY": json.dumps(
                 {"model": target.model, "stream_options": GUIDELLM_STREAM_OPTIONS})}
    commands.add(cmd, " ".join(f"{k}={shlex.quote(v)}" for k, v in extra.items())
                 + f" LOCUST_API_KEY={KEY_SHOWN}")
    run_dir.mkdir(parents=True, exist_ok=True)
    env = locust_env(target.api_key, target.operator_key, **extra)
    with LocustProcess(cmd, env, log_path=run_dir / "locust.log") as locust:
        code = locust.wait()
    if not (run_dir / "requests.csv").exists():
        raise SystemExit(f"ours: no requests.csv (Locust exit {code}); see "
                         f"{run_dir / 'locust.log'}")
    return run_dir


def guidellm_samples(load: Load) -> int:
    """Prompts guidellm builds: the schedule's arrivals in the duration, with room for a
    Poisson draw 4 sd above its mean (by default it keeps generating prompts all run)."""
    expected = load.rate_rps * load.duration_s
    return math.ceil(expected + 4.0 * math.sqrt(expected)) + 10


def guidellm_command(binary: Path, load: Load, target: Target, tokenizer: str,
                     out_json: Path, api_key: str) -> list[str]:
    """``guidellm run`` for the load against the target, its JSON written to ``out_json``."""
    backend = (f"kind=openai_http,target={target.url},model={target.model},"
               f"request_format=/v1/completions,api_key={api_key},extras.body.temperature=0")
    return [str(binary), "run", "--backend", backend,
            "--profile", f"kind={load.profile},rate={load.rate_rps:g}",
            "--data", f"kind=synthetic_text,prompt_tokens={load.prompt_tokens},"
                      f"output_tokens={load.output_tokens}",
            "--data-loader", f"kind=pytorch,samples={guidellm_samples(load)}",
            "--tokenizer", f"kind=huggingface_auto,model={tokenizer}",
            "--constraint", f"kind=max_duration,seconds={load.duration_s:g}",
            "--seed", f"kind=static,value={load.seed}",
            "--output", f"kind=json,path={out_json}", "--output", "kind=console",
            "--disable-console-interactive"]


def run_guidellm(binary: Path, load: Load, target: Target, tokenizer: str, out_dir: Path,
                 workers: int, commands: Commands) -> Path:
    """guidellm at the load's rate; its JSON output (raises when it wrote none)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out_json = out_dir / "guidellm.json"
    env_vars = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "GUIDELLM__MAX_WORKER_PROCESSES": str(workers)}
    commands.add(guidellm_command(binary, load, target, tokenizer, out_json, KEY_SHOWN),
                 " ".join(f"{k}={v}" for k, v in env_vars.items()))
    cmd = guidellm_command(binary, load, target, tokenizer, out_json, target.api_key)
    run = run_script(cmd, env={**os.environ, **env_vars}, log_path=out_dir / "guidellm.log")
    if run.returncode or not out_json.exists():
        raise SystemExit(f"guidellm exit {run.returncode}, no {out_json}; see "
                         f"{out_dir / 'guidellm.log'}")
    return out_json
