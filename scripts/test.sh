#!/usr/bin/env bash
# Install everything, then run the whole test suite: unit, DAG integrity, integration against the
# real stack (PostgreSQL + pgBackRest + S3 over TLS), and end-to-end under a real Airflow.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${REWIND_VENV:-.venv}/bin/python" -m pytest "$@"
