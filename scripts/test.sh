#!/usr/bin/env bash
# Set everything up (scripts/setup.sh), then run the whole test suite: lint, types, unit,
# property and integration tests (the integration tests need root and /dev/fuse).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
"$REPO/scripts/setup.sh"
cd "$REPO"
VENV=${DMFUSE_VENV:-$REPO/.venv}
"$VENV/bin/ruff" check dmfuse tests bench
"$VENV/bin/ruff" format --check dmfuse
"$VENV/bin/mypy" dmfuse
exec "$VENV/bin/python" -m pytest -ra "$@"
