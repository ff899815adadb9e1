"""Server memory in Locust's web UI: two extra tabs, a live chart page and a CSV download.

Uses Locust's documented extension points (docs "Extending the web UI"):
``web_ui.template_args["extended_tabs" / "extended_tables" / "extended_csv_files"]``, an
``after_request`` hook that adds ``extended_stats`` to ``/stats/requests`` (polled by the UI
every ~2 s), and extra routes on ``web_ui.app``:

* tab "Server memory": per process (master, workers) and the total: RSS, USS, PSS, shared,
  peak PSS. The total row's PSS is the tree's real footprint; its RSS double-counts the
  shared model weights once per process.
* tab "Request RAM": per server worker, the latest X-Worker-RSS/USS/PSS-MB headers seen on
  its responses and how many requests it served.
* ``/memory``: a page (no scripts; it reloads itself every 2 s) charting total PSS against
  summed RSS over time, per-process PSS, and the latest numbers. Linked from the
  "Download Data" tab, as is ``/memory/csv`` (memory.csv so far).
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from flask import Blueprint, Response, request, send_file
from locust.env import Environment

from locustfiles.memory_sampler import MemorySampler, TreeSample
from locustfiles.request_recorder import RequestRecorder

MEMORY_TAB = "server-memory"
REQUEST_RAM_TAB = "request-ram"
MEMORY_COLUMNS = [("role", "Process"), ("pid", "PID"), ("rss_mb", "RSS (MB)"),
                  ("uss_mb", "USS (MB)"), ("pss_mb", "PSS (MB)"), ("shared_mb", "Shared (MB)"),
                  ("peak_pss_mb", "Peak PSS (MB)")]
REQUEST_RAM_COLUMNS = [("worker_pid", "Server worker PID"), ("requests", "Requests"),
                       ("rss_mb", "Latest RSS (MB)"), ("uss_mb", "Latest USS (MB)"),
                       ("pss_mb", "Latest PSS (MB)"), ("peak_pss_mb", "Peak PSS (MB)"),
                       ("last_request_id", "Last request ID")]
CHART_SAMPLES = 600  # the page charts the last 10 minutes at one sample a second


def memory_rows(sampler: MemorySampler) -> list[dict[str, Any]]:
    """Rows of the "Server memory" tab: the latest sample, total first."""
    latest = sampler.latest
    if latest is None:
        return []
    peaks: dict[int, float] = {}
    for sample in sampler.history:
        for p in (*sample.processes, sample.total):
            peaks[p.pid] = max(peaks.get(p.pid, 0.0), p.pss_mb)
    return [{"role": p.role, "pid": p.pid, "rss_mb": round(p.rss_mb, 1),
             "uss_mb": round(p.uss_mb, 1), "pss_mb": round(p.pss_mb, 1),
             "shared_mb": round(p.shared_mb, 1), "peak_pss_mb": round(peaks[p.pid], 1)}
            for p in (latest.total, *latest.processes)]


def request_ram_rows(recorder: RequestRecorder) -> list[dict[str, Any]]:
    """Rows of the "Request RAM" tab: one per server worker seen in response headers."""
    return [{"worker_pid": w.worker_pid, "requests": w.requests, "rss_mb": w.rss_mb,
             "uss_mb": w.uss_mb, "pss_mb": w.pss_mb, "peak_pss_mb": w.peak_pss_mb,
             "last_request_id": w.last_request_id}
            for w in sorted(recorder.workers.values(), key=lambda w: w.worker_pid)]


def _polyline(points: list[tuple[float, float]], x_max: float, y_max: float,
              color: str, name: str) -> str:
    width, height = 760, 280
    coords = " ".join(f"{40 + x / x_max * width:.1f},{10 + height - y / y_max * height:.1f}"
                      for x, y in points)
    return (f'<polyline class="series" data-series="{escape(name)}" fill="none" '
            f'stroke="{color}" stroke-width="2" points="{coords}"/>')


def chart_svg(samples: list[TreeSample]) -> str:
    """SVG of total PSS, summed RSS and each process's PSS (MB) against elapsed seconds."""
    if len(samples) < 2:
        return '<p id="no-data">Waiting for at least two memory samples…</p>'
    t0 = samples[0].timestamp
    x_max = max(samples[-1].timestamp - t0, 1.0)
    y_max = max(s.total.rss_mb for s in samples) * 1.1 or 1.0
    series = [("total PSS", "#1f77b4", [(s.timestamp - t0, s.total.pss_mb) for s in samples]),
              ("summed RSS", "#d62728", [(s.timestamp - t0, s.total.rss_mb) for s in samples])]
    palette = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
    pids = sorted({p.pid: p.role for s in samples for p in s.processes}.items())
    for i, (pid, role) in enumerate(pids):
        points = [(s.timestamp - t0, p.pss_mb) for s in samples for p in s.processes
                  if p.pid == pid]
        series.append((f"{role} {pid} PSS", palette[i % len(palette)], points))
    lines = "".join(_polyline(pts, x_max, y_max, color, name) for name, color, pts in series)
    legend = " ".join(f'<span style="color:{c}">&#9632; {escape(n)}</span>'
                      for n, c, _ in series)
    return (f'<svg id="memory-chart" width="820" height="320" role="img" '
            f'aria-label="server memory over time">'
            f'<rect x="40" y="10" width="760" height="280" fill="none" stroke="#ccc"/>'
            f'<text x="0" y="20" font-size="11">{y_max:.0f} MB</text>'
            f'<text x="0" y="290" font-size="11">0</text>'
            f'<text x="700" y="310" font-size="11">{x_max:.0f} s elapsed</text>'
            f'{lines}</svg><p>{legend}</p>')


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]], table_id: str) -> str:
    head = "".join(f"<th>{escape(title)}</th>" for _, title in columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(row[key]))}</td>" for key, _ in columns)
                   + "</tr>" for row in rows)
    return f'<table id="{table_id}" border="1" cellpadding="4"><tr>{head}</tr>{body}</table>'


