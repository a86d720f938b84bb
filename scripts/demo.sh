#!/usr/bin/env bash
# README command 1: set up, then run the end-to-end demo (a master on SQLite in a temporary
# directory, a real random search of a PyTorch MLP on scikit-learn's digits).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
. .venv/bin/activate
exec python examples/demo.py "$@"
