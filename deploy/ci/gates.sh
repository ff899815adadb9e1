#!/usr/bin/env bash
# CI: the SLO gate on RUN_DIR, then the regression gate against BASELINE when it exists.
#
#   bash deploy/ci/gates.sh RUN_DIR [BASELINE]
#
# Writes RUN_DIR/report.md, slo-junit.xml, slo-summary.md and, with a baseline,
# RUN_DIR/compare/ (comparison.md, regression-junit.xml, regression-summary.md). Appends
# the summaries to $GITHUB_STEP_SUMMARY when GitHub Actions sets it. Exit code 1 when a
# gate failed, after both ran. SLO_FILE (deploy/ci/slo.toml) holds targets and bands.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
RUN_DIR=$1 BASELINE=${2:-}
SLO_FILE=${SLO_FILE:-deploy/ci/slo.toml}

status=0
"$PY" -m analysis "$RUN_DIR" --gate --slo-file "$SLO_FILE" || status=1
summaries=("$RUN_DIR/slo-summary.md")
if [ -n "$BASELINE" ] && [ -f "$BASELINE/run.json" ]; then
  "$PY" -m analysis compare "$BASELINE" "$RUN_DIR" --gate --slo-file "$SLO_FILE" \
    --out "$RUN_DIR/compare" || status=1
  summaries+=("$RUN_DIR/compare/regression-summary.md")
else
  echo "no baseline run folder at '${BASELINE}': regression gate skipped"
fi
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
  cat "${summaries[@]}" >> "$GITHUB_STEP_SUMMARY"
fi
exit "$status"
