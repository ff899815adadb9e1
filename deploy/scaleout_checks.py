"""What a scale-out run folder shows: traffic per host, the shared rate limit, memory per host.

Read from the files alone (the hosts' own request logs, requests.csv, memory.csv), so the
same summary can be made again from a committed run folder:

    python deploy/scaleout_checks.py results/scaleout-sample
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from limits import parse_many


@dataclass(frozen=True)
class HostTraffic:
    """One server host's share of the run."""

    name: str
    address: str
    worker_pids: list[int]
    requests: int  # lines of its own request log for the load key
    ok_200: int
    rate_limited_429: int
    client_rows: int  # requests.csv rows whose X-Worker-PID is one of its workers
    memory_rows: int  # memory.csv worker rows scraped from its /metrics


@dataclass(frozen=True)
class LimitCheck:
    """The per-key limit over both hosts: the most 200s in any window vs the limit."""

    limit: str
    amount: int
    window_s: int
    max_ok_in_window: int
    ok_200: int
    rate_limited_429: int
    ok_200_by_route: dict[str, int]

    @property
    def held(self) -> bool:
        """At most ``amount`` answers per window, and the limit refused something."""
        return self.max_ok_in_window <= self.amount and self.rate_limited_429 > 0


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON Lines file (none when it is missing)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def max_in_window(times_s: list[float], window_s: float) -> int:
    """The most of ``times_s`` that fall in any half-open window [t, t + window_s)."""
    times = sorted(times_s)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def host_traffic(run_dir: Path, name: str, address: str, key_id: str,
                 client: list[dict[str, str]], memory: list[dict[str, str]]) -> HostTraffic:
    """Count what reached host ``name``, from its own log and the client's files."""
    served = [r for r in read_jsonl(run_dir / "hosts" / name / "server_requests.jsonl")
              if r.get("key_id") == key_id]
    statuses = Counter(r["status"] for r in served)
    pids = sorted({int(r["worker_pid"]) for r in served})
    return HostTraffic(
        name=name, address=address, worker_pids=pids, requests=len(served),
        ok_200=statuses[200], rate_limited_429=statuses[429],
        client_rows=sum(1 for r in client if r["worker_pid"] and int(r["worker_pid"]) in pids),
        memory_rows=sum(1 for r in memory if r["role"] == "worker" and r["host"] == address))


def limit_check(served: list[dict[str, Any]], limit: str) -> LimitCheck:
    """Check the tightest-looking item of ``limit`` (the longest window) on the 200s."""
    item = max(parse_many(limit), key=lambda i: i.get_expiry())
    # The limiter counts a request when it arrives: its log line's time minus its duration.
    arrivals = [r["ts"] - r["total_ms"] / 1000.0 for r in served if r["status"] == 200]
    statuses = Counter(r["status"] for r in served)
    return LimitCheck(limit=limit, amount=item.amount, window_s=item.get_expiry(),
                      max_ok_in_window=max_in_window(arrivals, item.get_expiry()),
                      ok_200=statuses[200], rate_limited_429=statuses[429],
                      ok_200_by_route=dict(Counter(r["route"] for r in served
                                                   if r["status"] == 200)))


def summarize(run_dir: Path) -> dict[str, Any]:
    """The run's checks as a dict (summary.json), from run.json's ``scaleout`` record."""
    setup = json.loads((run_dir / "run.json").read_text())["scaleout"]
    key_id = setup["load_key_id"]
    client = read_csv(run_dir / "requests.csv")
    memory = read_csv(run_dir / "memory.csv")
    hosts = [host_traffic(run_dir, name, address, key_id, client, memory)
             for name, address in setup["hosts"].items()]
    served = [r for h in setup["hosts"] for r in
              read_jsonl(run_dir / "hosts" / h / "server_requests.jsonl")
              if r.get("key_id") == key_id]
    limit = limit_check(served, setup["rate_limit"])
    proxy = setup.get("proxy_probe") or {}
    checks = {
        "every_host_served": all(h.requests > 0 for h in hosts),
        # Each host alone saw more requests than the limit: counted per host, more would pass.
        "every_host_over_limit": all(h.requests > limit.amount for h in hosts),
        "limit_held_across_hosts": limit.held,
        "memory_from_every_host": all(h.memory_rows > 0 for h in hosts),
        "client_saw_every_host": all(h.client_rows > 0 for h in hosts),
        # deploy/nginx.conf's promises, probed once through nginx before the load.
        "proxy_echoes_request_id": proxy.get("request_id_echoed") is True,
        "proxy_streams_events": proxy.get("stream_done") is True
        and proxy.get("stream_content_type", "").startswith("text/event-stream"),
        "proxy_refuses_large_body_as_json": proxy.get("too_large_code") == "payload_too_large",
        "proxy_hides_metrics": proxy.get("metrics_status") == 404,
    }
    return {"hosts": [asdict(h) for h in hosts],
            "rate_limit": {**asdict(limit), "held": limit.held},
            "client_requests": len(client), "checks": checks, "ok": all(checks.values())}


def report(summary: dict[str, Any]) -> str:
    """The summary as a few readable lines."""
    lines = [f"{h['name']} {h['address']}: {h['requests']} requests of the load key "
             f"({h['ok_200']} x 200, {h['rate_limited_429']} x 429), workers {h['worker_pids']}, "
             f"{h['client_rows']} client rows, {h['memory_rows']} memory rows"
             for h in summary["hosts"]]
    r = summary["rate_limit"]
    lines.append(f"rate limit {r['limit']} per key over both hosts: {r['ok_200']} x 200 "
                 f"(at most {r['max_ok_in_window']} in any {r['window_s']} s), "
                 f"{r['rate_limited_429']} x 429: {'held' if r['held'] else 'NOT held'}")
    lines += [f"{'ok  ' if ok else 'FAIL'} {name}" for name, ok in summary["checks"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    result = summarize(folder)
    print(report(result))
    sys.exit(0 if result["ok"] else 1)
