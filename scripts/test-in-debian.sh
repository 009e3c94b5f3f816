#!/usr/bin/env bash
# Run the test suite on another Debian release, in a debootstrap'd tree of it, from this machine.
# Run as root:  scripts/test-in-debian.sh trixie|bookworm [pytest arguments]
#   trixie   = Debian 13: pgBackRest 2.55, PostgreSQL 17, Python 3.13
#   bookworm = Debian 12: pgBackRest 2.45, PostgreSQL 15, Python 3.11
#
# The tree is built once (about a minute) and kept in /var/tmp/rewind-debian/<release>. This work
# tree is copied in (tracked and untracked files, not .venv), so what runs is exactly this code, and
# scripts/test.sh runs inside it as on a real machine of that release: install.sh, then pytest.
# The chroot shares this machine's network namespace, so everything still talks over 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "test-in-debian.sh: run as root: it builds and enters a chroot" >&2
  exit 2
fi
RELEASE=${1:-}
case "$RELEASE" in
  trixie|bookworm) shift ;;
  *) echo "test-in-debian.sh: name the release first: trixie (Debian 13) or bookworm (Debian 12)" >&2; exit 2 ;;
esac

ROOT=${REWIND_DEBIAN_ROOT:-/var/tmp/rewind-debian/$RELEASE}
MIRROR=${REWIND_DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ ! -x "$ROOT/usr/bin/pgbackrest" ]; then
  command -v debootstrap >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  echo "test-in-debian.sh: debootstrap $RELEASE into $ROOT"
  mkdir -p "$ROOT"
  debootstrap --variant=minbase \
    --include=ca-certificates,python3,python3-venv,postgresql,pgbackrest,stunnel4,util-linux,procps \
    "$RELEASE" "$ROOT" "$MIRROR" >"$ROOT.debootstrap.log" 2>&1 \
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

# A fresh copy of this work tree; the venv inside the tree is kept between runs.
SRC="$ROOT/src/rewind"
mkdir -p "$SRC"
rm -rf "$SRC.new" && mkdir -p "$SRC.new"
git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$SRC.new"
if [ -d "$SRC/.venv" ]; then mv "$SRC/.venv" "$SRC.new/.venv"; fi
rm -rf "$SRC" && mv "$SRC.new" "$SRC"

echo "test-in-debian.sh: Debian $(cat "$ROOT/etc/debian_version"), $(chroot "$ROOT" pgbackrest version)"
chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
  PIP_CERT=/etc/rewind-host-ca.crt ${CI:+CI=$CI} \
  bash -c 'cd /src/rewind && bash scripts/test.sh "$@"' test-in-debian "$@"
