#!/usr/bin/env bash
# Regenerates the Python code for proto/turnout/v1 into turnout/v1 (messages, gRPC stubs, typing stubs).
# Usage: scripts/gen-proto.sh [OUT_DIR]   (default: the repository root; CI writes elsewhere and diffs)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
out=${1:-.}
mkdir -p "$out"
# google/rpc/status.proto ships with googleapis-common-protos.
rpc_include=$("$PY" -c 'import google.rpc.status_pb2 as m, os; print(os.path.dirname(os.path.dirname(os.path.dirname(m.__file__))))')
"$PY" -m grpc_tools.protoc -I proto -I "$rpc_include" \
  --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" \
  proto/turnout/v1/*.proto
# The generated modules import each other as turnout.v1.*; make both levels packages.
for d in "$out/turnout" "$out/turnout/v1"; do
  [ -f "$d/__init__.py" ] || printf '"""Generated from proto/turnout/v1 by scripts/gen-proto.sh; do not edit."""\n' > "$d/__init__.py"
done
touch "$out/turnout/py.typed"
