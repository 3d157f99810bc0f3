#!/usr/bin/env bash
# Debian packages for headless Qt / napari tests (Xvfb + xcb + Mesa llvmpipe). Needs root; skips
# when Xvfb is already installed. See ../shared/reference/environment-notes.md section 3.
set -euo pipefail
if command -v Xvfb >/dev/null 2>&1 && ldconfig -p | grep -q libxcb-icccm.so.4; then
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "[system-deps] Xvfb / xcb libraries missing and not root: GUI tests will be skipped." >&2
  echo "              install: sudo apt-get install xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0" >&2
  exit 0
fi
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --no-upgrade \
  xvfb xauth libgl1 libegl1 libglx-mesa0 libegl-mesa0 libgl1-mesa-dri libglib2.0-0 libfontconfig1 \
  libfreetype6 libdbus-1-3 libx11-xcb1 libxkbcommon0 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 \
  libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-shm0 \
  libxcb-sync1 libxcb-xfixes0 libxcb-xkb1 libxcb-glx0
