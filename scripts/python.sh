# Sourced by setup.sh and lock.sh: the Python 3.11 interpreter spgpt is built for.
pick_python() {
  for p in python3.11 python3 python; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      echo "$p"; return 0
    fi
  done
  echo "spgpt needs Python 3.11 (torch 2.13 CPU wheel, spatialdata 0.7, scanpy 1.11); none found on PATH" >&2
  return 1
}
