"""Gunicorn settings for GPT Load Lab: one preloaded model shared copy-on-write by all workers.

Run: ``gunicorn -c gunicorn.conf.py`` (``make serve``). Every value can be overridden on the
command line (``--workers 3``, ``--bind 127.0.0.1:9000``) or with GUNICORN_CMD_ARGS.
"""

import gc
import os
import shutil
import tempfile
from pathlib import Path

from server.config import load_config, load_gunicorn_settings  # light: no Flask or torch

# The server's settings (defaults + environment), for the Gunicorn values derived from them,
# and this file's own (server/config.py, GunicornSettings): each validated, so
# WEB_CONCURRENCY=two stops the master with a ConfigError naming the variable.
_config = load_config()
_gunicorn = load_gunicorn_settings()

# Prometheus multiprocess mode: set before the app (and prometheus_client) is imported, so
# every worker writes its metrics to files that /metrics merges. The same per-server folder
# holds the lock files of the rows the workers share (in_flight.lock, core_share.lock;
# server/engine/shared_rows.py): created here, in the master, before the app and the fork. Stale
# .db files from an earlier server using the same folder would be counted again, so the
# folder starts empty of them: once per master. Gunicorn evaluates this file again on
# SIGHUP (a reload; the systemd unit sends HUP) in the same master, whose live workers'
# counters are in those files, so a variable set in the master's environment marks the
# wipe as done. (Module globals are fresh on each read.)
_WIPED_BY = "GPT_LOAD_LAB_METRICS_WIPED_BY"
_first_read = os.environ.get(_WIPED_BY) != str(os.getpid())
if _first_read:
    _own = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    os.environ["GPT_LOAD_LAB_METRICS_OWN_DIR"] = "1" if _own else ""
_own_metrics_dir = os.environ.get("GPT_LOAD_LAB_METRICS_OWN_DIR") == "1"
_metrics_dir = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR",
                                          tempfile.mkdtemp(prefix="gpt-load-lab-metrics-")))
_metrics_dir.mkdir(parents=True, exist_ok=True)
if _first_read:
    for _stale in _metrics_dir.glob("*.db"):
        _stale.unlink()
    os.environ[_WIPED_BY] = str(os.getpid())

# oneDNN (the float32+onednn kernel path, server/engine/kernels.py) caches a compiled kernel per
# matrix shape; shapes are bucketed, and this bounds the cache whatever a model's layers are.
# Read once when oneDNN starts, so it is set before the app (and torch) is imported.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")

# The app factory; the model is loaded when Gunicorn calls it.
wsgi_app = "server:create_app()"

# Load the app (and the multi-GB weights) once in the master, then fork: workers share
# those pages copy-on-write instead of each holding its own copy.
# GUNICORN_PRELOAD=0 exists only to measure what preloading saves.
preload_app = _gunicorn["GUNICORN_PRELOAD"]

# Bind to loopback unless told otherwise; PORT follows the common PaaS convention.
bind = _gunicorn["BIND"] or f"127.0.0.1:{_gunicorn['PORT']}"

# One worker on every core (its steps take cores / busy workers torch threads,
# server/engine/core_share.py). Measured with continuous batching on the 2-core AMD EPYC box
# (docs/results.md, "One user gets the whole box"): one worker served a lone request as fast
# as two sharing workers (10.2 vs 10.5 s for 32 tokens of gpt2-large), 8 staggered requests
# in 26 s instead of 37 s (all 8 rows in one step instead of 4 + 4 on one thread each), and
# the main job's mix with 42 instead of 38 successful requests and no 504 (two with 2
# workers). WEB_CONCURRENCY=2 buys a second worker that serves while the other is killed or
# recycled, at that cost; preloaded workers share the weights either way. On the Intel box
# with native bf16 (old engine, results/bench/) 1 x 2 and 2 x 1 were within noise, so one
# worker costs nothing there; re-measure with python -m bench burst on a new CPU.
workers = _gunicorn["WEB_CONCURRENCY"]

# gthread: request threads wait on the worker's generation thread, which batches them.
# Enough threads for a running batch plus a full queue plus probes: a connection that finds
# no free thread waits unseen in gthread's own queue, where neither MAX_QUEUE nor
# MAX_IN_FLIGHT can refuse it fast. Idle threads cost a stack each, not model memory.
# GracefulThreadWorker is gthread that closes its listening socket the moment it stops, so
# on SIGTERM new connections are refused at once instead of hanging, and that keeps slow
# clients out of the threads: a connection gets one only once its request head is in, and its
# reads end CLIENT_READ_TIMEOUT_S later (server/web/worker.py). Stalled connections still count
# against worker_connections (1000 per worker, Gunicorn's default) until that deadline.
worker_class = "server.web.worker.GracefulThreadWorker"
threads = _gunicorn["GUNICORN_THREADS"] or _config["MAX_BATCH_SIZE"] + _config["MAX_QUEUE"] + 8

# Above the worst generation (REQUEST_TIMEOUT_S, default 120 s): the generation thread does
# not block the worker's heartbeat, but a worker stuck in a C call for this long is dead.
timeout = _gunicorn["GUNICORN_TIMEOUT"]

# In-flight generations get this long to finish on SIGTERM (or a max_requests restart)
# before the worker is killed. A request that reached a request thread ends within
# REQUEST_TIMEOUT_S (answer or 504), so the default is that plus a margin: stopping does not
# cut a running generation off. (Raise the service manager's stop timeout above it.)
graceful_timeout = _gunicorn["GUNICORN_GRACEFUL_TIMEOUT"]
if graceful_timeout is None:
    graceful_timeout = int(_config["REQUEST_TIMEOUT_S"] + 10)

