#!/usr/bin/env bash
# Install what the tests need besides the local stack's (scripts/install.sh), then run the whole test suite: unit, DAG integrity, integration against the
# real stack (PostgreSQL + pgBackRest + S3 over TLS), and end-to-end under a real Airflow.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
venv=${REWIND_VENV:-.venv}
# Lint and format are part of the suite: a change that breaks either fails like a failing test.
"$venv/bin/ruff" check --quiet .
"$venv/bin/ruff" format --check --quiet .
exec "$venv/bin/python" -m pytest "$@"
