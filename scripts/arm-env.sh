#!/usr/bin/env bash
# Builds an aarch64 Debian userland with the project's dependencies, to run Python and
# pytest under QEMU user-mode emulation as on a Raspberry Pi 4 / 5 / Zero 2 W (64-bit OS).
#
#   scripts/arm-env.sh [RELEASE...]      build (or reuse) bookworm and/or trixie; default both
#   scripts/arm-env.sh --check RELEASE   exit 0 when RELEASE is built and current, else 1
#
# Nothing on the host changes but the cache folder: a private apt state (no
# `dpkg --add-architecture`) downloads Debian's arm64 packages (python3.X and the
# libraries it needs), `dpkg-deb -x` unpacks them, and pip installs the aarch64 wheels
# from PyPI into <root>/opt/edge-app/site-packages.
#
# Environment:
#   ARM_CACHE    cache folder (default: <repo>/.cache/arm)
#   ARM_PROFILE  wheels (default): numpy, OpenCV and Pillow from PyPI wheels
#                apt: numpy, OpenCV and Pillow from Debian (python3-numpy, python3-opencv,
#                python3-pil), the rest from PyPI resolved against them, as
#                install-pi.sh sets up a Pi
#
# A root is rebuilt only when missing or when its recipe (release, profile, package
# lists, format) changed; each build goes to a temporary folder and is renamed into
# place, so an interrupted build never looks finished. Downloaded .debs and wheels are
# kept, so a rebuild needs no network unless the recipe asks for new packages.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARM_CACHE="${ARM_CACHE:-$REPO/.cache/arm}"
ARM_PROFILE="${ARM_PROFILE:-wheels}"
FORMAT=4 # bump when the layout of a built root changes

# Debian packages of the root; the pip requirements come from pyproject.toml.
APT_COMMON=(libstdc++6 libgcc-s1 zlib1g)
APT_PROFILE_ONLY=(python3-numpy python3-opencv python3-pil)

log() { printf 'arm-env: %s\n' "$*" >&2; }
die() {
  printf 'arm-env: error: %s\n' "$*" >&2
  exit 2
}

python_for() {
  case "$1" in
    bookworm) echo 3.11 ;;
    trixie) echo 3.13 ;;
    *) die "unknown release '$1' (choose bookworm or trixie)" ;;
  esac
}

# manylinux tags pip may pick for this glibc: pip's --platform does not widen
# manylinux_2_N to older tags by itself, and ai-edge-litert ships manylinux_2_27 only.
platform_args() {
  local glibc_minor=$1 y
  printf '%s\n' --platform manylinux2014_aarch64
  for ((y = 17; y <= glibc_minor; y++)); do
    printf '%s\n' --platform "manylinux_2_${y}_aarch64"
  done
}

apt_packages() {
  local py=$1
  printf '%s\n' "python$py" "${APT_COMMON[@]}"
  if [ "$ARM_PROFILE" = apt ]; then printf '%s\n' "${APT_PROFILE_ONLY[@]}"; fi
}

host_python() {
  local python="$REPO/.venv/bin/python"
  [ -x "$python" ] || python=python3
  echo "$python"
}

# The project's dependencies and test extra (pyproject.toml) plus headless OpenCV, less
# the linter; with the apt profile, less what Debian provides.
pip_requirements() {
  ARM_PROFILE="$ARM_PROFILE" "$(host_python)" - "$REPO/pyproject.toml" <<'PY'
import os, re, sys, tomllib

project = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = project.get("optional-dependencies", {})
wanted = project["dependencies"] + extras.get("opencv-headless", []) + extras.get("test", [])
skip = {"ruff"}
if os.environ["ARM_PROFILE"] == "apt":
    skip |= {"numpy", "pillow", "opencv-python-headless"}
for requirement in wanted:
    if re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower() not in skip:
        print(requirement)
PY
}

recipe() {
  local release=$1 py
  py=$(python_for "$release")
  printf 'format=%s release=%s python=%s profile=%s\napt: %s\npip: %s\n' \
    "$FORMAT" "$release" "$py" "$ARM_PROFILE" \
    "$(apt_packages "$py" | tr '\n' ' ')" "$(pip_requirements | tr '\n' ' ')"
}