def render_page(sampler: MemorySampler, recorder: RequestRecorder) -> str:
    """The /memory page: chart plus the two tables, reloading itself every 2 s."""
    samples = list(sampler.history)[-CHART_SAMPLES:]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>Server memory</title></head>
<body style="font-family: sans-serif">
<h1>Server memory (source: {sampler.source})</h1>
<p>Total PSS is what the server really occupies: shared model pages are split among the
processes that map them. Summed RSS counts those pages once per process.</p>
{chart_svg(samples)}
<h2>Latest sample</h2>
{_table(memory_rows(sampler), MEMORY_COLUMNS, "memory-table")}
<h2>Latest per-request RAM (response headers)</h2>
{_table(request_ram_rows(recorder), REQUEST_RAM_COLUMNS, "request-ram-table")}
</body></html>"""


class MemoryTab:
    """Extend the web UI with server memory; a no-op when Locust runs headless."""

    def __init__(self, sampler: MemorySampler, recorder: RequestRecorder) -> None:
        self.sampler = sampler
        self.recorder = recorder

    def register(self, environment: Environment) -> None:
        """Add the tabs, the ``extended_stats`` hook and the /memory routes."""
        web_ui = environment.web_ui
        if web_ui is None:
            return
        extensions = {
            "extended_tabs": [{"title": "Server memory", "key": MEMORY_TAB},
                              {"title": "Request RAM", "key": REQUEST_RAM_TAB}],
            "extended_tables": [
                {"key": MEMORY_TAB,
                 "structure": [{"key": k, "title": t} for k, t in MEMORY_COLUMNS]},
                {"key": REQUEST_RAM_TAB,
                 "structure": [{"key": k, "title": t} for k, t in REQUEST_RAM_COLUMNS]},
            ],
            "extended_csv_files": [
                {"href": "./memory", "title": "Server memory chart (live page)"},
                {"href": "./memory/csv", "title": "Download server memory CSV (memory.csv)"},
            ],
        }
        for key, entries in extensions.items():  # kept beside other tabs (arrival_tab.py)
            web_ui.template_args[key] = [*web_ui.template_args.get(key, []), *entries]
        web_ui.app.after_request(self._extend_stats)
        web_ui.app.register_blueprint(self._blueprint(web_ui))

    def extended_stats(self) -> list[dict[str, Any]]:
        """The ``extended_stats`` entries the UI's extra tabs render."""
        return [{"key": MEMORY_TAB, "data": memory_rows(self.sampler)},
                {"key": REQUEST_RAM_TAB, "data": request_ram_rows(self.recorder)}]

    def _extend_stats(self, response: Response) -> Response:
        if request.path.endswith("/stats/requests") and response.is_json:
            data = response.get_json()
            # Added to what other tabs put there (capacity_tab.py): Flask runs after_request
            # hooks last-registered first.
            data["extended_stats"] = [*data.get("extended_stats", []), *self.extended_stats()]
            response.set_data(json.dumps(data))
        return response

    def _blueprint(self, web_ui: Any) -> Blueprint:
        bp = Blueprint("gpt_lab_memory", __name__)
        auth = web_ui.auth_required_if_enabled

        @bp.route("/memory")
        @auth
        def memory_page() -> Response:
            return Response(render_page(self.sampler, self.recorder), mimetype="text/html")

        @bp.route("/memory/data")
        @auth
        def memory_data() -> Response:
            samples = list(self.sampler.history)[-CHART_SAMPLES:]
            body = {"source": self.sampler.source,
                    "samples": [{"timestamp": s.timestamp, "rows": s.rows()} for s in samples],
                    "workers": request_ram_rows(self.recorder)}
            return Response(json.dumps(body), mimetype="application/json")

        @bp.route("/memory/csv")
        @auth
        def memory_csv() -> Response:
            if self.sampler.path is None or not self.sampler.path.is_file():
                return Response("no memory.csv yet\n", status=404, mimetype="text/plain")
            return send_file(self.sampler.path.resolve(), mimetype="text/csv",
                             as_attachment=True, download_name="memory.csv")

        return bp
