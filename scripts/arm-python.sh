#!/usr/bin/env bash
# Runs the aarch64 python of a root built by scripts/arm-env.sh under QEMU user mode,
# with the project and its aarch64 wheels importable.
#
#   scripts/arm-python.sh [--release bookworm|trixie] [--cpu a72|a76|a53] [PYTHON ARGS...]
#
#   --cpu a72  Raspberry Pi 4 (Cortex-A72, the default)
#         a76  Raspberry Pi 5 (Cortex-A76: dot-product int8 kernels)
#         a53  Raspberry Pi Zero 2 W (Cortex-A53)
# Defaults come from ARM_RELEASE (bookworm), ARM_CPU (a72) and ARM_PROFILE (wheels).
# Exits 3 when the root is not built or QEMU is missing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARM_CACHE="${ARM_CACHE:-$REPO/.cache/arm}"
release="${ARM_RELEASE:-bookworm}"
cpu="${ARM_CPU:-a72}"
profile="${ARM_PROFILE:-wheels}"

while [ $# -gt 0 ]; do
  case "$1" in
    --release) release=$2 && shift 2 ;;
    --cpu) cpu=$2 && shift 2 ;;
    *) break ;;
  esac
done

case "$cpu" in
  a72) qemu_cpu=cortex-a72 ;;
  a76) qemu_cpu=cortex-a76 ;;
  a53) qemu_cpu=cortex-a53 ;;
  *)
    echo "arm-python: error: unknown cpu '$cpu' (choose a72, a76 or a53)" >&2
    exit 2
    ;;
esac

view="$ARM_CACHE/views/$release-$profile-$cpu"
if ! command -v "${QEMU_AARCH64:-qemu-aarch64-static}" >/dev/null; then
  echo "arm-python: error: qemu-aarch64-static missing (apt-get install qemu-user-static)" >&2
  exit 3
fi
if [ ! -x "$view/usr/bin/python3-qemu" ] || [ ! -f "$view/proc/cpuinfo" ]; then
  echo "arm-python: error: no $release ($profile) aarch64 root; build it with:" \
    "scripts/arm-env.sh $release" >&2
  exit 3
fi

export QEMU_LD_PREFIX="$view" QEMU_CPU="$qemu_cpu"
export PYTHONPATH="$REPO:$view/opt/edge-app/site-packages${PYTHONPATH:+:$PYTHONPATH}"
# The host's venv must not leak into the emulated interpreter.
unset VIRTUAL_ENV PYTHONHOME
exec "$view/usr/bin/python3-qemu" "$@"
