#!/usr/bin/env bash
# Regenerate the Python code for proto/ into determined_sdk/proto/. CI runs this and
# fails if `git diff` shows a change (the committed code must be fresh).
set -euo pipefail
cd "$(dirname "$0")/.."
out=determined_sdk/proto
# The project's venv, activated or not (protoc finds the mypy plugins on PATH).
[ -x .venv/bin/python ] && PATH="$PWD/.venv/bin:$PATH"
# Check the generators are there before deleting what they would replace.
if ! python -c "import grpc_tools.protoc" 2>/dev/null || ! command -v protoc-gen-mypy >/dev/null; then
  echo "gen_proto: grpcio-tools and mypy-protobuf are needed (bash scripts/setup.sh dev)" >&2
  exit 1
fi
find "$out" -name '*_pb2*.py*' -delete
python -m grpc_tools.protoc -Iproto \
  --python_out=. --grpc_python_out=. \
  --mypy_out=. --mypy_grpc_out=. \
  proto/determined_sdk/proto/*.proto
touch "$out/__init__.py"
