"""The benchmark's user: fixed prompts, a fixed number of new tokens, greedy, no think time.

    locust -f locustfiles/_bench.py --headless -u 10 -r 10 -t 300s --host URL ... BenchUser
    python scripts/loadtest.py --locustfile locustfiles/_bench.py --user-classes BenchUser ...

Loaded only when named: Locust skips files starting with "_" when ``-f`` is a folder, so the
suite's ``-f locustfiles`` runs never mix this closed-loop user into their traffic. Name the
class too (``BenchUser``): named classes override the suite's ``--mix``. Importing
``locustfiles.locustfile`` registers the suite's options and hooks (requests.csv, memory.csv).

Prompts come from the JSON-lines file in ``LOCUST_BENCH_PROMPTS`` (``python -m bench`` writes
one with prompts of exactly 64 tokens for the model's tokenizer); without it, the suite's
prompts are sent. The server must run with ``IGNORE_EOS=1`` for every answer to be
exactly ``max_new_tokens`` long (``LOCUST_BENCH_TOKENS``, default 64).

``LOCUST_BENCH_REQUESTS=N`` turns the closed loop into a burst: each user sends N requests,
then stops, and the run ends when every user (``-u``) is done (``python -m bench burst``;
one Locust process, no ``--processes``). ``LOCUST_BENCH_STAGGER_MS=M`` holds the k-th user of
the process k x M ms before its first request: a burst sent M ms apart. (Locust's spawn rate
cannot do it: at a rate of one user a second or more it dispatches floor(rate) users at once.)
"""

import locust  # noqa: F401, I001  (first: Locust patches the stdlib with gevent on import)

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import gevent
from locust import constant, task
from locust.exception import StopUser

import locustfiles.locustfile  # noqa: F401  (registers the suite's options and hooks)
from locustfiles.inputs import DATA_DIR
from locustfiles.users import LabUser


@cache
def bench_prompts(path: Path) -> tuple[str, ...]:
    """The "prompt" of every line of a prompts.jsonl file (the suite's format)."""
    with open(path, encoding="utf-8") as f:
        return tuple(json.loads(line)["prompt"] for line in f if line.strip())


_finished: list[str] = []  # users of this process that sent their LOCUST_BENCH_REQUESTS
_started: list[int] = []  # users of this process that started, in order (the stagger)


class BenchUser(LabUser):
    """Sends the next fixed prompt as soon as the last answer arrived (a closed loop)."""

    wait_time = constant(0)
    route = "/generate-text"
    max_new_tokens = int(os.environ.get("LOCUST_BENCH_TOKENS") or 64)
    # The naive server answers 10 users one after another: ~3 minutes for the last one.
    request_timeout_s = 1200.0
    sent = 0

    def on_start(self) -> None:
        super().on_start()
        stagger_ms = float(os.environ.get("LOCUST_BENCH_STAGGER_MS") or 0)
        _started.append(len(_started))
        gevent.sleep(_started[-1] * stagger_ms / 1000.0)

    @task
    def generate(self) -> None:
        self.send(*self.next_request())
        self.sent += 1
        budget = int(os.environ.get("LOCUST_BENCH_REQUESTS") or 0)
        if budget and self.sent >= budget:
            _finished.append(self.draws.next_ref())
            runner = self.environment.runner
            if runner is not None and len(_finished) >= runner.target_user_count:
                gevent.spawn(runner.quit)  # not from this user's greenlet: quit stops it
            raise StopUser

    def next_request(self) -> tuple[str, dict[str, Any]]:
        """(reference, body): greedy, exactly ``max_new_tokens`` with IGNORE_EOS on the server."""
        path = Path(os.environ.get("LOCUST_BENCH_PROMPTS") or DATA_DIR / "prompts.jsonl")
        ref = self.draws.next_ref()
        return ref, {"prompt": self.draws.pick(bench_prompts(path)),
                     "max_new_tokens": self.max_new_tokens, "temperature": 0.0}
