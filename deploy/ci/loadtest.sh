#!/usr/bin/env bash
# CI: load the server headless for a bounded time, then apply the gates (deploy/ci/gates.sh).
#
# Serves synthetic:$PRESET locally with scripts/loadtest.py (Gunicorn, 2 workers, loopback),
# or, with TARGET_URL set, loads that deployed server with plain Locust (its key in
# LOCUST_API_KEY, its operator key in LOCUST_OPERATOR_KEY: run.json's server facts come from
# its /ready details and /metrics, which only the operator key opens). Either way the suite writes a complete run folder to $RUN_DIR (run.json
# with the client's and the server's facts), which the job uploads as its artefact.
#
# Environment (all optional): PRESET (tiny), USERS (4), DURATION (60, seconds of load),
# RUN_DIR (results/ci), BASELINE (results/ci-baseline: a run folder to gate against; the
# regression gate is skipped while there is none), SLO_FILE (deploy/ci/slo.toml),
# TARGET_URL, LOCUST_API_KEY, LOCUST_OPERATOR_KEY, PYTHON (.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
PRESET=${PRESET:-tiny} USERS=${USERS:-4} DURATION=${DURATION:-60}
RUN_DIR=${RUN_DIR:-results/ci}
rm -rf "$RUN_DIR" && mkdir -p "$RUN_DIR"

code=0
if [ -n "${TARGET_URL:-}" ]; then
  "$PY" -m locust -f locustfiles --headless --host "$TARGET_URL" -u "$USERS" -r "$USERS" \
    -t "${DURATION}s" --stop-timeout 60 --label ci --run-dir "$RUN_DIR" \
    --csv "$RUN_DIR/locust" --csv-full-history --html "$RUN_DIR/locust_report.html" || code=$?
else
  "$PY" scripts/loadtest.py --model "synthetic:$PRESET" --workers 2 --users "$USERS" \
    --spawn-rate "$USERS" --duration "$DURATION" --stop-timeout 60 --label ci \
    --run-dir "$RUN_DIR" --no-analysis || code=$?
fi
# Locust exits 1 when any request failed (deliberate 429/503 refusals included): the gates
# judge those. Anything else means the run itself broke.
if [ "$code" -gt 1 ]; then
  echo "locust run failed (exit code $code); see $RUN_DIR" >&2
  exit "$code"
fi
exec bash deploy/ci/gates.sh "$RUN_DIR" "${BASELINE:-results/ci-baseline}"
