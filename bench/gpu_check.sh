#!/usr/bin/env bash
# The prepared GPU check (bench/gpu_check.py): on a CUDA machine, from the repository root after
# `bash scripts/setup.sh`:   bash bench/gpu_check.sh            (JSON: bench/results/gpu_check.json)
# On a CPU (CI):             bash bench/gpu_check.sh --dry-run  (tiny sizes, gloo; checks the script)
# Installs nothing. Python: $SPGPT_PYTHON, else the project's .venv, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${SPGPT_PYTHON:-}" ]; then
  PY="$SPGPT_PYTHON"
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python3
fi
exec "$PY" bench/gpu_check.py "$@"
