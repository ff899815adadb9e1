"""What a GPT Load Lab server says about itself, for run.json: ``/ready`` and ``/metrics``.

Both are the operator's (server/web/operator_auth.py): they are read with the operator key
(``--operator-key``), not an API key; without it ``/ready`` says only its status, ``/metrics``
answers 401 and ``server.facts_error`` says so. ``/ready`` answers from one worker: model, precision
served, the kernel table measured at startup, batch size, threads and, where the
server has them, its limits. ``/metrics`` merges every worker: the distinct ``pid`` labels of
the per-worker memory gauges count the live workers (summed over several hosts behind a
load balancer), and the model's weight bytes and load time come along.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

WORKER_GAUGE = "gpt_worker_rss_bytes"
# /ready keys copied to run.json's top level (the settings analysis reads) ...
TOP_LEVEL = ("model", "dtype", "max_batch_size", "prefill_chunk", "torch_threads")
# ... and to its server block (the full record of what the server reported).
SERVER_BLOCK = ("kernels", "code_path", "torch_threads", "threads_shared", "max_batch_size",
                "prefill_chunk", "kv_dtype", "kv_tokens", "prefix_cache_rows", "limits")
_MB = 1024 * 1024
# Prompt tokens computed by steps and copied from kept caches (server/engine/prefix_cache.py),
# read again when the run ends: their ratio is the run's prefix-cache hit rate.
PROMPT_COUNTERS = {"gpt_prompt_tokens_computed_total": "prompt_tokens_computed",
                   "gpt_prompt_tokens_cached_total": "prompt_tokens_cached"}


def parse_metrics_facts(text: str) -> dict[str, Any]:
    """Worker pids, weight MB and load seconds from Prometheus text (absent ones left out)."""
    pids: set[str] = set()
    facts: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == WORKER_GAUGE and "pid" in s.labels:
                pids.add(s.labels["pid"])
            elif s.name == "gpt_model_weight_bytes":
                facts["weight_mb"] = round(s.value / _MB, 1)
            elif s.name == "gpt_model_load_seconds":
                facts["load_s"] = round(s.value, 2)
            elif s.name in PROMPT_COUNTERS:  # summed over workers' series
                key = PROMPT_COUNTERS[s.name]
                facts[key] = facts.get(key, 0) + int(s.value)
    return {**facts, "pids": pids}


def operator_headers(operator_key: str) -> dict[str, str]:
    """The headers that send ``operator_key`` to the server's operator surfaces (none if "")."""
    return {"Authorization": f"Bearer {operator_key}"} if operator_key else {}


def _get(url: str, timeout_s: float, operator_key: str) -> requests.Response:
    response = requests.get(url, timeout=timeout_s,
                            headers={"Connection": "close", **operator_headers(operator_key)})
    response.raise_for_status()
    return response


def read_server_facts(host_url: str, metrics_urls: Sequence[str] = (),
                      timeout_s: float = 10.0, operator_key: str = "") -> dict[str, Any]:
    """run.json changes from the server at ``host_url``: top-level settings and ``server``.

    ``metrics_urls`` (default: ``host_url``) are the servers whose /metrics count workers;
    ``operator_key`` opens /metrics and /ready's details.
    Never raises for an unreachable or foreign server: ``server.facts_error`` says why.
    """
    base = host_url.rstrip("/")
    server: dict[str, Any] = {}
    changes: dict[str, Any] = {}
    errors = []
    try:
        ready = _get(f"{base}/ready", timeout_s, operator_key).json()
        changes.update({k: ready[k] for k in TOP_LEVEL if k in ready})
        server.update({k: ready[k] for k in SERVER_BLOCK if k in ready})
        if set(ready) == {"status"}:
            errors.append("/ready: status only (its details need the operator key: "
                          "--operator-key)")
    except (requests.RequestException, ValueError) as error:
        errors.append(f"/ready: {type(error).__name__}: {error}"[:300])
    workers = 0
    for url in metrics_urls or (base,):
        try:
            facts = parse_metrics_facts(
                _get(f"{url.rstrip('/')}/metrics", timeout_s, operator_key).text)
        except (requests.RequestException, ValueError) as error:
            errors.append(f"{url}/metrics: {type(error).__name__}: {error}"[:300])
            continue
        workers += len(facts.pop("pids"))
        server.update(facts)
    if workers:
        server["workers_seen"] = changes["workers"] = workers
    if errors:
        server["facts_error"] = "; ".join(errors)
    return {**changes, "server": server}
