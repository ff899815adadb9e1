"""GPT Load Lab's Locust suite: three kinds of users and the RAM hooks of a run folder.

    locust -f locustfiles --headless -u 10 -r 5 -t 60s --host http://127.0.0.1:8000 \\
        --api-key KEY --operator-key OPKEY --run-dir results/my-run \\
        --server-pidfile /path/gunicorn.pid \\
        --csv results/my-run/locust --csv-full-history --html results/my-run/locust_report.html \\
        --stop-timeout 180

On the master (or the only) process it writes requests.csv and memory.csv into the run
folder, extends the web UI with server memory, and applies ``--shape steps`` or ``--shape
search`` (the capacity finder, locustfiles/capacity.py); Locust workers
forward their request rows to the master. See docs/load-testing.md.

``--mix streaming|openai|all`` runs the streaming and OpenAI-API users instead of the three
task users; ``--workload lengths|sharegpt|chat|prefix`` a seeded workload's /v1 user
(locustfiles/workloads.py); ``--target openai`` loads any OpenAI-compatible server
(locustfiles/user_mix.py), with memory.csv only when ``--server-pidfile`` names the
pidfile of a server on this machine.
"""

import locust  # noqa: F401, I001  (first: Locust patches the stdlib with gevent on import)

import logging
from pathlib import Path
from typing import Any

from locust import events
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.runners import WorkerRunner

from locustfiles.capacity import CapacitySearch, SearchShape, UsersKnob
from locustfiles.capacity_tab import CapacityTab
from locustfiles.arrival_tab import ArrivalTab
from locustfiles.arrivals import ArrivalHook, settings_from_options
from locustfiles.drain import GracefulDrain
from locustfiles.exit_code import ExitCodeCheck
from locustfiles.final_stats import FinalCsvSnapshot
from locustfiles.loadgen_monitor import LoopMonitor
from locustfiles.memory_sampler import MemorySampler, split_urls
from locustfiles.memory_tab import MemoryTab
from locustfiles.request_recorder import RequestRecorder
from locustfiles.run_record_hook import RunRecordHook
from locustfiles.run_options import add_options, option, resolve_run_dir
from locustfiles.search_options import limits_from_options, plan_from_options
from locustfiles.shapes import StepShape
from locustfiles.stages import parse_stages
from locustfiles.openai_users import (
    ChatUser,
    CompletionUser,
    StreamingChatUser,
    StreamingCompletionUser,
)
from locustfiles.streaming_users import (
    StreamingPromptUser,
    StreamingQAUser,
    StreamingSummarizeUser,
)
from locustfiles.user_mix import is_openai_target, select_users
from locustfiles.users import PromptUser, QAUser, SummarizeUser
from locustfiles.workload_users import LengthsUser, MultiTurnChatUser, SharedPrefixUser

__all__ = ["ChatUser", "CompletionUser", "LengthsUser", "MultiTurnChatUser", "PromptUser",
           "QAUser", "SharedPrefixUser", "StreamingChatUser", "StreamingCompletionUser",
           "StreamingPromptUser", "StreamingQAUser", "StreamingSummarizeUser", "SummarizeUser"]
log = logging.getLogger(__name__)


@events.init_command_line_parser.add_listener
def _add_options(parser: LocustArgumentParser, **kwargs: Any) -> None:
    add_options(parser)


@events.init.add_listener
def _set_up_run(environment: Environment, **kwargs: Any) -> None:
    set_up_run(environment)


def set_up_run(environment: Environment) -> None:
    """Register the run's hooks on ``environment`` (workers only forward rows)."""
    select_users(environment)  # --mix / --target openai (user_mix.py)
    options = environment.parsed_options
    worker = isinstance(environment.runner, WorkerRunner)
    run_dir = None if worker else resolve_run_dir(options)
    arrivals = settings_from_options(options)  # --arrival: the open-loop pool (arrivals.py)
    arrival_hook = ArrivalHook(arrivals, run_dir) if arrivals is not None else None
    if arrival_hook is not None:
        arrival_hook.register(environment)  # before the drain: it notes when stopping began
    GracefulDrain().register(environment)
    tick_s = float(getattr(options, "loop_tick_s", 0.1))
    if worker:
        RequestRecorder(None).register(environment)
        LoopMonitor(None, interval_s=tick_s).register(environment)
        return
    RunRecordHook(run_dir).register(environment)  # run.json: client and server facts
    ExitCodeCheck.from_options(options).register(environment)  # --check-* targets
    recorder = RequestRecorder(run_dir / "requests.csv")
    recorder.register(environment)
    if arrival_hook is not None:
        ArrivalTab(arrival_hook, recorder).register(environment)
    FinalCsvSnapshot().register(environment)
    LoopMonitor(run_dir / "loadgen.csv", interval_s=tick_s).register(environment)
    sample_s = float(getattr(options, "memory_sample_s", 1.0))
    pidfile = getattr(options, "server_pidfile", "") or None
    foreign = is_openai_target(options)
    sampler: MemorySampler | None = None
    if foreign and not (pidfile and Path(pidfile).is_file()):
        # Someone else's server, and no pidfile of it on this machine: no memory to sample.
        log.info("run folder %s (--target openai: no server memory)", run_dir)
    elif sample_s <= 0:
        log.info("run folder %s (--memory-sample-s 0: no server memory)", run_dir)
    else:
        # A foreign server on this machine (llama.cpp's in bench/reference.py) is read from
        # /proc through its pidfile like Gunicorn, so its RSS/PSS stand next to ours.
        urls = () if foreign else split_urls(getattr(options, "metrics_urls", "") or "")
        sampler = MemorySampler(run_dir / "memory.csv", pidfile=pidfile, metrics_urls=urls,
                                interval_s=sample_s, operator_key=option(
                                    options, "operator_key", "LOCUST_OPERATOR_KEY"))
        sampler.register(environment)
        MemoryTab(sampler, recorder).register(environment)
        log.info("run folder %s (memory from %s)", run_dir, sampler.source)
    if getattr(options, "shape", "none") == "steps":
        shape = StepShape(parse_stages(options.stages), spawn_rate=options.spawn_rate or 10.0)
        shape.runner = environment.runner
        environment.shape_class = shape
    elif getattr(options, "shape", "none") == "search":
        set_up_search(environment, run_dir, sampler)


def set_up_search(environment: Environment, run_dir: Path,
                  sampler: MemorySampler | None) -> None:
    """``--shape search``: bisect the users to the highest level within the limits."""
    options = environment.parsed_options
    knob = UsersKnob(spawn_rate=options.spawn_rate or 10.0)
    limits = limits_from_options(options)
    if sampler is None and (limits.ram_mb or limits.ram_headroom_mb):
        log.warning("search: no server memory is sampled, so the RAM limit is not checked")
    shape = SearchShape(plan_from_options(options, knob.quantum), limits, knob, sampler)
    CapacitySearch(run_dir, shape).register(environment)
    CapacityTab(shape).register(environment)
