#!/usr/bin/env bash
# One command for the whole test suite on a fresh machine: system packages (Xvfb, when root),
# the virtual environment, then pytest. Extra arguments go to pytest (e.g. -k embed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/setup.sh
export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-xcb}"   # pytest-xvfb starts Xvfb; offscreen cannot draw images
export MPLBACKEND=Agg
exec .venv/bin/python -m pytest -q "$@"
