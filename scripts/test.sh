#!/usr/bin/env bash
# Install what the tests need besides the local stack's (scripts/install.sh), then run the whole test suite: unit, DAG integrity, integration against the
# real stack (PostgreSQL + pgBackRest + S3 over TLS), and end-to-end under a real Airflow.
#
# With arguments, they go to one pytest as they are (e.g. `scripts/test.sh tests/unit -k vault`).
# Without, the whole suite runs as two pytest processes side by side: the end-to-end tiers (real
# scheduler, triggerer, API server, Celery, the browser) spend most of their time waiting on those
# components, so beside unit + DAG + integration they cost little of the wall time on two CPUs.
# Each test builds its own stack (own directories, free ports), so the two share nothing but the
# machine. Their output is printed one after the other; the exit is a failure if either failed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
venv=${REWIND_VENV:-.venv}
# Lint and format are part of the suite: a change that breaks either fails like a failing test.
"$venv/bin/ruff" check --quiet .
"$venv/bin/ruff" format --check --quiet .
if [ "$#" -gt 0 ]; then
  exec "$venv/bin/python" -m pytest "$@"
fi

end_to_end_log=$(mktemp /tmp/rewind-test-end-to-end.XXXXXX.log)
echo "scripts/test.sh: the end-to-end tiers run beside these ones; their output follows at the end ($end_to_end_log)"
# `trap - INT`: a background job of a script ignores SIGINT, but a run stopped by its bound (.ci/run
# sends SIGINT) must make this pytest print what it was running and its summary too.
( trap - INT; exec "$venv/bin/python" -m pytest tests/e2e tests/e2e_celery tests/browser ) >"$end_to_end_log" 2>&1 &
end_to_end_pid=$!
trap 'kill -INT "$end_to_end_pid" 2>/dev/null || true' INT TERM

set +e
"$venv/bin/python" -m pytest tests/unit tests/dags tests/integration
first_rc=$?
wait "$end_to_end_pid"
end_to_end_rc=$?
set -e

echo
echo "==== end-to-end tiers (tests/e2e tests/e2e_celery tests/browser) ===="
cat "$end_to_end_log"
echo "==== scripts/test.sh: unit, DAG and integration: exit $first_rc; end-to-end: exit $end_to_end_rc ===="
[ "$first_rc" -eq 0 ] && [ "$end_to_end_rc" -eq 0 ]
