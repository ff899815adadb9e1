"""Head-of-line blocking across keys (issue 29): does one key's long work hold up another's?

    python -m bench tenants                          # synthetic:gpt2-large, the issue's sizes
    python -m bench tenants --model synthetic:tiny --a-prompt-words 20 --a-tokens 900

Key A streams one long completion (a ~735-token prompt, 256 new tokens, ``ignore_eos``) and,
once its first token is out, sends four more like it: with ``KV_TOKENS`` 1,280 only one
fits at a time, so they queue. Key B then sends "hi" for 8 tokens. Before issue 29 the queue
was first come, first served, and B waited 41 s behind A's (gpt2-large, AMD EPYC Zen 4).
The command prints B's latency alone and beside A's work, the bound the issue sets (twice
the lone latency plus one decode step), and how A's requests ended (served, or refused fast
with 503), and writes them with the host's facts to results/tenants-<UTC stamp>/run.json.

``head_of_line`` is the scenario itself, also run by tests/test_tenancy.py on tiny.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

from harness.gunicorn_process import GunicornServer
from harness.run_folder import new_run_dir
from server.engine import synthetic
from server.engine.hardware import describe, fingerprint_subprocess


@dataclass
class Outcome:
    """One request's end as the client saw it: status, seconds from the scenario's start
    to its answer, and its own latency."""

    status: int
    ended_s: float
    latency_s: float
    inference_ms: float = 0.0
    completion_tokens: int = 0


@dataclass
class HeadOfLine:
    """What the scenario measured (seconds)."""

    b_lone_s: float
    step_s: float  # one decode step alone: B's prompt for 3x its tokens, less B, per token
    b: Outcome
    a_first: Outcome  # the streamed one, running when B was sent
    a_rest: list[Outcome] = field(default_factory=list)

    @property
    def bound_s(self) -> float:
        """Issue 29's bound on B's latency: twice its lone latency plus one step."""
        return 2 * self.b_lone_s + self.step_s


def _post(url: str, key: str, body: dict, started: float, stream: bool = False,
          first_token: threading.Event | None = None) -> Outcome:
    sent = time.monotonic()
    response = requests.post(f"{url}/v1/completions", json={**body, "stream": stream},
                             headers={"Authorization": f"Bearer {key}"}, stream=stream,
                             timeout=900)
    usage: dict = {}
    if stream and response.status_code == 200:
        for line in response.iter_lines():
            if first_token is not None:
                first_token.set()
            if line.startswith(b"data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
    elif response.status_code == 200:
        usage = response.json()["usage"]
    if first_token is not None:
        first_token.set()  # also when refused: the scenario must not wait forever
    done = time.monotonic()
    return Outcome(response.status_code, done - started, done - sent,
                   float(response.headers.get("X-Inference-Ms", 0.0)),
                   usage.get("completion_tokens", 0))


def head_of_line(url: str, key_a: str, key_b: str, a_prompt: str, a_tokens: int = 256,
                 a_count: int = 5, b_tokens: int = 8, queued_s: float = 0.5) -> HeadOfLine:
    """Run the scenario against a server at ``url`` holding both keys (see module doc);
    ``queued_s``: how long A's queued requests get to reach the queue before B is sent."""
    b_body = {"prompt": "hi", "max_tokens": b_tokens, "ignore_eos": True, "temperature": 0}
    lone = [_post(url, key_b, b_body, time.monotonic()).latency_s for _ in range(3)]
    longer = {**b_body, "max_tokens": 3 * b_tokens}
    longer_s = statistics.median(
        _post(url, key_b, longer, time.monotonic()).latency_s for _ in range(3))
    step_s = max(0.0, longer_s - statistics.median(lone)) / (2 * b_tokens)
    a_body = {"prompt": a_prompt, "max_tokens": a_tokens, "ignore_eos": True,
              "temperature": 0, "stream_options": {"include_usage": True}}
    started, first_token, outcomes = time.monotonic(), threading.Event(), {}

    def run(name: str, key: str, body: dict, stream: bool = False,
            event: threading.Event | None = None) -> threading.Thread:
        def target() -> None:
            outcomes[name] = _post(url, key, body, started, stream, event)
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        return thread

    threads = [run("a0", key_a, a_body, stream=True, event=first_token)]
    first_token.wait(900)
    threads += [run(f"a{i}", key_a, a_body) for i in range(1, a_count)]
    time.sleep(queued_s)
    threads.append(run("b", key_b, b_body))
    for thread in threads:
        thread.join(900)
    return HeadOfLine(statistics.median(lone), step_s, outcomes["b"], outcomes["a0"],
                      [outcomes[f"a{i}"] for i in range(1, a_count)])


