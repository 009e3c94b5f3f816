#!/usr/bin/env bash
# Install everything Rewind needs on a Debian 12/13 machine; idempotent. Run as root.
#   apt: PostgreSQL (15 where available), pgBackRest, stunnel4 (TLS in front of the S3 simulator), chromium (browser tests)
#   venv: .venv with the pinned requirements and this repo installed editable
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
command -v chromium >/dev/null || packages+=(chromium)  # the browser tests (playwright drives Debian's chromium)
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
stamp="$VENV/.rewind-requirements.sha256"
want=$(cat requirements.txt requirements-dev.txt pyproject.toml devstack/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # (grep drops pip's warnings about local index mirrors some build machines configure)
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements-dev.txt 2> >(grep -v "is ignored: it is neither" >&2)
  # the product, and (separately, never in the product's image) the development stack
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e . -e ./devstack 2> >(grep -v "is ignored: it is neither" >&2)
  echo "$want" > "$stamp"
fi
echo "install.sh: $(pgbackrest version), $("$VENV/bin/airflow" version 2>/dev/null | tail -1 | sed 's/^/Airflow /'), $(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' ')"
