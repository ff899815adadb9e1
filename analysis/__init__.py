"""Turn a load-test run folder into charts and a findings report; compare runs.

``python -m analysis RUN_DIR`` writes ``charts/*.png``, ``report.md`` and ``report.html``;
``python -m analysis compare RUN RUN ...`` writes ``comparison.md``. Modules, in the order
data flows: readers/run (files -> frames), traffic/memory/sweep/streaming/goodput/locust_stats
(metrics), records (the Findings data), rules_* and rules (recommendations), findings
(builds the records), report/report_streaming/report_methods (a Document), document and
tables (Markdown), report_html (the HTML page, from templates/), compare, chart_style and
charts_* (plot_* functions), figures (saving), cli.
"""