root_of() { echo "$ARM_CACHE/$1-$ARM_PROFILE"; }

is_current() {
  local root
  root=$(root_of "$1")
  [ -f "$root/.arm-env-recipe" ] && [ "$(cat "$root/.arm-env-recipe")" = "$(recipe "$1")" ]
}

# pip; its warnings about unusable extra index folders of a machine's pip.conf are noise.
host_pip() {
  "$(host_python)" -m pip "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
}

# A private apt state for arm64: the host's dpkg database and sources stay untouched.
apt_get() {
  local state=$1
  shift
  apt-get \
    -o Dir::Etc::sourcelist="$state/sources.list" -o Dir::Etc::sourceparts=- \
    -o Dir::Etc::preferencesparts="$state/preferences.d" \
    -o Dir::State::lists="$state/lists" -o Dir::State::status="$state/status" \
    -o Dir::Cache="$state/cache" -o Dir::Cache::archives="$state/archives" \
    -o APT::Architecture=arm64 -o APT::Architectures::=arm64 \
    -o APT::Install-Recommends=false -o Acquire::Languages=none -o Debug::NoLocking=1 \
    -o APT::Update::Post-Invoke::= -o DPkg::Post-Invoke::= \
    "$@"
}

fetch_debs() {
  local release=$1 py=$2 state="$ARM_CACHE/apt/$1"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -f "$keyring" ] || die "$keyring missing (apt-get install debian-archive-keyring)"
  mkdir -p "$state/lists/partial" "$state/archives/partial" "$state/cache" "$state/preferences.d"
  : >"$state/status" # nothing installed: apt resolves the whole dependency closure
  local opts="arch=arm64 signed-by=$keyring"
  cat >"$state/sources.list" <<EOF
deb [$opts] http://deb.debian.org/debian $release main
deb [$opts] http://deb.debian.org/debian $release-updates main
deb [$opts] http://deb.debian.org/debian-security $release-security main
EOF
  log "$release: apt update (arm64)"
  apt_get "$state" -qq update || die "apt update for $release arm64 failed"
  local pkgs
  mapfile -t pkgs < <(apt_packages "$py")
  log "$release: downloading ${pkgs[*]} and their dependencies"
  apt_get "$state" -y -qq --download-only install "${pkgs[@]}" >/dev/null ||
    die "apt could not download ${pkgs[*]} for $release arm64"
  # The .deb of each package of that closure ("Inst NAME (VERSION ... [ARCH])"); older
  # versions left in archives/ from earlier builds are ignored.
  local name version arch deb
  apt_get "$state" -s install "${pkgs[@]}" 2>/dev/null |
    sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) .*\[\([a-z0-9][a-z0-9]*\)\].*/\1 \2 \3/p' \
      >"$state/closure.txt"
  : >"$state/debs.txt"
  while read -r name version arch; do
    deb="$state/archives/${name}_${version//:/%3a}_$arch.deb"
    [ -f "$deb" ] || die "apt did not download $deb"
    echo "$deb" >>"$state/debs.txt"
  done <"$state/closure.txt"
}

# Unpacked trees hold absolute symlinks (e.g. sitecustomize.py -> /etc/python3.X/...);
# the host would follow them out of the root, so make them relative.
relativize_symlinks() {
  local root=$1 link target rel
  while IFS= read -r -d '' link; do
    target=$(readlink "$link")
    rel=$(realpath -m --relative-to="$(dirname "$link")" "$root$target")
    ln -sfn "$rel" "$link"
  done < <(find "$root" -type l -lname '/*' -print0)
}

# Bookworm packages still ship /lib and /bin; Trixie's ship /usr only and rely on
# base-files' /lib -> usr/lib. Lay out a merged /usr either way.
merge_usr() {
  local root=$1 dir
  for dir in bin sbin lib; do
    mkdir -p "$root/usr/$dir"
    if [ -d "$root/$dir" ] && [ ! -L "$root/$dir" ]; then
      cp -a "$root/$dir/." "$root/usr/$dir/"
      rm -rf "${root:?}/$dir"
    fi
    [ -e "$root/$dir" ] || ln -s "usr/$dir" "$root/$dir"
  done
}

