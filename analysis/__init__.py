"""Turn a load-test run folder into charts and a findings report; compare runs.

``python -m analysis RUN_DIR`` writes ``charts/*.png``, ``report.md`` and ``report.html``;
``python -m analysis compare RUN RUN ...`` writes ``comparison.md``. Modules, in the order
data flows: readers/run (files -> frames), traffic/memory/sweep/streaming/goodput/loadgen/
hardware (metrics), records (the Findings data), rules_traffic/rules_machine and rules (SLO
verdicts, recommendations), findings (builds the records), report/report_sections (a
Document), document (the Document as Markdown and HTML), compare (runs side by side,
regression verdicts), gate (the CI gates), charts/charts_memory (plot_* functions), cli
(the commands; makes and saves the figures), walkthrough (the notebook).
"""
