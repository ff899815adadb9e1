"""Make Locust's --csv files hold the final numbers, not those of a second before the end.

Locust's CSV writer rewrites locust_stats.csv (and appends to the history) once every
``CSV_STATS_INTERVAL_SEC`` and closes the files at shutdown without a last write, so requests
that finish while users stop (``--stop-timeout``) reach the console summary, the HTML report
and requests.csv, but not locust_stats.csv. Waiting one writer interval in ``quitting``
(which runs before the files are closed) lets the writer take that last snapshot.
"""

from __future__ import annotations

from typing import Any

import gevent
from locust.env import Environment
from locust.runners import WorkerRunner
from locust.stats import CSV_STATS_INTERVAL_SEC


class FinalCsvSnapshot:
    """Register on the master (or local) process of a run with ``--csv``."""

    def register(self, environment: Environment) -> None:
        """Wait for one more CSV write when Locust quits."""
        options = environment.parsed_options
        if isinstance(environment.runner, WorkerRunner) or not getattr(options, "csv_prefix",
                                                                          None):
            return
        environment.events.quitting.add_listener(self._on_quitting)

    def _on_quitting(self, **kwargs: Any) -> None:
        gevent.sleep(CSV_STATS_INTERVAL_SEC * 1.5)
