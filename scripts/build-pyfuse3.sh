#!/usr/bin/env bash
# Build pyfuse3 from its pinned sdist with our patches (patches/pyfuse3-3.5.0-*.patch) and
# install it into VENV.  Idempotent: the wheel is cached under .cache/ keyed by the patches'
# hash, and nothing is rebuilt when the installed pyfuse3 already carries them.
# Usage: scripts/build-pyfuse3.sh VENV_DIR
# Needs: libfuse3-dev, pkg-config, gcc, python3 headers (scripts/setup.sh installs them).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${1:?usage: build-pyfuse3.sh VENV_DIR}
PIP=("$VENV/bin/python" -m pip)
CACHE=${DMFUSE_CACHE:-$REPO/.cache}
VERSION=3.5.0
SDIST_SHA256=88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24
PATCHES=("$REPO"/patches/pyfuse3-$VERSION-*.patch)

command -v pkg-config >/dev/null && pkg-config --exists fuse3 \
  || { echo "build-pyfuse3: libfuse3-dev and pkg-config are needed (apt-get install libfuse3-dev pkg-config)" >&2; exit 1; }

patch_hash=$(cat "${PATCHES[@]}" | sha256sum | cut -c1-16)
stamp="$VENV/.pyfuse3-patched-$patch_hash"
if [ -e "$stamp" ] && "$VENV/bin/python" -c "import pyfuse3" 2>/dev/null; then
  exit 0
fi

mkdir -p "$CACHE/pyfuse3"
wheel_dir="$CACHE/pyfuse3/wheel-$patch_hash"
if ! ls "$wheel_dir"/pyfuse3-$VERSION-*.whl >/dev/null 2>&1; then
  sdist="$CACHE/pyfuse3/pyfuse3-$VERSION.tar.gz"
  if [ ! -e "$sdist" ]; then
    "${PIP[@]}" download -q --no-deps --no-binary :all: -d "$CACHE/pyfuse3" "pyfuse3==$VERSION" 2>&1 \
      | grep -v '^WARNING: Location' || true
  fi
  echo "$SDIST_SHA256  $sdist" | sha256sum -c --quiet - \
    || { echo "build-pyfuse3: $sdist does not have the expected sha256" >&2; exit 1; }
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  tar xzf "$sdist" -C "$work"
  src="$work/pyfuse3-$VERSION"
  for p in "${PATCHES[@]}"; do
    patch -s -p1 -d "$src" < "$p"
  done
  rm -f "$src/src/pyfuse3/__init__.c"  # generated from the .pyx: make Cython regenerate it
  echo "build-pyfuse3: building patched pyfuse3 $VERSION (Cython, ~30 s)"
  "${PIP[@]}" wheel -q --no-deps -w "$wheel_dir.tmp" "$src" 2>&1 | grep -v '^WARNING: Location' || true
  mv "$wheel_dir.tmp" "$wheel_dir"
fi
"${PIP[@]}" install -q --force-reinstall --no-deps "$wheel_dir"/pyfuse3-$VERSION-*.whl 2>&1 \
  | grep -v '^WARNING: Location' || true
"${PIP[@]}" install -q 'trio>=0.25' 2>&1 | grep -v '^WARNING: Location' || true
rm -f "$VENV"/.pyfuse3-patched-*
touch "$stamp"
