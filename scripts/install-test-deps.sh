#!/usr/bin/env bash
# Debian packages the test suite uses as real parts: a MQTT broker, a browser, an X
# server, systemd-analyze and shellcheck. Installs only what is missing; needs root
# (or sudo) and apt. Safe to run again.
set -euo pipefail

declare -A NEED=(
  [mosquitto]=mosquitto
  [chromium]=chromium
  [Xvfb]=xvfb
  [systemd-analyze]=systemd
  [shellcheck]=shellcheck
)
missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
# The OpenCV window (opencv-python's Qt back end) needs these X client libraries.
for lib in libGL.so.1 libxkbcommon-x11.so.0 libxcb-icccm.so.4 libxcb-image.so.0 \
           libxcb-keysyms.so.1 libxcb-randr.so.0 libxcb-render-util.so.0 \
           libxcb-shape.so.0 libxcb-xinerama.so.0 libxcb-xkb.so.1; do
  ldconfig -p | grep -q "$lib" || missing+=("$lib")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
pkgs=()
for item in "${missing[@]}"; do
  case "$item" in
    libGL.so.1) pkgs+=(libgl1) ;;
    libxkbcommon-x11.so.0) pkgs+=(libxkbcommon-x11-0) ;;
    libxcb-icccm.so.4) pkgs+=(libxcb-icccm4) ;;
    libxcb-image.so.0) pkgs+=(libxcb-image0) ;;
    libxcb-keysyms.so.1) pkgs+=(libxcb-keysyms1) ;;
    libxcb-randr.so.0) pkgs+=(libxcb-randr0) ;;
    libxcb-render-util.so.0) pkgs+=(libxcb-render-util0) ;;
    libxcb-shape.so.0) pkgs+=(libxcb-shape0) ;;
    libxcb-xinerama.so.0) pkgs+=(libxcb-xinerama0) ;;
    libxcb-xkb.so.1) pkgs+=(libxcb-xkb1) ;;
    *) pkgs+=("$item") ;;
  esac
done
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
echo "installing test packages: ${pkgs[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
