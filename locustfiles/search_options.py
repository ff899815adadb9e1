"""The capacity finder's options (``--shape search``) and the Plan/Limits they make (no Locust
import: the run script reads them too).

Each option also reads its environment variable (``LOCUST_SEARCH_*``) and can be set in
locust.conf without the dashes, like the suite's other options (run_options.py).
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from locustfiles.capacity_search import Limits, Plan, parse_resolution

if TYPE_CHECKING:
    from locust.argument_parser import LocustArgumentParser

# option, env var, type, default, help
SEARCH_OPTIONS: list[tuple[str, str, type, Any, str]] = [
    ("--search-slo-p95-ms", "LOCUST_SEARCH_SLO_P95_MS", float, 10_000.0,
     "search: a probe fails when its p95 response time is above this (0: not checked)"),
    ("--search-slo-ttft-ms", "LOCUST_SEARCH_SLO_TTFT_MS", float, 0.0,
     "search: ... when the streamed users' TTFT p95 is above this (0: not checked)"),
    ("--search-slo-tpot-ms", "LOCUST_SEARCH_SLO_TPOT_MS", float, 0.0,
     "search: ... when the streamed users' TPOT p95 is above this (0: not checked)"),
    ("--search-ram-mb", "LOCUST_SEARCH_RAM_MB", float, 0.0,
     "search: ... when the server tree's total PSS peaked above this, MB (0: not checked)"),
    ("--search-ram-headroom-mb", "LOCUST_SEARCH_RAM_HEADROOM_MB", float, 0.0,
     "search: ... when the host's available memory fell below this, MB (0: not checked)"),
    ("--search-max-refusals", "LOCUST_SEARCH_MAX_REFUSALS", float, 0.05,
     "search: ... when more than this share of requests were refused (429/503)"),
    ("--search-max-errors", "LOCUST_SEARCH_MAX_ERRORS", float, 0.05,
     "search: ... when more than this share of requests failed otherwise"),
    ("--search-settle-s", "LOCUST_SEARCH_SETTLE_S", float, 10.0,
     "search: seconds each level is held before its window (ramp-up, queues settle)"),
    ("--search-window-s", "LOCUST_SEARCH_WINDOW_S", float, 30.0,
     "search: seconds of each probe's measurement window"),
    ("--search-min", "LOCUST_SEARCH_MIN", float, 1.0,
     "search: the first (lowest) level probed, users"),
    ("--search-max", "LOCUST_SEARCH_MAX", float, 256.0,
     "search: the highest level probed, users"),
    ("--search-resolution", "LOCUST_SEARCH_RESOLUTION", str, "1",
     "search: stop when the lowest failing and highest passing level are this close: "
     "users (2) or a share of the passing level (10%%)"),
    ("--search-max-probes", "LOCUST_SEARCH_MAX_PROBES", int, 12,
     "search: most levels probed"),
    ("--search-max-time-s", "LOCUST_SEARCH_MAX_TIME_S", float, 0.0,
     "search: stop before a probe that would end after this many seconds (0: no cap)"),
]


def add_search_options(parser: LocustArgumentParser) -> None:
    """Add the ``--search-*`` options to Locust's parser, each with its environment variable."""
    for flag, env_var, kind, default, text in SEARCH_OPTIONS:
        parser.add_argument(flag, env_var=env_var, type=kind, default=default, help=text)


def add_script_search_options(parser: argparse.ArgumentParser) -> None:
    """The same options on a plain argparse parser (scripts/loadtest.py); the environment
    variable, when set, is the default."""
    for flag, env_var, kind, default, text in SEARCH_OPTIONS:
        parser.add_argument(flag, type=kind, default=kind(os.environ.get(env_var, default)),
                            help=text)


def search_arguments(options: Any) -> list[str]:
    """The ``--search-*`` options of ``options`` as command-line arguments for Locust."""
    return [arg for flag, *_ in SEARCH_OPTIONS for arg in (flag, f"{_get(options, flag)}")]


def _get(options: Any, flag: str) -> Any:
    name = flag.removeprefix("--").replace("-", "_")
    default = next(d for f, _, _, d, _ in SEARCH_OPTIONS if f == flag)
    value = getattr(options, name, None)
    return default if value is None else value


def plan_from_options(options: Any, quantum: float = 1.0) -> Plan:
    """The search's Plan from parsed options (defaults where absent)."""
    resolution, relative = parse_resolution(_get(options, "--search-resolution"))
    plan = Plan(min_level=float(_get(options, "--search-min")),
                max_level=float(_get(options, "--search-max")),
                resolution=resolution, resolution_relative=relative, quantum=quantum,
                settle_s=float(_get(options, "--search-settle-s")),
                measure_s=float(_get(options, "--search-window-s")),
                max_probes=int(_get(options, "--search-max-probes")),
                max_time_s=float(_get(options, "--search-max-time-s")))
    if not 0 < plan.min_level <= plan.max_level or plan.measure_s <= 0 or plan.max_probes < 1:
        raise ValueError("search: need 0 < --search-min <= --search-max, --search-window-s > 0 "
                         "and --search-max-probes >= 1")
    return plan


def limits_from_options(options: Any) -> Limits:
    """The limits each probe is judged against."""
    return Limits(p95_ms=float(_get(options, "--search-slo-p95-ms")),
                  ttft_ms=float(_get(options, "--search-slo-ttft-ms")),
                  tpot_ms=float(_get(options, "--search-slo-tpot-ms")),
                  ram_mb=float(_get(options, "--search-ram-mb")),
                  ram_headroom_mb=float(_get(options, "--search-ram-headroom-mb")),
                  max_refusals=float(_get(options, "--search-max-refusals")),
                  max_errors=float(_get(options, "--search-max-errors")))
