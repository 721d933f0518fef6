#!/usr/bin/env bash
# Fails when the generated code in turnout/v1 is not what proto/turnout/v1/*.proto produces today:
# regenerates it into a temporary directory with scripts/gen-proto.sh and compares the two trees.
# Usage: scripts/check-proto.sh      (environment: PYTHON, default .venv/bin/python when it exists)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then
  PYTHON=.venv/bin/python
fi
PYTHON=${PYTHON:-python3}
# protoc finds its plugins (protoc-gen-mypy, protoc-gen-mypy_grpc) on PATH; they live beside the venv's python.
PATH="$(cd "$(dirname "$PYTHON")" && pwd):$PATH"
export PATH

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if ! PYTHON="$PYTHON" scripts/gen-proto.sh "$tmp/out" > "$tmp/gen.log" 2>&1; then
  cat "$tmp/gen.log" >&2
  echo "check-proto: ERROR: scripts/gen-proto.sh failed (is the venv set up? run scripts/setup.sh)" >&2
  exit 1
fi

if diff -r -u -x __pycache__ "$tmp/out/turnout/v1" turnout/v1 > "$tmp/proto.diff"; then
  echo "check-proto: turnout/v1 is up to date with proto/turnout/v1"
else
  head -n 60 "$tmp/proto.diff" | sed "s|$tmp/out/|generated:|g" >&2
  echo "check-proto: ERROR: turnout/v1 is stale (or was edited by hand): it differs from what" \
    "proto/turnout/v1/*.proto generates. Regenerate with 'make proto' and commit the result." >&2
  exit 1
fi
