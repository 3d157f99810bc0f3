#!/usr/bin/env bash
# The main job on a fresh machine: install, then run spgpt end to end on a generated sample slide
# with the shipped default model. Results go to ./spgpt_demo (or the folder given as $1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT="${1:-spgpt_demo}"
# Re-running replaces an earlier demo's outputs, but never writes into some other non-empty folder.
OVERWRITE=()
if [ -f "$OUT/summary.txt" ] && [ -f "$OUT/sample_slide.h5ad" ]; then OVERWRITE=(--overwrite); fi
exec .venv/bin/spgpt demo --out "$OUT" "${OVERWRITE[@]}"
