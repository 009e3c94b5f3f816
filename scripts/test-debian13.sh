#!/usr/bin/env bash
# Run the test suite on Debian 13 (trixie: pgBackRest 2.55, PostgreSQL 17, Python 3.13) from a
# Debian 12 machine, in a debootstrap'd trixie tree. Run as root. Arguments go to pytest.
#
# The tree is built once (about a minute) and kept in $REWIND_DEBIAN13_ROOT. The current checkout is
# copied in (tracked and untracked files, not .venv), so what runs is exactly this work tree, and
# scripts/test.sh runs inside it as on a real Debian 13 machine: install.sh, then pytest.
# The chroot shares this machine's network namespace, so everything still talks over 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "test-debian13.sh: run as root (sudo $0): it builds and enters a chroot" >&2
  exit 2
fi

ROOT=${REWIND_DEBIAN13_ROOT:-/var/tmp/rewind-debian13/root}
MIRROR=${REWIND_DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ ! -x "$ROOT/usr/bin/pgbackrest" ]; then
  command -v debootstrap >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  echo "test-debian13.sh: debootstrap trixie into $ROOT"
  mkdir -p "$ROOT"
  debootstrap --variant=minbase \
    --include=ca-certificates,python3,python3-venv,postgresql,pgbackrest,stunnel4,util-linux,procps \
    trixie "$ROOT" "$MIRROR" >"$ROOT.debootstrap.log" 2>&1 \
    || { tail -20 "$ROOT.debootstrap.log" >&2; exit 1; }
fi
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# The chroot trusts what this machine trusts (some networks put their own CA in front of PyPI).
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/rewind-host-ca.crt"

mounts=()
cleanup() {
  for ((i=${#mounts[@]}-1; i>=0; i--)); do umount -l "${mounts[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
for m in proc sys dev dev/pts dev/shm; do
  mkdir -p "$ROOT/$m"
  mount --bind "/$m" "$ROOT/$m"
  mounts+=("$ROOT/$m")
done

# A fresh copy of this work tree; the venv inside the tree is kept between runs (Python 3.13 wheels).
SRC="$ROOT/src/rewind"
mkdir -p "$SRC"
rm -rf "$SRC.new" && mkdir -p "$SRC.new"
git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$SRC.new"
if [ -d "$SRC/.venv" ]; then mv "$SRC/.venv" "$SRC.new/.venv"; fi
rm -rf "$SRC" && mv "$SRC.new" "$SRC"

echo "test-debian13.sh: Debian $(cat "$ROOT/etc/debian_version"), $(chroot "$ROOT" pgbackrest version)"
set +e
chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 PIP_CERT=/etc/rewind-host-ca.crt \
  ${CI:+CI=$CI} bash -c 'cd /src/rewind && bash scripts/test.sh "$@"' test-debian13 "$@"
rc=$?
set -e
exit $rc
