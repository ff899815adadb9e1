"""The scale-out cluster in its namespaces: Redis, the Gunicorn hosts, nginx in front.

Started in that order, each once the one before answers: Redis first (a host whose first
request met no Redis would count limits on its own), nginx last (connections refused while
the hosts load would mark them as failed for fail_timeout). The processes are a
harness.server_process.ProcessGroup and readiness is harness's WorkersReady, polled from the
lb namespace.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import redis

from deploy.netns import Network, inside
from harness.gunicorn_process import WorkersReady
from harness.server_process import ProcessGroup

REPO = Path(__file__).resolve().parent.parent
ROLES = {"lb": 10, "h1": 11, "h2": 12, "redis": 20}  # role -> last octet of its address
HOSTS = ("h1", "h2")
PORT = 8000
NGINX_CONF = REPO / "deploy" / "nginx.conf"


def render_nginx_conf(text: str, upstreams: list[str], files: Path, log_dir: Path) -> str:
    """deploy/nginx.conf with its upstream servers, pid file and logs replaced."""
    servers = re.findall(r"^ *server \S+:\d+ .*;\n", text, flags=re.M)
    if not servers:
        raise ValueError(f"{NGINX_CONF}: no 'server host:port ...;' lines in the upstream")
    keep = servers[0].strip().split(" ", 2)[2]  # the first line's options (max_fails ...)
    indent = servers[0][: len(servers[0]) - len(servers[0].lstrip())]
    text = text.replace(servers[0], "".join(f"{indent}server {u} {keep}\n" for u in upstreams))
    for line in servers[1:]:
        text = text.replace(line, "")
    subs = [(r"^pid .*;$", f"pid {files / 'nginx.pid'};"),
            (r"^error_log \S+", f"error_log {log_dir / 'error.log'}"),
            (r"access_log \S+", f"access_log {log_dir / 'access.log'}")]
    for pattern, new in subs:
        text, found = re.subn(pattern, new, text, count=1, flags=re.M)
        if found != 1:
            raise ValueError(f"{NGINX_CONF}: no line matching {pattern!r}")
    return text


def host_env(args: argparse.Namespace, net: Network, run_dir: Path, host: str,
             keys: list[str], operator_key: str) -> dict[str, str]:
    """Environment of one Gunicorn host: the model, both keys and the operator key (for
    /ready's worker pids and the /metrics scrapes), limits counted in Redis."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LOCUST_", "PROMETHEUS_MULTIPROC_DIR", "GUNICORN_"))}
    return {**env, "MODEL": args.model, "MODELS_DIR": str(Path(args.models_dir).resolve()),
            "DTYPE": args.dtype, "TORCH_THREADS": "1", "API_KEYS": ",".join(keys),
            "OPERATOR_KEYS": operator_key,
            "RATE_LIMIT": args.rate_limit,
            "RATELIMIT_STORAGE_URI": f"redis://{net.address('redis')}:6379/0",
            "REQUEST_LOG": str(run_dir / "hosts" / host / "server_requests.jsonl")}


def start_cluster(args: argparse.Namespace, net: Network, services: ProcessGroup, run_dir: Path,
                  keys: list[str], operator_key: str, nginx_files: Path) -> None:
    """Start Redis, both Gunicorn hosts and nginx, each in its namespace; wait until ready."""
    services.start("redis", net.command(
        "redis", "redis-server", "--bind", net.address("redis"), "--port", "6379",
        "--save", "", "--appendonly", "no", "--protected-mode", "no"), run_dir / "redis.log")
    wait_redis(net, services)
    for host in HOSTS:
        folder = run_dir / "hosts" / host
        folder.mkdir(parents=True, exist_ok=True)
        services.start(host, net.command(
            host, sys.executable, "-m", "gunicorn", "-c", str(REPO / "gunicorn.conf.py"),
            "--bind", f"{net.address(host)}:{PORT}", "--workers", str(args.workers),
            "--pid", str(folder / "gunicorn.pid")), folder / "gunicorn.log",
            env=host_env(args, net, run_dir, host, keys, operator_key))
    lb_dir = run_dir / "lb"
    lb_dir.mkdir(exist_ok=True)
    conf = lb_dir / "nginx.conf"
    conf.write_text(render_nginx_conf(NGINX_CONF.read_text(),
                                      [f"{net.address(h)}:{PORT}" for h in HOSTS],
                                      nginx_files, lb_dir))
    nginx = ["nginx", "-c", str(conf), "-p", f"{nginx_files}/", "-g", "daemon off;"]
    subprocess.run([*nginx, "-t"], check=True, capture_output=True)
    # Each host's /ready with the operator key: its answer names the worker (X-Worker-PID).
    wait_ready(net, services, {f"http://{net.address(h)}:{PORT}/ready": args.workers
                               for h in HOSTS},
               headers={"Authorization": f"Bearer {operator_key}"})
    # nginx after the hosts: connections refused while they load would mark them as failed.
    services.start("nginx", net.command("lb", *nginx), lb_dir / "nginx.out")
    wait_ready(net, services, {f"http://{net.address('lb')}/health": 1})


def wait_redis(net: Network, services: ProcessGroup) -> None:
    """Wait until Redis answers PING (a host that met no Redis would count limits alone)."""
    client = redis.Redis(host=net.address("redis"), port=6379, socket_timeout=1)

    def pong() -> bool:
        try:
            with inside(net.ns("lb")):
                return bool(client.ping())
        except redis.ConnectionError:
            return False
        finally:
            client.close()

    services.follow(pong, "redis-server answers PING")


def wait_ready(net: Network, services: ProcessGroup, wanted: dict[str, int],
               headers: dict[str, str] | None = None) -> None:
    """Poll each URL from the lb namespace (sending ``headers``) until that many worker pids
    answered 200 (an answer without X-Worker-PID counts as "nginx").

    Follows the processes (harness.waiting): fails at once when one exited, waits while they
    still load or warm up (two hosts preloading on 2 busy cores can take minutes).
    """
    ready = WorkersReady(wanted, headers=headers, timeout_s=2, unnamed="nginx")

    def from_lb() -> bool:
        with inside(net.ns("lb")):
            return ready()

    services.follow(from_lb, "ready: " + ", ".join(f"{u} x{n}" for u, n in wanted.items()),
                    progress=lambda: str(ready), interval_s=0.3)
    print(f"== ready: {ready}", flush=True)
