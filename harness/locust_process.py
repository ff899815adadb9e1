"""Start, follow and stop Locust running this project's suite: the one load generator.

    cmd = suite_command("locustfiles", server.url, run_dir, "smoke", ["--headless", "-u", "2"])
    with LocustProcess(cmd, locust_env(api_key, operator_key)) as locust:
        code = locust.wait()

``suite_command`` adds what every run of the suite writes into its run folder (--run-dir,
--label, requests.csv through the suite's hooks, Locust's CSVs with full history, the HTML
report). ``LocustProcess`` starts it (output to the terminal, or to ``log_path``) and stops
it by pid on the way out: SIGTERM, which Locust answers by writing its reports, then SIGKILL
(harness.processes). Loopback targets only: the caller gives the host.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Self

from harness.processes import stop_process

REPO = Path(__file__).resolve().parent.parent


def locust_env(api_key: str, operator_key: str | None = None,
               **extra: str) -> dict[str, str]:
    """This process's environment with the keys the suite sends (LOCUST_API_KEY, and
    LOCUST_OPERATOR_KEY for /ready's details and /metrics) and ``extra`` variables."""
    env = {**os.environ, "LOCUST_API_KEY": api_key, **extra}
    if operator_key:
        env["LOCUST_OPERATOR_KEY"] = operator_key
    env.pop("LOCUST_SKIP_MONKEY_PATCH", None)  # set by the unit tests only
    return env


def suite_command(locustfile: str, host: str, run_dir: Path, label: str,
                  options: Sequence[str] = ()) -> list[str]:
    """``python -m locust`` on ``locustfile`` against ``host``, writing into ``run_dir``."""
    return [sys.executable, "-m", "locust", "-f", locustfile, "--host", host,
            "--run-dir", str(run_dir), "--label", label,
            "--csv", str(run_dir / "locust"), "--csv-full-history",
            "--html", str(run_dir / "locust_report.html"), *options]


class LocustProcess:
    """One Locust process; ``with`` starts it and stops it (if still running) on the way out."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path | None = None,
                 cwd: Path = REPO) -> None:
        self.args, self.env, self.log_path, self.cwd = args, env, log_path, cwd
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start Locust; its output goes to ``log_path`` when given, else to ours."""
        log: IO[bytes] | None = open(self.log_path, "wb") if self.log_path else None  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(self.args, cwd=self.cwd, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT if log else None)
        finally:
            if log:
                log.close()  # the child holds its own copy

    def wait(self) -> int:
        """Locust's exit code once it ended by itself (its -t, or every user done). Ctrl+C
        reaches Locust too: wait again while it writes its reports."""
        assert self.proc is not None, "start() first"
        try:
            return self.proc.wait()
        except KeyboardInterrupt:
            return self.proc.wait()

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (Locust writes its reports), wait, then SIGKILL; the exit code."""
        return None if self.proc is None else stop_process(self.proc, timeout_s)