def corpus_prompt(words: int) -> str:
    """The first ``words`` words of the shipped corpus (server/engine/corpus/*.txt)."""
    texts = sorted((Path(synthetic.__file__).parent / "corpus").glob("*.txt"))
    return " ".join(" ".join(p.read_text() for p in texts).split()[:words])


def main(argv: list[str] | None = None) -> int:
    """Serve ``--model`` with two keys on 127.0.0.1, run the scenario, print and save it."""
    p = argparse.ArgumentParser(prog="python -m bench tenants", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="synthetic:gpt2-large")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--a-prompt-words", type=int, default=560,
                   help="words of key A's prompt (560 shipped-corpus words: ~735 tokens)")
    p.add_argument("--a-tokens", type=int, default=256)
    p.add_argument("--kv-tokens", default="1280")
    p.add_argument("--checkout", type=Path, default=None,
                   help="serve this checkout of the project instead (e.g. a git worktree of "
                        "an older commit: before and after on one box)")
    args = p.parse_args(argv)
    synthetic.build(args.model.removeprefix("synthetic:"), "models") \
        if args.model.startswith("synthetic:") else None
    key_a, key_b = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    env = {"MODEL": args.model, "DTYPE": args.dtype, "API_KEYS": f"{key_a},{key_b}",
           "KV_TOKENS": args.kv_tokens, "MAX_NEW_TOKENS_CAP": str(max(256, args.a_tokens)),
           "RATE_LIMIT": "", "REQUEST_LOG": ""}
    facts = fingerprint_subprocess()
    with tempfile.TemporaryDirectory() as work, \
            GunicornServer(Path(work), env, workers=1,
                           **({"repo": args.checkout} if args.checkout else {})) as server:
        result = head_of_line(server.url, key_a, key_b, corpus_prompt(args.a_prompt_words),
                              args.a_tokens)
        precision = server.ready.get("dtype", "")
    print(f"host: {describe(facts)}; served {args.model} as {precision or '?'}")
    print(f"B alone {result.b_lone_s:.3f} s; B beside A's work {result.b.latency_s:.3f} s "
          f"(status {result.b.status}); bound 2 x lone + one step ({result.step_s:.3f} s) = "
          f"{result.bound_s:.3f} s: {'met' if result.b.latency_s <= result.bound_s else 'MISSED'}")
    for name, a in [("A streamed", result.a_first)] + [
            (f"A queued {i}", a) for i, a in enumerate(result.a_rest, 1)]:
        print(f"{name}: {a.status} after {a.latency_s:.2f} s")
    run_dir = new_run_dir("tenants")
    (run_dir / "run.json").write_text(json.dumps(
        {"kind": "bench.tenants", "args": {**vars(args), "checkout": str(args.checkout or "")},
         "precision": precision, "host": facts,
         "b_lone_s": result.b_lone_s, "step_s": result.step_s, "bound_s": result.bound_s,
         "b": asdict(result.b), "a_first": asdict(result.a_first),
         "a_rest": [asdict(a) for a in result.a_rest]}, indent=2) + "\n")
    print(f"wrote {run_dir}/run.json")
    return 0 if result.b.status == 200 and result.b.latency_s <= result.bound_s else 1
