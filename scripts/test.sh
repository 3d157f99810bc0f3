#!/usr/bin/env bash
# One command for the whole test suite on a fresh machine: system packages (Xvfb, when root),
# the virtual environment, then pytest. Extra arguments go to a single pytest run (e.g. -k embed).
#
# Without arguments the core tests and the napari GUI tests run in two pytest processes: with
# Python 3.11 (where None is still reference-counted), loading Qt/napari into the process that
# also ran the numba/scanpy-heavy core tests ended in "Fatal Python error: none_dealloc" at
# interpreter shutdown, after every test had passed. Separate processes keep the core tests
# free of Qt (as the core is) and the exit status honest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/setup.sh
export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-xcb}"   # pytest-xvfb starts Xvfb; offscreen cannot draw images
export MPLBACKEND=Agg
PY=.venv/bin/python
if [ "$#" -gt 0 ]; then
    exec "$PY" -m pytest -q "$@"
fi
core=0; gui=0
echo "== core tests (no Qt) =="
"$PY" -m pytest -q --ignore=tests/gui tests || core=$?
echo "== napari plugin tests (Xvfb) =="
"$PY" -m pytest -q tests/gui || gui=$?
echo "== summary: core tests exit $core, GUI tests exit $gui =="
[ "$core" -eq 0 ] && [ "$gui" -eq 0 ]
