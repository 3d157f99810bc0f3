#!/usr/bin/env bash
# Create/refresh the project's virtual environment (.venv) with everything spgpt needs.
# Idempotent: re-running is a no-op unless pyproject.toml changed. torch is installed first and
# pinned (torch==2.13.0): an unpinned torch would pull a multi-GB CUDA build on CPU machines.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SPGPT_VENV:-.venv}"

pick_python() {
  for p in python3.11 python3 python; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      echo "$p"; return 0
    fi
  done
  echo "spgpt needs Python 3.11 (torch 2.13 CPU wheel, spatialdata 0.7, scanpy 1.11); none found on PATH" >&2
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  PY=$(pick_python)
  echo "[setup] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.spgpt-installed"
WANT=$(sha256sum pyproject.toml | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$VENV/bin/python" -c "import spgpt_core, napari_spgpt" 2>/dev/null; then
  echo "[setup] $VENV is up to date"
  exit 0
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
echo "[setup] installing torch==2.13.0 (CPU) first"
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
echo "[setup] installing spgpt with napari, spatialdata, tangram and test extras"
"$VENV/bin/python" -m pip install -q -e ".[all]"
"$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
echo "$WANT" > "$STAMP"
echo "[setup] done"
