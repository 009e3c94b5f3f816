#!/usr/bin/env bash
# Install what Rewind needs on a Debian 12/13 machine; idempotent. Run as root.
#
#   scripts/install.sh --stack   what the local stack needs (scripts/local-stack.sh):
#     apt: PostgreSQL (15 where available), pgBackRest, stunnel4 (TLS in front of the S3 simulator)
#     venv: .venv with requirements-stack.txt (the runtime and the simulators) and this repo
#   scripts/install.sh           that, and what the tests need (scripts/test.sh, .ci/run):
#     apt: chromium (the browser tests drive Debian's chromium with playwright; playwright's own
#          download is not used), redis-server (the Celery broker of tests/e2e_celery), iproute2 (a
#          network namespace per database host), docker-compose (validates docker-compose.yaml offline)
#     venv: requirements-dev.txt (test tools), and .venv/checkov (the scanner of terraform/)
#
# Python packages install with uv (pinned in requirements-install.txt; measured faster than pip,
# README "Setup"); the requirements files stay the single source of the pins. Every step prints one
# line as it starts and the total at the end; a second run on a machine that has everything says so.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=tests
if [ "${1:-}" = "--stack" ]; then mode=stack; fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root: it installs Debian packages" >&2
  exit 2
fi

started=$(date +%s)
step() { echo "install.sh: $*"; }
did_something=no

packages=()
command -v pgbackrest >/dev/null || packages+=(pgbackrest)
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || packages+=(stunnel4)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || packages+=(postgresql)
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
command -v runuser >/dev/null || packages+=(util-linux)
if [ "$mode" = tests ]; then
  command -v chromium >/dev/null || packages+=(chromium)
  command -v redis-server >/dev/null || packages+=(redis-server)
  command -v ip >/dev/null || packages+=(iproute2)
  command -v docker-compose >/dev/null || [ -x /usr/libexec/docker/cli-plugins/docker-compose ] || packages+=(docker-compose)
fi
if [ ${#packages[@]} -gt 0 ]; then
  step "apt-get install ${packages[*]} (Debian packages: a minute or more on a fresh machine)"
  apt-get update -qq || { echo "install.sh: apt-get update failed: check this machine's network and /etc/apt/sources.list" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null ||
    { echo "install.sh: apt-get install ${packages[*]} failed: see the lines above" >&2; exit 1; }
  did_something=yes
fi
# Debian's postgresql package starts a default cluster we do not use; leave it alone.

VENV=${REWIND_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV"
  python3 -m venv "$VENV"
  did_something=yes
fi
# uv, pinned, inside the venv: it installs the pinned requirements in parallel from one cache.
uv_want=$(grep -E '^uv==' requirements-install.txt)
if [ "$("$VENV/bin/python" -m uv --version 2>/dev/null | awk '{print "uv==" $2}')" != "$uv_want" ]; then
  step "installing $uv_want into $VENV (the package installer)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements-install.txt 2> >(grep -v "is ignored: it is neither" >&2)
  did_something=yes
fi
# uv reads neither pip's configuration nor PIP_CERT: a machine whose PyPI traffic passes a CA of its
# own names it to pip that way (scripts/test-in-debian.sh does); uv trusts it through SSL_CERT_FILE.
if [ -n "${PIP_CERT:-}" ] && [ -z "${SSL_CERT_FILE:-}" ]; then export SSL_CERT_FILE=$PIP_CERT; fi
uv_install() {  # uv_install VENV ARGS...: uv pip install into that venv, quietly; pip when uv cannot
  local venv=$1
  shift
  "$VENV/bin/python" -m uv pip install --quiet --python "$venv/bin/python" "$@" && return 0
  # e.g. a package index only pip's configuration names: the same pins, installed by pip
  echo "install.sh: uv could not install ($*): installing with pip instead" >&2
  [ -x "$venv/bin/pip" ] || "$venv/bin/python" -m ensurepip --upgrade >/dev/null
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}

# checkov scans terraform/ (tests/unit/test_terraform.py) from a venv of its own inside this one:
# its pins (boto3, packaging, networkx, and an `hcl2` module of its own) conflict with the runtime's
# (see terraform/requirements-checkov.txt). Inside $VENV it is ignored by git and ruff like $VENV.
# It installs in the background while the main venv installs, not after it.
checkov_pid=""
if [ "$mode" = tests ]; then
  CHECKOV_VENV="$VENV/checkov"
  checkov_stamp="$CHECKOV_VENV/.rewind-requirements.sha256"
  checkov_want=$(sha256sum < terraform/requirements-checkov.txt | cut -d' ' -f1)
  if [ ! -f "$checkov_stamp" ] || [ "$(cat "$checkov_stamp")" != "$checkov_want" ]; then
    step "installing checkov into $CHECKOV_VENV in the background (terraform/requirements-checkov.txt)"
    (
      [ -x "$CHECKOV_VENV/bin/python" ] || python3 -m venv --without-pip "$CHECKOV_VENV"
      uv_install "$CHECKOV_VENV" -r terraform/requirements-checkov.txt
      echo "$checkov_want" > "$checkov_stamp"
    ) &
    checkov_pid=$!
    did_something=yes
    # whatever happens below, leave no installer running behind this script
    trap 'if [ -n "$checkov_pid" ]; then wait "$checkov_pid" 2>/dev/null || true; fi' EXIT
  fi
fi

# The stamp names what was installed: the test install holds the stack's too.
requirements=requirements-stack.txt
if [ "$mode" = tests ]; then requirements=requirements-dev.txt; fi
stamp="$VENV/.rewind-requirements.sha256"
hash=$(cat requirements.txt requirements-stack.txt requirements-dev.txt requirements-install.txt pyproject.toml devstack/pyproject.toml | sha256sum | cut -d' ' -f1)
have=$(cat "$stamp" 2>/dev/null || true)
if [ "$have" != "$hash tests" ] && [ "$have" != "$hash $mode" ]; then
  step "installing $requirements and this repo into $VENV (Airflow and its providers: under a minute with a warm cache)"
  uv_install "$VENV" -r "$requirements" ||
    { echo "install.sh: installing $requirements failed: see the lines above (a network problem, or a pin PyPI no longer has)" >&2; exit 1; }
  # the product, and (separately, never in the product's image) the development stack
  uv_install "$VENV" --no-deps -e . -e ./devstack
  echo "$hash $mode" > "$stamp"
  did_something=yes
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
took=$(( $(date +%s) - started ))
if [ "$did_something" = no ]; then
  what="the local stack"
  if [ "$mode" = tests ]; then what="the tests and the local stack"; fi
  step "everything for $what is installed already (${took}s)"
else
  step "done in ${took}s: $(pgbackrest version), $("$VENV/bin/airflow" version 2>/dev/null | tail -1 | sed 's/^/Airflow /'), $(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' ')"
fi
