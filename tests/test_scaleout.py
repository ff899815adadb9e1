"""Scale-out on one machine (deploy/netns_scaleout.py): 2 Gunicorn hosts behind nginx, limits
in Redis, distributed Locust. Asserted from the run folder's files, not the script's verdict."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from deploy.cluster import render_nginx_conf
from deploy.netns import remove_stale
from harness.gunicorn_process import REPO
from harness.processes import stop_process
from server.config import DEFAULTS
from server.engine.row_cache import resolve_kv_dtype
from tests.conftest import MODELS_DIR
from tests.locust_runs import locust_env, locust_totals, read_csv, read_jsonl

LIMIT = 20  # the run's RATE_LIMIT: 20/minute per key, and the run is shorter than a minute
NGINX_CONF = (REPO / "deploy" / "nginx.conf").read_text()


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root for ip netns (CI runs as root)"
    for tool in ("ip", "nginx", "redis-server"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs nginx and redis-server)"
    return None


@pytest.fixture(scope="module")
def run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """(run folder, the script's pid) of one 20-second run: 6 users, 1 worker per host."""
    if reason := _missing():
        pytest.skip(reason)
    run_dir = tmp_path_factory.mktemp("scaleout") / "run"
    proc = subprocess.Popen(
        [sys.executable, "deploy/netns_scaleout.py", "--models-dir", MODELS_DIR,
         "--users", "6", "--spawn-rate", "6", "--duration", "20",
         "--rate-limit", f"{LIMIT}/minute", "--run-dir", str(run_dir)],
        cwd=REPO, env=locust_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # The script follows its own processes while they start (harness.waiting), so this
        # is only a cap for a run that hangs: two hosts preloading on 2 busy cores take minutes.
        out, _ = proc.communicate(timeout=1200)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the script tears its namespaces down on SIGTERM
        out, _ = proc.communicate(timeout=120)
        pytest.fail(f"scale-out run took over 1200 s:\n{out[-4000:]}")
    finally:
        # Whatever happened, nothing of this run may keep running into the next tests.
        stop_process(proc)
        remove_stale()
    assert proc.returncode == 0, out[-6000:]
    return run_dir, proc.pid


@pytest.fixture(scope="module")
def setup(run: tuple[Path, int]) -> dict:
    """run.json's scaleout record: hosts, limit, load key id, the proxy probe."""
    return json.loads((run[0] / "run.json").read_text())["scaleout"]


def host_log(run_dir: Path, host: str, key_id: str) -> list[dict]:
    """A host's own request log lines for the load key."""
    return [r for r in read_jsonl(run_dir / "hosts" / host / "server_requests.jsonl")
            if r["key_id"] == key_id]


def test_requests_reached_both_hosts(run, setup) -> None:
    run_dir = run[0]
    logs = {h: host_log(run_dir, h, setup["load_key_id"]) for h in setup["hosts"]}
    pids = {h: {r["worker_pid"] for r in lines} for h, lines in logs.items()}
    rows = read_csv(run_dir / "requests.csv")

    assert set(setup["hosts"]) == {"h1", "h2"} and all(logs.values()), logs.keys()
    assert pids["h1"].isdisjoint(pids["h2"])
    # The client's X-Worker-PID of every answer names a worker of one of the hosts.
    by_host = Counter(next(h for h, p in pids.items() if int(r["worker_pid"]) in p) for r in rows)
    assert by_host == {h: len(lines) for h, lines in logs.items()}
    assert len(rows) == locust_totals(run_dir)[0] == sum(by_host.values())
    # nginx's access log names both upstreams.
    access = (run_dir / "lb" / "access.log").read_text()
    assert all(f"upstream={address}" in access for address in setup["hosts"].values())


def test_per_key_limit_held_across_hosts(run, setup) -> None:
    run_dir = run[0]
    logs = {h: host_log(run_dir, h, setup["load_key_id"]) for h in setup["hosts"]}
    statuses = Counter(r["status"] for lines in logs.values() for r in lines)
    client = Counter(r["status_code"] for r in read_csv(run_dir / "requests.csv"))

    assert setup["rate_limit"] == f"{LIMIT}/minute"
    # Each host alone saw more than the limit: counted per host, up to 2 x LIMIT would pass.
    assert all(len(lines) > LIMIT for lines in logs.values()), {h: len(v) for h, v in logs.items()}
    assert 0 < statuses[200] <= LIMIT and statuses[429] > 0, statuses
    assert set(statuses) == {200, 429} and client == {"200": statuses[200], "429": statuses[429]}
    assert all(any(r["status"] == 200 for r in lines) for lines in logs.values())


def test_memory_csv_covers_both_hosts(run, setup) -> None:
    run_dir = run[0]
    rows = [r for r in read_csv(run_dir / "memory.csv") if r["role"] == "worker"]
    for host, address in setup["hosts"].items():
        served = {str(r["worker_pid"]) for r in host_log(run_dir, host, setup["load_key_id"])}
        scraped = [r for r in rows if r["host"] == address]
        assert len(scraped) >= 10, f"{host}: {len(scraped)} memory rows"
        assert {r["pid"] for r in scraped} == served
        assert all(0 < float(r["uss_mb"]) <= float(r["pss_mb"]) <= float(r["rss_mb"])
                   for r in scraped)


def test_distributed_locust_and_nginx_promises(run, setup) -> None:
    run_dir = run[0]
    master_log = (run_dir / "locust-master.log").read_text()
    probe = setup["proxy_probe"]

    assert "2 workers connected" in master_log or "(index 1) reported as ready" in master_log
    assert probe["request_id_echoed"] and probe["metrics_status"] == 404
    assert probe["too_large_status"] == 413 and probe["too_large_code"] == "payload_too_large"
    assert probe["stream_content_type"].startswith("text/event-stream") and probe["stream_done"]
    assert (run_dir / "report.md").is_file()


def test_run_json_records_what_the_hosts_reported(run) -> None:
    record = json.loads((run[0] / "run.json").read_text())
    kernels = record["server"]["kernels"]
    assert kernels["chosen"] in {t["precision"] for t in kernels["table"]}
    assert record["torch_threads"] == 1 and record["max_batch_size"] == DEFAULTS["MAX_BATCH_SIZE"]
    assert record["prefill_chunk"] == 128 and record["host"]["cpu_model"]
    # KV_CACHE_MB's 225 MiB hold 230,400 of tiny's float32 positions: capped at rows x 1,024
    assert record["server"]["kv_tokens"] == DEFAULTS["MAX_BATCH_SIZE"] * 1024
    assert record["server"]["prefix_cache_rows"] == DEFAULTS["PREFIX_CACHE_ROWS"]
    # Read again at the run's end, summed over both hosts' workers: what the steps computed.
    assert record["server"]["prompt_tokens_computed"] > 0
    assert record["server"]["prompt_tokens_cached"] >= 0
    assert record["server"]["kv_dtype"] == resolve_kv_dtype(DEFAULTS["KV_DTYPE"], record["dtype"])


def test_everything_torn_down(run, setup) -> None:
    run_dir, script_pid = run
    started = setup["processes"]  # redis, h1, h2 (Gunicorn masters), nginx, Locust x 3
    workers = {r["worker_pid"] for h in ("h1", "h2")
               for r in read_jsonl(run_dir / "hosts" / h / "server_requests.jsonl")}
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout

    assert len(started) == 7 and workers
    assert f"gll-{script_pid}-" not in namespaces
    assert not [pid for pid in [*started.values(), *workers] if Path(f"/proc/{pid}").exists()]


def test_render_nginx_conf_points_the_upstream_at_the_hosts(tmp_path) -> None:
    hosts = ["10.1.2.3:8000", "10.1.2.4:8000", "10.1.2.5:8000"]

    text = render_nginx_conf(NGINX_CONF, hosts, tmp_path / "files", tmp_path / "logs")

    servers = re.findall(r"^\s*server (\S+) max_fails=3 fail_timeout=10s;$", text, flags=re.M)
    assert servers == hosts
    assert f"pid {tmp_path / 'files' / 'nginx.pid'};" in text
    assert f"access_log {tmp_path / 'logs' / 'access.log'} gpt_load_lab;" in text
    assert "least_conn;" in text and "proxy_buffering off;" in text
    with pytest.raises(ValueError, match="server host:port"):
        render_nginx_conf("events {}\n", hosts, tmp_path, tmp_path)


def test_deploy_files_agree_with_the_server_defaults() -> None:
    graceful_s = DEFAULTS["REQUEST_TIMEOUT_S"] + 10  # gunicorn.conf.py's graceful_timeout
    unit = (REPO / "deploy" / "gpt-load-lab.service").read_text()
    [deployment, service] = yaml.safe_load_all((REPO / "deploy" / "k8s.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]

    def nginx_s(directive: str) -> int:
        return int(re.search(rf"^\s*{directive} (\d+)s;$", NGINX_CONF, flags=re.M).group(1))

    assert min(nginx_s(d) for d in ("proxy_read_timeout", "proxy_send_timeout",
                                    "send_timeout")) > graceful_s
    assert re.search(r"client_max_body_size (\d+)k;", NGINX_CONF).group(1) == str(
        DEFAULTS["MAX_CONTENT_LENGTH"] // 1024)
    assert int(re.search(r"^TimeoutStopSec=(\d+)$", unit, flags=re.M).group(1)) > graceful_s
    assert "KillSignal=SIGTERM" in unit and "RATELIMIT_STORAGE_URI=redis://" in unit
    assert pod["terminationGracePeriodSeconds"] > graceful_s
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    # README "Results": 4,087 MB peak total PSS at 10 users, 6.9 GB in the overload sweep.
    assert container["resources"]["requests"]["memory"] == "4Gi"  # >= 4,087 MB
    assert container["resources"]["limits"]["memory"] == "8Gi"  # > 6.9 GB
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