# Restart a worker after this many requests plus a random 0..max_requests_jitter more (drawn
# per worker, so workers do not all restart at once). It bounds slow memory growth nothing
# else would return (allocator fragmentation from varied sequence lengths, caches in a
# library); the replacement is forked from the preloaded master, so it shares the weights
# and costs a warm-up, not a reload. The stopping worker finishes what it accepted (see
# graceful_timeout): recycling drops no request. The soak test shows no growth over 2,000
# requests, so the default is a rare safety net. 0 turns recycling off.
max_requests = _gunicorn["GUNICORN_MAX_REQUESTS"]
max_requests_jitter = _gunicorn["GUNICORN_MAX_REQUESTS_JITTER"]
if max_requests_jitter is None:
    max_requests_jitter = max_requests // 10

# Keep idle client connections open this long between requests. Above the clients' think
# time (Locust users wait up to 5 s): with keepalive = 5 the server closed a connection at the
# moment a user reused it, and the user saw RemoteDisconnected (seen once in the gpt2-large
# sweep). Idle connections sit in gthread's poller, not in a request thread.
keepalive = _gunicorn["GUNICORN_KEEPALIVE"]

# The PID file lets the load-test tooling find the master and sample its process tree.
pidfile = _gunicorn["GUNICORN_PIDFILE"] or None

# No runtime control socket: its default path is per user, so several servers on one host
# (tests, the benchmark matrix) would fight over it. Pass --control-socket PATH to enable.
control_socket_disable = True

# Access log to stderr; the per-request RAM record is the app's own REQUEST_LOG.
accesslog = _gunicorn["GUNICORN_ACCESSLOG"] or None  # "" turns it off
# The default format logs the query string and the Basic-auth user name, either of which can
# carry a careless client's API key: log the path without the query, and no user.
access_log_format = ('%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(L)ss '
                     '"%(a)s" %({x-request-id}o)s')

# TLS is usually terminated at a reverse proxy; for direct HTTPS give both files (PEM).
certfile = _gunicorn["TLS_CERTFILE"] or None
keyfile = _gunicorn["TLS_KEYFILE"] or None


def on_starting(server):
    """Warn when rate limits are counted by each worker separately (memory:// storage)."""
    from server.config import load_config
    from server.web.limits import per_worker_warning

    warning = per_worker_warning(load_config(), server.cfg.workers)
    if warning:
        server.log.warning(warning)


def when_ready(server):
    """Freeze the master's objects so the cycle collector does not touch (and un-share)
    their pages in the children; trim the heap the load freed so no child inherits it; hand
    back the library pages only the load ran (server/engine/file_pages.py): the workers
    fault in the code they run, and the rest no longer counts in the tree's memory."""
    from server.engine.file_pages import release_file_pages
    from server.engine.memory import release_free_heap

    release_free_heap()
    gc.freeze()
    server.log.info("master: %s", release_file_pages().summary())
    # The master never samples memory: drop the zero-valued live gauges its metric objects
    # created, so /metrics lists workers only.
    from server.web.metrics import mark_worker_dead

    mark_worker_dead(os.getpid())
    server.log.info("model preloaded; gc frozen; forking %d workers x %d torch threads%s",
                    server.cfg.workers, _torch_threads(server.cfg.workers),
                    "" if _config["TORCH_THREADS"] else
                    " to start; a busy worker then uses cores / busy workers "
                    "(server/engine/core_share.py)")


def post_worker_init(worker):
    """Start serving in this worker: API keys re-read (a SIGHUP forks new workers from the
    preloaded app, whose keys are the ones read at startup), torch threads (cores / workers
    to start), sampler, warm-up."""
    from server.web.auth import reload_keys

    reload_keys(worker.wsgi)
    service = worker.wsgi.extensions["model_service"]
    service.start(_torch_threads(worker.cfg.workers))


def _torch_threads(workers: int) -> int:
    """A worker's first torch threads: TORCH_THREADS, or this machine's cores / workers
    (with TORCH_THREADS=0 each step then takes the worker's share of the cores)."""
    return _config["TORCH_THREADS"] or max(1, len(os.sched_getaffinity(0)) // workers)


def child_exit(server, worker):
    """Drop a dead worker's per-worker gauges from /metrics, its in-flight count and its
    busy-core row. Never waits on a lock: the worker may have died holding one
    (server/engine/shared_rows.py); a row left behind is recycled when a worker needs it."""
    from server.web.metrics import mark_worker_dead

    mark_worker_dead(worker.pid)
    if server.cfg.preload_app:  # the app (and its shared in-flight table) lives here too
        table = server.app.wsgi().extensions.get("in_flight")
        if table is not None and not table.forget(worker.pid):
            server.log.warning("in-flight row of worker %s left to the workers (lock busy)",
                               worker.pid)
        # A worker that died mid-step still holds a busy row: the others' shares shrink.
        service = server.app.wsgi().extensions.get("model_service")
        if service is not None and service.cores is not None \
                and not service.cores.release_dead(worker.pid):
            server.log.warning("busy-core row of worker %s left to the workers (lock busy)",
                               worker.pid)


def on_exit(server):
    """Remove the metrics folder this config created (a given one is left to its owner)."""
    if _own_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
