"""Scale-out on one machine: 2 server hosts, nginx and Redis in network namespaces, then
distributed Locust (a master and 2 workers) through nginx. Needs root (``ip netns``).

    sudo .venv/bin/python deploy/netns_scaleout.py             # synthetic:tiny, 6 users, 20 s
    sudo .venv/bin/python deploy/netns_scaleout.py --users 10 --duration 60 --rate-limit ""

Layout (deploy/netns.py; one private /24 behind a bridge, all inside namespaces):

    lb     10.213.0.10  nginx :80 (deploy/nginx.conf, upstream rewritten), Locust master + workers
    h1     10.213.0.11  Gunicorn :8000 (gunicorn.conf.py)  -- limits counted in Redis --
    h2     10.213.0.12  Gunicorn :8000                                                 |
    redis  10.213.0.20  redis-server :6379  <--------------------------------------------

Writes a run folder (results/<UTC timestamp>-scaleout/ by default): run.json (the Locust
master's record of the run and of what the hosts reported, plus this script's ``scaleout``
record, host and git commit), Locust's CSV/HTML, requests.csv, memory.csv (both hosts' /metrics),
server_requests.jsonl (both hosts, with a ``host`` field), hosts/<h>/ (each host's own log,
request log, pidfile), lb/ (the rendered nginx.conf and its logs), redis.log, locust-*.log,
summary.json (deploy/scaleout_checks.py), then charts and report.md. Everything it started is
stopped and every namespace deleted at the end, also on errors and Ctrl+C. Exit code 0 when
every check held.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from deploy.cluster import HOSTS, PORT, ROLES, start_cluster
from deploy.netns import Network, inside, remove_stale
from deploy.scaleout_checks import read_jsonl, report, summarize
from harness.provenance import git_commit
from harness.run_folder import new_run_dir, update_record
from harness.server_process import ProcessGroup
from harness.waiting import add_wait_options
from locustfiles.user_mix import MIX_CHOICES
from server.engine.hardware import fingerprint_subprocess
from server.web.auth import key_id_of

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (defaults: a run of about a minute on synthetic:tiny)."""
    p = argparse.ArgumentParser(prog="deploy/netns_scaleout.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="synthetic:tiny")
    p.add_argument("--models-dir", default=os.environ.get("MODELS_DIR", "models"))
    p.add_argument("--dtype", default="float32")
    p.add_argument("--workers", type=int, default=1, help="Gunicorn workers per host")
    p.add_argument("--users", type=int, default=6)
    p.add_argument("--spawn-rate", type=float, default=6.0)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    p.add_argument("--stop-timeout", type=float, default=30.0)
    p.add_argument("--rate-limit", default="20/minute",
                   help="RATE_LIMIT per API key, counted in Redis for both hosts")
    p.add_argument("--mix", default="tasks", choices=MIX_CHOICES)
    p.add_argument("--user-classes", nargs="+", metavar="CLASS",
                   default=["PromptUser", "SummarizeUser", "QAUser"],
                   help="Locust user classes (default: the three task users, so one key's "
                        "count spans three routes and two hosts)")
    p.add_argument("--subnet", default="10.213.0", help="first three octets of the /24")
    p.add_argument("--label", default="scaleout")
    p.add_argument("--run-dir", type=Path, help="default: results/<UTC timestamp>-<label>/")
    add_wait_options(p, "Redis, the hosts, nginx and Locust's workers")
    p.add_argument("--no-analysis", action="store_true", help="skip python -m analysis")
    return p.parse_args(argv)


def probe_proxy(net: Network, key: str, operator_key: str) -> dict[str, Any]:
    """Check the nginx config's promises once, with the probe key (its own rate limit)."""
    base = f"http://{net.address('lb')}"
    auth = {"Authorization": f"Bearer {key}"}
    with inside(net.ns("lb")):
        health = requests.get(f"{base}/health", headers={"X-Request-ID": "scaleout-probe-1"},
                              timeout=5)
        # Hidden even from the operator: through the balancer a scrape hits a random host.
        metrics = requests.get(f"{base}/metrics", timeout=5,
                               headers={"Authorization": f"Bearer {operator_key}"})
        too_large = requests.post(f"{base}/generate-text", headers=auth, timeout=5,
                                  json={"prompt": "x" * (70 * 1024)})
        with requests.post(f"{base}/generate-text", headers=auth, stream=True, timeout=30,
                           json={"prompt": "The harbour", "max_new_tokens": 8,
                                 "stream": True}) as stream:
            events = [line for line in stream.iter_lines(decode_unicode=True)
                      if line.startswith("data:")]
            stream_type = stream.headers.get("Content-Type", "")
    return {"request_id_echoed": health.headers.get("X-Request-ID") == "scaleout-probe-1",
            "metrics_status": metrics.status_code,
            "too_large_status": too_large.status_code,
            "too_large_code": _error_code(too_large),
            "stream_content_type": stream_type, "stream_events": len(events),
            "stream_done": bool(events) and events[-1].strip() == "data: [DONE]"}


def _error_code(response: requests.Response) -> str:
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return ""


def run_locust(args: argparse.Namespace, net: Network, services: ProcessGroup, run_dir: Path,
               key: str, operator_key: str) -> int:
    """Headless Locust in the lb namespace: a master expecting 2 workers, through nginx;
    it scrapes each host's /metrics (and reads /ready) with the operator key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    env["LOCUST_API_KEY"], env["LOCUST_OPERATOR_KEY"] = key, operator_key
    metrics = ",".join(f"http://{net.address(h)}:{PORT}" for h in HOSTS)
    master = net.command(
        "lb", sys.executable, "-m", "locust", "-f", "locustfiles", "--headless", "--master",
        "--master-bind-host", "127.0.0.1", "--expect-workers", "2",
        # Locust's own wait for its workers is only a cap: the wait below fails at once when
        # a process of the run fails and keeps going while they make progress.
        "--expect-workers-max-wait", f"{args.ready_timeout:g}",
        "--host", f"http://{net.address('lb')}",
        "-u", str(args.users), "-r", f"{args.spawn_rate:g}", "-t", f"{args.duration:g}s",
        "--stop-timeout", f"{args.stop_timeout:g}", "--mix", args.mix, "--label", args.label,
        "--run-dir", str(run_dir), "--metrics-urls", metrics,
        "--csv", str(run_dir / "locust"), "--csv-full-history",
        "--html", str(run_dir / "locust_report.html"), *args.user_classes)
    locust = services.start("locust-master", master, run_dir / "locust-master.log", env=env)
    for i in (1, 2):
        services.start(f"locust-worker-{i}", net.command(
            "lb", sys.executable, "-m", "locust", "-f", "locustfiles", "--worker",
            "--master-host", "127.0.0.1", *args.user_classes),
            run_dir / f"locust-worker-{i}.log", env=env)
    # Workers leave with 0 when the master ends the run; any other exit is a failure.
    services.follow(lambda: not locust.alive(), "the Locust run ends",
                    timeout_s=args.ready_timeout + args.duration + args.stop_timeout,
                    interval_s=0.5, alive=lambda: all(p.poll() in (None, 0)
                                                      for p in services.procs.values()))
    code = locust.proc.returncode
    for i in (1, 2):
        services.wait(f"locust-worker-{i}", timeout_s=30)
    return code


def merge_server_logs(run_dir: Path) -> None:
    """server_requests.jsonl of the run: both hosts' lines in time order, tagged with the host."""
    records = [{**r, "host": h} for h in HOSTS
               for r in read_jsonl(run_dir / "hosts" / h / "server_requests.jsonl")]
    records.sort(key=lambda r: r["ts"])
    (run_dir / "server_requests.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records))


def scaleout_facts(args: argparse.Namespace, net: Network, services: ProcessGroup,
                   load_key: str, proxy: dict[str, Any] | None) -> dict[str, Any]:
    """What only this script knows, for run.json: every host's workers, the machine they
    share, and the ``scaleout`` record (the Locust master wrote the rest, from /ready)."""
    return {
        "label": args.label, "workers": args.workers * len(HOSTS),
        "git_commit": git_commit(), "host": fingerprint_subprocess(),
        "scaleout": {
            "hosts": {h: f"{net.address(h)}:{PORT}" for h in HOSTS},
            "workers_per_host": args.workers,
            "user_classes": args.user_classes,
            "balancer": f"nginx least_conn at {net.address('lb')}:80 (deploy/nginx.conf)",
            "rate_limit": args.rate_limit,
            "ratelimit_storage": f"redis://{net.address('redis')}:6379/0",
            "load_key_id": key_id_of(hashlib.sha256(load_key.encode()).digest()),
            "locust": "master + 2 workers in the lb namespace",
            "proxy_probe": proxy,
            "processes": {name: proc.pid for name, proc in services.procs.items()},
        },
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON."""
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Set up, load, tear down, check; return 0 when every check held."""
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("needs root: ip netns add, veth links, a bridge")
    subprocess.run([sys.executable, "-m", "server.engine.synthetic", "build",
                    args.model.removeprefix("synthetic:"), "--models-dir", args.models_dir],
                   cwd=REPO, check=True)
    run_dir = (args.run_dir or new_run_dir(args.label)).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"== run folder {run_dir}", flush=True)
    for name in remove_stale():
        print(f"== removed namespace {name} left by an earlier run", flush=True)
    load_key, probe_key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    operator_key = secrets.token_urlsafe(32)
    net = Network(ROLES, subnet=args.subnet)
    services = ProcessGroup(cwd=REPO, cap_s=args.ready_timeout, stall_s=args.stall_timeout)
    nginx_files = Path(tempfile.mkdtemp(prefix="gll-nginx-"))
    nginx_files.chmod(0o755)  # nginx's worker user makes its temp files under it

    def tear_down() -> None:
        services.stop_all()
        net.destroy()
        shutil.rmtree(nginx_files, ignore_errors=True)

    atexit.register(tear_down)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below
    started = time.monotonic()
    try:
        net.create()
        start_cluster(args, net, services, run_dir, [load_key, probe_key], operator_key,
                      nginx_files)
        proxy = probe_proxy(net, probe_key, operator_key)
        code = run_locust(args, net, services, run_dir, load_key, operator_key)
    finally:
        tear_down()
    update_record(run_dir, **scaleout_facts(args, net, services, load_key, proxy))
    merge_server_logs(run_dir)
    summary = {**summarize(run_dir), "proxy_probe": proxy, "locust_exit_code": code,
               "wall_s": round(time.monotonic() - started, 1)}
    write_json(run_dir / "summary.json", summary)
    if not args.no_analysis:
        subprocess.run([sys.executable, "-m", "analysis", str(run_dir)], cwd=REPO, check=False)
    print(report(summary), flush=True)
    print(f"== done in {summary['wall_s']} s: {run_dir} (locust exit code {code}; 1 = some "
          "requests failed, which the 429s are)", flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
