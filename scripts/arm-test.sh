#!/usr/bin/env bash
# `make test-arm`: the core tests on a Raspberry Pi's processor, emulated.
#
# Builds (or reuses) the aarch64 Debian roots (scripts/arm-env.sh), then for each
# target RELEASE:CPU runs `pytest -m "core and not slow"` inside the emulated python,
# and from this machine's python the cross-architecture check (tests/test_cross_arch.py:
# aarch64 answers equal x86's).
#
#   ARM_QUICK=1        the CI slice: core tests on bookworm:a72 only, the cross-architecture
#                      check on bookworm:a72 and trixie:a76 (both Pythons, both CPUs)
#   ARM_TARGETS        override the targets, e.g. "bookworm:a72 trixie:a76"
#   ARM_CORE_TARGETS   override only where the core tests run
#   ARM_PYTEST_ARGS    extra pytest arguments for the emulated core run
#
# Exits 0 when every step passed, 1 otherwise (every step runs regardless).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1
HOST_PYTHON="$REPO/.venv/bin/python"
[ -x "$HOST_PYTHON" ] || HOST_PYTHON=python3

if [ "${ARM_QUICK:-0}" = 1 ]; then
  ARM_TARGETS="${ARM_TARGETS:-bookworm:a72 trixie:a76}"
  ARM_CORE_TARGETS="${ARM_CORE_TARGETS:-bookworm:a72}"
else
  ARM_TARGETS="${ARM_TARGETS:-bookworm:a72 bookworm:a76 trixie:a72 trixie:a76}"
  ARM_CORE_TARGETS="${ARM_CORE_TARGETS:-$ARM_TARGETS}"
fi
# Interrupts a classify of the whole 1,000-image sample and resumes it: about 6 minutes
# emulated, and its 60 s deadline to the first 20 kB of output is a native-speed figure.
DESELECT=(--deselect
  tests/test_classify_cli.py::test_ctrl_c_leaves_whole_lines_that_resume_continues)

if ! command -v qemu-aarch64-static >/dev/null; then
  echo "arm-test: installing qemu-user-static" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  if ! $SUDO apt-get update -qq || ! DEBIAN_FRONTEND=noninteractive \
    $SUDO apt-get install -y -qq --no-install-recommends qemu-user-static >/dev/null; then
    echo "arm-test: error: cannot install qemu-user-static" >&2
    exit 1
  fi
fi

releases=$(echo "$ARM_TARGETS $ARM_CORE_TARGETS" | tr ' ' '\n' | cut -s -d: -f1 | sort -u)
start=$SECONDS
# shellcheck disable=SC2086 # one word per release
bash scripts/arm-env.sh $releases || exit 1
summary=()
failed=0
step() { # NAME COMMAND...: run, time and record one step
  local name=$1 began=$SECONDS status
  shift
  echo "=== arm: $name" >&2
  "$@"
  status=$?
  summary+=("$(printf '%-44s %-6s %4d s' "$name" "$([ $status -eq 0 ] && echo ok || echo FAILED)" $((SECONDS - began)))")
  [ $status -eq 0 ] || failed=1
}

# Only files holding core tests: other modules need packages the roots do not carry.
mapfile -t core_files < <(grep -l 'pytest.mark.core' tests/test_*.py)
for target in $ARM_CORE_TARGETS; do
  release=${target%%:*} cpu=${target#*:}
  run=(bash scripts/arm-python.sh --release "$release" --cpu "$cpu")
  step "$target banner" "${run[@]}" scripts/arm_banner.py
  # shellcheck disable=SC2086 # ARM_PYTEST_ARGS is a word list
  step "$target pytest -m 'core and not slow'" "${run[@]}" -m pytest -m "core and not slow" \
    -p no:cacheprovider -q "${DESELECT[@]}" ${ARM_PYTEST_ARGS:-} "${core_files[@]}"
done
step "cross-arch ($ARM_TARGETS)" env ARM_TARGETS="$ARM_TARGETS" \
  "$HOST_PYTHON" -m pytest -m arm -p no:cacheprovider -q tests/test_cross_arch.py

echo "=== arm: summary (wall time $((SECONDS - start)) s)" >&2
printf '%s\n' "${summary[@]}" >&2
exit $failed