# Debian picks BLAS and LAPACK with update-alternatives in maintainer scripts, which
# unpacking does not run: link the libraries where the loader looks for them.
link_alternatives() {
  local libdir=$1/usr/lib/aarch64-linux-gnu lib
  for lib in "$libdir"/blas/libblas.so.3 "$libdir"/lapack/liblapack.so.3; do
    [ -e "$lib" ] && [ ! -e "$libdir/$(basename "$lib")" ] &&
      ln -s "${lib#"$libdir"/}" "$libdir/$(basename "$lib")"
  done
  return 0
}

write_cpuinfo() {
  # /proc/cpuinfo as a Raspberry Pi OS 64-bit kernel prints it. QEMU serves absolute
  # paths from its -L root first; XNNPACK's CPU detection reads this file and crashes
  # on the host's x86 one.
  local file=$1 cpu=$2 features variant part revision model board bogomips i
  case "$cpu" in
    a72)
      features="fp asimd evtstrm crc32 cpuid"
      variant=0x0 part=0xd08 revision=3 bogomips=108.00
      board=c03114 model="Raspberry Pi 4 Model B Rev 1.4"
      ;;
    a76)
      features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid"
      features+=" asimdrdm lrcpc dcpop asimddp"
      variant=0x4 part=0xd0b revision=1 bogomips=108.00
      board=c04170 model="Raspberry Pi 5 Model B Rev 1.0"
      ;;
    a53)
      features="fp asimd evtstrm crc32 cpuid"
      variant=0x0 part=0xd03 revision=4 bogomips=38.40
      board=902120 model="Raspberry Pi Zero 2 W Rev 1.0"
      ;;
    *) die "unknown cpu '$cpu'" ;;
  esac
  mkdir -p "$(dirname "$file")"
  {
    for i in 0 1 2 3; do
      printf 'processor\t: %s\nBogoMIPS\t: %s\nFeatures\t: %s\n' "$i" "$bogomips" "$features"
      printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: %s\n' "$variant"
      printf 'CPU part\t: %s\nCPU revision\t: %s\n\n' "$part" "$revision"
    done
    printf 'Revision\t: %s\nSerial\t\t: 10000000b1e55ed0\nModel\t\t: %s\n' "$board" "$model"
  } >"$file"
}

# One view per CPU: symlinks to the release root plus its own proc/cpuinfo, since
# QEMU takes a single -L folder.
write_views() {
  local root=$1 name cpu view entry
  name=$(basename "$root")
  for cpu in a72 a76 a53; do
    view="$ARM_CACHE/views/$name-$cpu"
    rm -rf "$view"
    mkdir -p "$view"
    for entry in "$root"/* "$root"/.arm-env-python; do
      [ "$(basename "$entry")" = proc ] && continue
      ln -s "$entry" "$view/$(basename "$entry")"
    done
    write_cpuinfo "$view/proc/cpuinfo" "$cpu"
  done
}

# The emulated python's sys.executable: a host shell script, so that subprocesses the
# tests start with sys.executable run under QEMU too (no binfmt_misc needed). QEMU
# passes this path as argv[0]; Python finds its stdlib from there.
write_launcher() {
  local root=$1 py=$2
  cat >"$root/usr/bin/python3-qemu" <<EOF
#!/bin/sh
# aarch64 python$py under QEMU; QEMU_LD_PREFIX and QEMU_CPU come from scripts/arm-python.sh.
exec "\${QEMU_AARCH64:-qemu-aarch64-static}" -0 "\$0" "\$(dirname "\$0")/python$py" "\$@"
EOF
  chmod +x "$root/usr/bin/python3-qemu"
  echo "$py" >"$root/.arm-env-python"
}

install_wheels() {
  local release=$1 py=$2 root=$3 glibc_minor site wheels constraint=()
  host_pip --version >/dev/null 2>&1 || die "pip not found (make install creates .venv)"
  site="$root/opt/edge-app/site-packages"
  wheels="$ARM_CACHE/wheels/$release-$ARM_PROFILE"
  mkdir -p "$site" "$wheels"
  glibc_minor=$(grep -ao 'GLIBC_2\.[0-9]*' "$root/usr/lib/aarch64-linux-gnu/libc.so.6" |
    cut -d. -f2 | sort -n | tail -1)
  [ -n "$glibc_minor" ] || die "cannot read glibc version of the $release root"
  if [ "$ARM_PROFILE" = apt ]; then
    # Resolve against Debian's numpy, then drop pip's copy so Debian's is imported.
    local numpy_version
    numpy_version=$(find "$root/usr/lib/python3/dist-packages" -maxdepth 1 \
      -name 'numpy-*-info' -printf '%f\n' | sed -E 's/^numpy-([0-9.]+).*/\1/' | head -1)
    [ -n "$numpy_version" ] || die "python3-numpy not found in the $release root"
    echo "numpy==$numpy_version" >"$wheels/constraints.txt"
    constraint=(--constraint "$wheels/constraints.txt")
  fi
  local target platforms
  mapfile -t platforms < <(platform_args "$glibc_minor")
  target=(--python-version "$py" --implementation cp --abi "cp${py/./}"
    --only-binary=:all: "${platforms[@]}")
  local reqs
  mapfile -t reqs < <(pip_requirements)
  log "$release: pip download (aarch64, cp${py/./}): ${reqs[*]}"
  host_pip download -q -d "$wheels" \
    "${target[@]}" "${constraint[@]}" "${reqs[@]}" ||
    die "pip could not download aarch64 wheels for $release"
  # pip 23 checks Requires-Python against the host's python on install even with
  # --python-version; download above already resolved for the target's.
  host_pip install -q --no-index --ignore-requires-python \
    --find-links "$wheels" --target "$site" --no-compile "${target[@]}" "${constraint[@]}" \
    "${reqs[@]}" || die "pip could not install the aarch64 wheels for $release"
  if [ "$ARM_PROFILE" = apt ]; then
    rm -rf "$site"/numpy "$site"/numpy-*-info "$site"/numpy.libs
  fi
  rm -rf "${site:?}/bin"
}

