#!/usr/bin/env bash
# Regenerate constraints.txt, the lock of every package version CI installs, by a fresh resolve of
# pyproject.toml in a throw-away virtual environment (nothing from .venv leaks in). Run it to
# upgrade dependencies deliberately, then run the tests (bash scripts/test.sh installs from the new
# lock) and commit pyproject.toml and constraints.txt together.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh
PY=$(pick_python)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
echo "[lock] resolving pyproject.toml afresh in $TMP/venv"
"$PY" -m venv "$TMP/venv"
"$TMP/venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build
"$TMP/venv/bin/python" -m pip install -q "torch==2.13.0"
"$TMP/venv/bin/python" -m pip install -q -e ".[all]"
"$TMP/venv/bin/python" -m pip check
"$TMP/venv/bin/python" -m pip freeze --all --exclude-editable > "$TMP/freeze.txt"
"$TMP/venv/bin/python" scripts/lock.py write "$TMP/freeze.txt"
git --no-pager diff --stat -- constraints.txt || true
