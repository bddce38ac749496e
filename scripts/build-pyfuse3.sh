#!/usr/bin/env bash
# Build pyfuse3 from its pinned sdist with our numbered patch series
# (patches/pyfuse3-3.5.0-NNNN-*.patch, applied in order) and install it into VENV.
# Idempotent: the wheel is cached under ${DMFUSE_CACHE:-.cache}/pyfuse3/ keyed by the patches'
# sha256 and the Python ABI, and nothing is done when VENV already has pyfuse3 built from
# exactly these patches.
# Usage: scripts/build-pyfuse3.sh VENV_DIR
# Needs: fuse3, libfuse3-dev, pkg-config, gcc and Python headers (scripts/setup.sh installs
# them); PyPI for the sdist and for the build's own requirements (Cython, setuptools>=78.1.1,
# setuptools_scm), which pip installs into an isolated build environment.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${1:?usage: build-pyfuse3.sh VENV_DIR}
PY="$VENV/bin/python"
CACHE=${DMFUSE_CACHE:-$REPO/.cache}
VERSION=3.5.0
SDIST_SHA256=88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24
# What the patch series adds (0001: fallocate/lseek, 0003: write flags), checked after install.
PATCH_CHECK="import pyfuse3; O = pyfuse3.Operations
assert hasattr(O, 'fallocate') and hasattr(O, 'lseek') and hasattr(O, 'enable_write_flags')"

die() { echo "build-pyfuse3: $*" >&2; exit 1; }

# pip, without the noise about missing --find-links locations; its status is kept.
pip_q() {
  local out rc=0
  out=$("$PY" -m pip "$@" 2>&1) || rc=$?
  [ -z "$out" ] || grep -v '^WARNING: Location' <<<"$out" >&2 || true
  return "$rc"
}

[ -x "$PY" ] || die "$VENV is not a virtualenv (no $PY)"
command -v pkg-config >/dev/null \
  || die "pkg-config is missing: apt-get install pkg-config libfuse3-dev"
pkg-config --exists fuse3 \
  || die "libfuse3 development files are missing (pkg-config fuse3): apt-get install libfuse3-dev"
command -v patch >/dev/null || die "patch is missing: apt-get install patch"

shopt -s nullglob
# Numbered patches, applied in order (0001-..., 0002-...).
PATCHES=("$REPO"/patches/pyfuse3-$VERSION-[0-9][0-9][0-9][0-9]-*.patch)
shopt -u nullglob
((${#PATCHES[@]})) || die "no patches/pyfuse3-$VERSION-NNNN-*.patch found"

abi=$("$PY" -c 'import sys; print(sys.implementation.cache_tag)')  # e.g. cpython-311
patch_hash=$(cat "${PATCHES[@]}" | sha256sum | cut -c1-16)
stamp="$VENV/.pyfuse3-patched-$patch_hash"
if [ -e "$stamp" ] \
    && "$PY" -c "$PATCH_CHECK" 2>/dev/null; then
  exit 0
fi

mkdir -p "$CACHE/pyfuse3"
wheel_dir="$CACHE/pyfuse3/wheel-$patch_hash-$abi"
wheels=("$wheel_dir"/pyfuse3-$VERSION-*.whl)
if [ ! -e "${wheels[0]}" ]; then
  sdist="$CACHE/pyfuse3/pyfuse3-$VERSION.tar.gz"
  if [ ! -e "$sdist" ]; then
    pip_q download -q --no-deps --no-binary :all: -d "$CACHE/pyfuse3" "pyfuse3==$VERSION" \
      || die "could not download the pyfuse3 $VERSION sdist"
  fi
  echo "$SDIST_SHA256  $sdist" | sha256sum -c --quiet - \
    || die "$sdist does not have the expected sha256 $SDIST_SHA256"

  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  tar xzf "$sdist" -C "$work"
  src="$work/pyfuse3-$VERSION"
  for p in "${PATCHES[@]}"; do
    patch -s -p1 --forward -d "$src" < "$p" || die "$(basename "$p") does not apply"
  done
  # The sdist ships the C file Cython generated from the unpatched sources: remove it so the
  # build backend (util/build_backend.py, which lists __init__.pyx) has Cython regenerate it.
  rm -f "$src/src/pyfuse3/__init__.c"
  echo "build-pyfuse3: building patched pyfuse3 $VERSION (Cython + gcc, about a minute)" >&2
  rm -rf "$wheel_dir.tmp"
  pip_q wheel -q --no-deps -w "$wheel_dir.tmp" "$src" \
    || die "building the pyfuse3 wheel failed (is gcc installed? python3-dev?)"
  tmp_wheels=("$wheel_dir.tmp"/pyfuse3-$VERSION-*.whl)
  [ -e "${tmp_wheels[0]}" ] || die "the build produced no pyfuse3 wheel"
  rm -rf "$wheel_dir"
  mv "$wheel_dir.tmp" "$wheel_dir"
  wheels=("$wheel_dir"/pyfuse3-$VERSION-*.whl)
fi

pip_q install -q --force-reinstall --no-deps "${wheels[0]}" \
  || die "installing ${wheels[0]} into $VENV failed"
pip_q install -q 'trio>=0.25' || die "installing trio (pyfuse3's dependency) failed"
"$PY" -c "$PATCH_CHECK" \
  || die "pyfuse3 in $VENV does not import or lacks the patch"
rm -f "$VENV"/.pyfuse3-patched-*
touch "$stamp"
echo "build-pyfuse3: installed patched pyfuse3 $VERSION into $VENV" >&2