build() {
  local release=$1 py root tmp debs deb
  py=$(python_for "$release")
  root=$(root_of "$release")
  if is_current "$release"; then
    log "$release ($ARM_PROFILE): up to date in $root"
    write_views "$root"
    return 0
  fi
  command -v qemu-aarch64-static >/dev/null ||
    die "qemu-aarch64-static missing (apt-get install qemu-user-static)"
  local started=$SECONDS
  fetch_debs "$release" "$py"
  mapfile -t debs <"$ARM_CACHE/apt/$release/debs.txt"
  [ ${#debs[@]} -gt 0 ] || die "no packages resolved for $release"
  tmp="$root.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  log "$release: unpacking ${#debs[@]} packages"
  for deb in "${debs[@]}"; do
    dpkg-deb -x "$deb" "$tmp"
  done
  merge_usr "$tmp"
  relativize_symlinks "$tmp"
  link_alternatives "$tmp"
  [ -x "$tmp/usr/bin/python$py" ] || die "python$py missing from the $release packages"
  write_launcher "$tmp" "$py"
  install_wheels "$release" "$py" "$tmp"
  rm -rf "$root"
  mv "$tmp" "$root"
  trap - EXIT
  write_views "$root"
  log "$release ($ARM_PROFILE): built $root in $((SECONDS - started)) s ($(du -sh "$root" | cut -f1))"
  # First start compiles the stdlib's and wheels' bytecode; do it now, not in a test.
  "$REPO/scripts/arm-python.sh" --release "$release" -c \
    'import numpy, cv2, PIL, click, paho.mqtt, pytest, ai_edge_litert.interpreter' ||
    die "the $release root was built but its python cannot import the dependencies"
  # Written last: a root whose python cannot import its dependencies is rebuilt next time.
  recipe "$release" >"$root/.arm-env-recipe"
}

main() {
  if [ "${1:-}" = --check ]; then
    [ $# -eq 2 ] || die "usage: arm-env.sh --check RELEASE"
    python_for "$2" >/dev/null
    is_current "$2"
    return
  fi
  case "$ARM_PROFILE" in wheels | apt) ;; *) die "ARM_PROFILE must be wheels or apt" ;; esac
  local releases=("$@")
  [ ${#releases[@]} -gt 0 ] || releases=(bookworm trixie)
  local release
  for release in "${releases[@]}"; do
    build "$release"
  done
}

main "$@"
