#!/usr/bin/env bash
# README command 2: set up, then run every test (PostgreSQL ones too when it is reachable).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
. .venv/bin/activate
exec python -m pytest -q -p no:cacheprovider "$@"
