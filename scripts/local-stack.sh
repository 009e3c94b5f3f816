#!/usr/bin/env bash
# Install what the local stack needs (scripts/install.sh --stack), then bring it up (demo PostgreSQL + S3 over TLS + Airflow on
# http://127.0.0.1:8080). `scripts/local-stack.sh up --sso`: people sign in through the OIDC simulator.
# `scripts/local-stack.sh down` stops it, `status` shows it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --stack
[ $# -gt 0 ] || set -- up
exec "${REWIND_VENV:-.venv}/bin/python" -m devstack.local "$@"
