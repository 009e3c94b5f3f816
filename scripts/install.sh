#!/usr/bin/env bash
# Install everything Rewind needs on a Debian 12/13 machine; idempotent. Run as root.
#   apt: PostgreSQL (15 where available), pgBackRest, stunnel4 (TLS in front of the S3 simulator),
#        chromium (the browser tests drive Debian's chromium with playwright; playwright's own download is not used),
#        and for the production-shape e2e (tests/e2e_celery) and the compose check: redis-server
#        (the Celery broker), iproute2 (a network namespace per database host), docker-compose
#        (validates docker-compose.yaml offline)
#   venv: .venv with the pinned requirements and this repo installed editable, and .venv/checkov
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root: it installs Debian packages" >&2
  exit 2
fi

packages=()
command -v pgbackrest >/dev/null || packages+=(pgbackrest)
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || packages+=(stunnel4)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || packages+=(postgresql)
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
command -v runuser >/dev/null || packages+=(util-linux)
command -v chromium >/dev/null || packages+=(chromium)
command -v redis-server >/dev/null || packages+=(redis-server)
command -v ip >/dev/null || packages+=(iproute2)
command -v docker-compose >/dev/null || [ -x /usr/libexec/docker/cli-plugins/docker-compose ] || packages+=(docker-compose)
if [ ${#packages[@]} -gt 0 ]; then
  echo "install.sh: apt-get install ${packages[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi
# Debian's postgresql package starts a default cluster we do not use; leave it alone.

VENV=${REWIND_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# checkov scans terraform/ (tests/unit/test_terraform.py) from a venv of its own inside this one:
# its pins (boto3, packaging, networkx, and an `hcl2` module of its own) conflict with the runtime's
# (see terraform/requirements-checkov.txt). Inside $VENV it is ignored by git and ruff like $VENV.
# Its ~100 packages install in the background while the main venv installs, not after it.
CHECKOV_VENV="$VENV/checkov"
checkov_stamp="$CHECKOV_VENV/.rewind-requirements.sha256"
checkov_want=$(sha256sum < terraform/requirements-checkov.txt | cut -d' ' -f1)
checkov_pid=""
if [ ! -f "$checkov_stamp" ] || [ "$(cat "$checkov_stamp")" != "$checkov_want" ]; then
  (
    [ -x "$CHECKOV_VENV/bin/python" ] || python3 -m venv "$CHECKOV_VENV"
    "$CHECKOV_VENV/bin/pip" install -q --disable-pip-version-check -r terraform/requirements-checkov.txt 2> >(grep -v "is ignored: it is neither" >&2)
    echo "$checkov_want" > "$checkov_stamp"
  ) &
  checkov_pid=$!
  # whatever happens below, leave no pip running behind this script
  trap 'if [ -n "$checkov_pid" ]; then wait "$checkov_pid" 2>/dev/null || true; fi' EXIT
fi
stamp="$VENV/.rewind-requirements.sha256"
want=$(cat requirements.txt requirements-dev.txt pyproject.toml devstack/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # (grep drops pip's warnings about local index mirrors some build machines configure)
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements-dev.txt 2> >(grep -v "is ignored: it is neither" >&2)
  # the product, and (separately, never in the product's image) the development stack
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e . -e ./devstack 2> >(grep -v "is ignored: it is neither" >&2)
  echo "$want" > "$stamp"
fi
if [ -n "$checkov_pid" ]; then
  checkov_rc=0
  wait "$checkov_pid" || checkov_rc=$?
  checkov_pid=""
  if [ "$checkov_rc" -ne 0 ]; then
    echo "install.sh: installing checkov into $CHECKOV_VENV failed (terraform/requirements-checkov.txt)" >&2
    exit 1
  fi
fi
echo "install.sh: $(pgbackrest version), $("$VENV/bin/airflow" version 2>/dev/null | tail -1 | sed 's/^/Airflow /'), $(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' ')"
