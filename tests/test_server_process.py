"""The process plumbing on stand-ins that start in a second: ServerProcess through LlamaServer
(ready, pidfile, stop; a server that dies is reported at once), ProcessGroup with WorkersReady
(deploy/cluster.py's hosts and proxy) and run_script."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.gunicorn_process import WorkersReady
from harness.llama_server import LlamaServer
from harness.processes import free_port, running
from harness.script_run import run_script
from harness.server_process import ProcessGroup
from harness.waiting import ProcessDied, WaitTimeout

# Answers /health 503 for half a second ("loading"), then 200, like llama-server.
FAKE_LLAMA = textwrap.dedent("""
    import sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer
    started = time.monotonic()

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if time.monotonic() - started > 0.5 else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    print("loading", flush=True)
    HTTPServer(("127.0.0.1", int(sys.argv[sys.argv.index("--port") + 1])), Health).serve_forever()
""")


def test_llama_server_is_ready_writes_its_pidfile_and_stops(tmp_path: Path) -> None:
    command = [sys.executable, "-c", FAKE_LLAMA, "--port", str(free_port())]
    with LlamaServer(command, tmp_path, api_key="k") as server:
        pid = int(server.pidfile.read_text())
        assert server.alive() and pid == server.proc.pid
        assert "loading" in server.log_text()
    assert not running(pid) and not server.pidfile.exists()


def test_a_server_that_dies_fails_the_wait_at_once(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "print('no model here'); raise SystemExit(3)", "--port", "1"]
    started = time.monotonic()
    with pytest.raises(ProcessDied, match="no model here"), LlamaServer(command, tmp_path, "k"):
        pass
    assert time.monotonic() - started < 60  # not the cap: the exit is seen on the next poll


def test_run_script_returns_what_the_script_printed(tmp_path: Path) -> None:
    code = "import sys; print('out'); print('err', file=sys.stderr); raise SystemExit(2)"
    result = run_script([sys.executable, "-c", code], cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (2, "out\n", "err\n")
    logged = run_script([sys.executable, "-c", code], log_path=tmp_path / "run.log")
    assert logged.returncode == 2 and sorted((tmp_path / "run.log").read_text().split()) == [
        "err", "out"]


def test_run_script_stops_a_script_that_stalls(tmp_path: Path) -> None:
    code = "import os, time; print(os.getpid(), flush=True); time.sleep(600)"
    with pytest.raises(WaitTimeout, match="no progress"):
        run_script([sys.executable, "-c", code], log_path=tmp_path / "run.log", stall_s=2)
    # On a starved machine the interpreter can look stalled before it printed its pid.
    pid = (tmp_path / "run.log").read_text().strip()
    assert not pid or not running(int(pid))


def test_run_script_stops_children_the_script_left_behind(tmp_path: Path) -> None:
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(1.5)\n")  # alive through a progress reading, then gone without it
    result = run_script([sys.executable, "-c", code])
    assert result.returncode == 0 and not running(int(result.stdout))


# Answers every GET 200 with X-Worker-PID (pid given on the command line; "-" = no header),
# as a Gunicorn worker's /ready does; a proxy answers without one.
FAKE_WORKER = textwrap.dedent("""
    import json, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    port, pid = int(sys.argv[1]), sys.argv[2]

    class Ready(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"status": "ready", "pid": pid}).encode()
            self.send_response(200)
            if pid != "-":
                self.send_header("X-Worker-PID", pid)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    print("serving", flush=True)
    HTTPServer(("127.0.0.1", port), Ready).serve_forever()
""")


def test_a_group_is_ready_when_every_url_saw_its_workers(tmp_path: Path) -> None:
    group = ProcessGroup(cwd=tmp_path, cap_s=60, stall_s=30)
    ports = {"h1": free_port(), "lb": free_port()}
    try:
        for name, pid in (("h1", "101"), ("lb", "-")):
            group.start(name, [sys.executable, "-c", FAKE_WORKER, str(ports[name]), pid],
                        tmp_path / f"{name}.log")
        ready = WorkersReady({f"http://127.0.0.1:{ports['h1']}/ready": 1,
                              f"http://127.0.0.1:{ports['lb']}/health": 1}, unnamed="nginx")
        group.follow(ready, "both answer", progress=ready.count)
        assert [sorted(pids) for pids in ready.seen.values()] == [["101"], ["nginx"]]
        assert ready.body()["status"] == "ready"
        assert set(group.procs) == {"h1", "lb"} and group.all_alive()
    finally:
        group.stop_all()
    assert not group.all_alive()
    assert not any(running(proc.pid) for proc in group.procs.values())


def test_a_member_that_dies_fails_the_groups_wait_with_its_log(tmp_path: Path) -> None:
    group = ProcessGroup(cwd=tmp_path, cap_s=60, stall_s=30)
    try:
        group.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"],
                    tmp_path / "sleeper.log")
        group.start("quitter", [sys.executable, "-c", "print('bad flag'); raise SystemExit(3)"],
                    tmp_path / "quitter.log")
        started = time.monotonic()
        with pytest.raises(ProcessDied, match=r"(?s)--- quitter \(exit 3\)\nbad flag"):
            group.follow(lambda: False, "never")
        assert time.monotonic() - started < 20
    finally:
        group.stop_all()
    assert group.wait("sleeper", timeout_s=1) is not None
