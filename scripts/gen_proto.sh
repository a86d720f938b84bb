#!/usr/bin/env bash
# Regenerate the Python code for proto/ into determined_sdk/proto/. CI runs this and
# fails if `git diff` shows a change (the committed code must be fresh).
set -euo pipefail
cd "$(dirname "$0")/.."
out=determined_sdk/proto
find "$out" -name '*_pb2*.py*' -delete
python -m grpc_tools.protoc -Iproto \
  --python_out=. --grpc_python_out=. \
  --mypy_out=. --mypy_grpc_out=. \
  proto/determined_sdk/proto/*.proto
touch "$out/__init__.py"
