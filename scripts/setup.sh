#!/usr/bin/env bash
# Create/refresh the project's virtual environment (.venv) with exactly the versions in
# constraints.txt, the lock of what CI tested. Idempotent: a no-op unless pyproject.toml or the lock
# changed, in which case the environment is rebuilt from scratch (so nothing unlocked lingers).
# torch is installed first and pinned (torch==2.13.0): an unpinned torch would pull a multi-GB CUDA
# build on CPU machines. To upgrade dependencies deliberately: bash scripts/lock.sh (README).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh
VENV="${SPGPT_VENV:-.venv}"
LOCK=constraints.txt
STAMP="$VENV/.spgpt-installed"
PY=$(pick_python)
# before anything is touched: the lock exists, was not edited by hand and fits pyproject.toml
"$PY" scripts/lock.py check
WANT=$(cat pyproject.toml "$LOCK" | sha256sum | cut -c1-16)

if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "[setup] pyproject.toml or $LOCK changed since $VENV was built (or its install was interrupted): rebuilding it"
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ] && "$VENV/bin/python" -c "import spgpt_core, napari_spgpt" 2>/dev/null; then
  echo "[setup] $VENV is up to date"
  exit 0
fi
PIP=("$VENV/bin/python" -m pip install -q -c "$LOCK")
"${PIP[@]}" pip setuptools wheel
echo "[setup] installing torch==2.13.0 (CPU) first"
"${PIP[@]}" "torch==2.13.0"
echo "[setup] installing spgpt with napari, spatialdata, tangram and test extras, at the locked versions"
# no build isolation: the build uses the locked setuptools instead of whatever the registry serves today
"${PIP[@]}" --no-build-isolation -e ".[all]"
"$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
"$VENV/bin/python" scripts/lock.py check --installed
echo "$WANT" > "$STAMP"
echo "[setup] done"
