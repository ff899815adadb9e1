"""The engines' closed-loop user: BenchUser on /v1/completions, streamed, exact lengths.

    locust -f bench/closed_loop_user.py --headless -u 8 -r 8 --host URL ... CompletionsLoopUser

``python -m bench engines`` runs it against our server and llama.cpp's alike, with
``LOCUST_BENCH_PROMPTS`` (prompts of exactly P tokens), ``LOCUST_BENCH_TOKENS`` (N) and
``LOCUST_BENCH_REQUESTS`` (rounds; the run ends when every user sent its share), as for
``locustfiles/_bench.py``'s BenchUser, whose loop this is. The body is OpenAI's
(``prompt``, ``max_tokens`` = N, ``temperature`` 0) with ``ignore_eos`` (vLLM's field, which
both servers accept) so every answer is exactly N tokens, streamed with
``stream_options.include_usage`` so TTFT is measured and the server's own token count lands
in requests.csv. ``LOCUST_LOOP_BODY``: a JSON object merged into every body (the bench sends
``{"cache_prompt": false}`` to llama-server, which would otherwise reuse a slot's prefix).
Name the class on the command line: this module also sees BenchUser.
"""

import locust  # noqa: F401, I001  (first: Locust patches the stdlib with gevent on import)

import json
import os
from typing import Any

from locustfiles._bench import BenchUser
from locustfiles.sse import openai_text
from locustfiles.streaming_users import StreamsAnswers


class CompletionsLoopUser(StreamsAnswers, BenchUser):
    """Sends the next fixed prompt to /v1/completions as soon as the last answer ended."""

    route = "/v1/completions"
    text_of = staticmethod(openai_text)

    def next_request(self) -> tuple[str, dict[str, Any]]:
        """(reference, body): greedy, exactly ``max_new_tokens``, streamed with usage."""
        ref, bench = super().next_request()
        extra = json.loads(os.environ.get("LOCUST_LOOP_BODY") or "{}")
        return ref, {"prompt": bench["prompt"], "max_tokens": self.max_new_tokens,
                     "temperature": 0.0, "ignore_eos": True, "stream": True,
                     "stream_options": {"include_usage": True}, **extra}
