"""The suite's command-line options and the run folder they point at (no Locust import:
the run script uses this module too).

Every option also reads an environment variable (Locust's ``env_var``) and can be set in
``locust.conf`` without the leading dashes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.run_folder import new_run_dir
from locustfiles.arrival_schedule import PROCESSES
from locustfiles.search_options import add_search_options
from locustfiles.stages import DEFAULT_STAGES
from locustfiles.user_mix import MIX_CHOICES, TARGETS
from locustfiles.workload_options import add_workload_options

if TYPE_CHECKING:
    from locust.argument_parser import LocustArgumentParser

SHAPES = ["none", "steps", "search"]  # --shape: locustfiles/shapes.py, locustfiles/capacity.py


def add_options(parser: LocustArgumentParser) -> None:
    """Add the GPT Load Lab options to Locust's parser (an ``init_command_line_parser`` hook).

    They are added to the parser itself, not a group: only ``LocustArgumentParser.add_argument``
    knows ``is_secret`` (the web UI masks the key), and the UI lists them as custom options.
    """
    parser.add_argument("--api-key", env_var="LOCUST_API_KEY", default="", is_secret=True,
                        help="API key sent as 'Authorization: Bearer <key>' (none if empty)")
    parser.add_argument("--operator-key", env_var="LOCUST_OPERATOR_KEY", default="",
                        is_secret=True,
                        help="the server's operator key (OPERATOR_KEYS), sent to /ready and "
                             "/metrics for run.json and memory.csv; without it the run "
                             "records no server facts nor scraped memory")
    parser.add_argument("--run-dir", env_var="LOCUST_RUN_DIR", default="",
                        help="folder for requests.csv and memory.csv "
                             "(default: a new results/<UTC timestamp>-<label>/)")
    parser.add_argument("--label", env_var="LOCUST_LABEL", default="locust",
                        help="name of this run, used in the default run folder")
    parser.add_argument("--server-pidfile", env_var="LOCUST_SERVER_PIDFILE", default="",
                        help="Gunicorn pidfile of a local server: memory is read from /proc; "
                             "without it the server's /metrics is scraped")
    parser.add_argument("--metrics-urls", env_var="LOCUST_METRICS_URLS", default="",
                        help="comma-separated base URLs of servers behind a load balancer "
                             "whose /metrics are all scraped for memory.csv (default: --host)")
    parser.add_argument("--memory-sample-s", env_var="LOCUST_MEMORY_SAMPLE_S", type=float,
                        default=1.0,
                        help="seconds between samples of the server's memory (memory.csv); "
                             "0 = do not sample")
    parser.add_argument("--loop-tick-s", env_var="LOCUST_LOOP_TICK_S", type=float, default=0.1,
                        help="seconds between the event-loop lag ticks of loadgen.csv "
                             "(shorter: finer percentiles, more rows)")
    parser.add_argument("--data-dir", env_var="LOCUST_DATA_DIR", default="",
                        help="folder with prompts.jsonl, articles.jsonl, qa.jsonl "
                             "(default: locustfiles/data)")
    parser.add_argument("--shape", env_var="LOCUST_SHAPE", default="none",
                        choices=SHAPES,
                        help="load shape: none (-u/-r/-t), steps (the --stages table) or "
                             "search (the highest load within the --search-* limits)")
    parser.add_argument("--stages", env_var="LOCUST_STAGES",
                        default=DEFAULT_STAGES,
                        help="steps shape as USERS:SECONDS,... (each stage held that long)")
    parser.add_argument("--mix", env_var="LOCUST_MIX", default="tasks",
                        choices=MIX_CHOICES,
                        help="user classes to run: the task routes (JSON), streamed task and "
                             "/v1 routes, the /v1 routes, or all (see locustfiles/user_mix.py)")
    parser.add_argument("--target", env_var="LOCUST_TARGET", default="lab",
                        choices=TARGETS,
                        help="openai: the host is any OpenAI-compatible server (only the "
                             "openai mix runs; no memory headers; memory.csv only from an "
                             "existing --server-pidfile)")
    parser.add_argument("--check-p95-ms", env_var="LOCUST_CHECK_P95_MS", type=float,
                        default=None,
                        help="exit code 3 when Locust's p95 (all routes) is above this "
                             "(0 when every --check-* target held; locustfiles/exit_code.py)")
    parser.add_argument("--check-fail-ratio", env_var="LOCUST_CHECK_FAIL_RATIO", type=float,
                        default=None,
                        help="exit code 3 when failed / all requests is above this (0..1)")
    parser.add_argument("--check-ignore-refusals", env_var="LOCUST_CHECK_IGNORE_REFUSALS",
                        action="store_true", default=False,
                        help="--check-fail-ratio leaves out the server's 429/503 refusals")
    add_search_options(parser)  # --shape search (search_options.py)
    add_arrival_options(parser)
    parser.add_argument("--openai-model", env_var="LOCUST_OPENAI_MODEL", default="",
                        help="model name the /v1 users ask for (default: GET /v1/models)")
    add_workload_options(parser)


def add_arrival_options(parser: LocustArgumentParser) -> None:
    """The open-loop options (locustfiles/arrivals.py); without --arrival, closed-loop users."""
    parser.add_argument("--arrival", env_var="LOCUST_ARRIVAL", default="closed",
                        choices=["closed", *PROCESSES],
                        help="closed: users send, wait for the answer, think, repeat (default); "
                             "constant, poisson or gamma: requests fire at --rate on one "
                             "schedule shared by all Locust processes, -u users as the pool")
    parser.add_argument("--rate", env_var="LOCUST_RATE", type=float, default=1.0,
                        help="open-loop: requests per second, all processes together")
    parser.add_argument("--burstiness", env_var="LOCUST_BURSTINESS", type=float, default=1.0,
                        help="gamma: squared coefficient of variation of the gaps "
                             "(gamma shape 1/burstiness): 1 = Poisson, above 1 burstier")
    parser.add_argument("--arrival-seed", env_var="LOCUST_ARRIVAL_SEED", type=int, default=0,
                        help="open-loop: seed of the gaps and of each arrival's user class")


def option(options: Any, name: str, env_var: str, default: str = "") -> str:
    """A suite option from Locust's parsed options, else its environment variable.

    The fallback serves Environments built without Locust's parser (tests, run_single_user).
    """
    return getattr(options, name, None) or os.environ.get(env_var, "") or default


def resolve_run_dir(options: Any) -> Path:
    """The run folder from ``--run-dir`` (created if missing), else a new default one."""
    given = getattr(options, "run_dir", "") if options is not None else ""
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        return path
    label = getattr(options, "label", "locust") if options is not None else "locust"
    return new_run_dir(label)
