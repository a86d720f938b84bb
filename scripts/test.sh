#!/usr/bin/env bash
# README command 2: set up, then run every test (PostgreSQL ones too when it is reachable).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
# Browser tests drive Debian's chromium (never a downloaded browser); without it they skip.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== installing chromium for the browser tests"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
    >/dev/null 2>&1 || echo "chromium could not be installed: the browser tests will skip"
fi
. .venv/bin/activate
exec python -m pytest -q -p no:cacheprovider "$@"
