"""Turn a load-test run folder into charts and a findings report; compare runs.

``python -m analysis RUN_DIR`` writes ``charts/*.png``, ``report.md`` and ``report.html``;
``python -m analysis compare RUN RUN ...`` writes ``comparison.md``. Modules:
readers/run (files -> frames), traffic/memory/sweep/locust_stats (metrics), findings,
rules/rules_traffic/rules_memory (recommendations), report/compare/html_page (rendering),
charts_traffic/charts_memory (plot_* functions), figures (saving), cli.
"""
