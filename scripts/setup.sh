#!/usr/bin/env bash
# Set up everything dmfuse needs on a fresh Debian machine, idempotently:
#   - Debian packages (FUSE 3, build tools for pyfuse3, fio, filesystem tools, qemu-storage-daemon)
#   - a virtualenv in .venv with pyfuse3 built from its pinned sdist plus our patch series (patches/)
#   - dmfuse itself (editable) with its test tools
# Usage: scripts/setup.sh        (then use .venv/bin/dmfuse, .venv/bin/pytest)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${DMFUSE_VENV:-$REPO/.venv}
PY=${PYTHON:-python3}

APT_PACKAGES=(fuse3 libfuse3-dev pkg-config gcc python3-dev fio e2fsprogs xfsprogs util-linux patch
              qemu-system-common qemu-utils cryptsetup-bin libdevmapper-dev xz-utils libssl-dev)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip 'setuptools>=78' wheel 2>&1 | grep -v '^WARNING: Location' || true
"$REPO/scripts/build-pyfuse3.sh" "$VENV"
"$VENV/bin/python" -m pip install -q -e "$REPO[dev]" 2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -c "import pyfuse3, dmfuse.openssl.loops; O = pyfuse3.Operations
assert hasattr(O, 'fallocate') and hasattr(O, 'enable_write_flags')" \
  || { echo "setup: pyfuse3 lacks our patches (patches/), or dmfuse.openssl.loops did not build" >&2; exit 1; }
echo "setup: ready ($VENV)"
