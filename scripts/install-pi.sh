#!/usr/bin/env bash
# Install edge-app as a systemd service on Raspberry Pi OS (Bookworm or Trixie), or
# remove it. Safe to run again: each step checks what is already there. Explained step
# by step in docs/SERVICE.md.
#
#   sudo scripts/install-pi.sh                 install or update, then (re)start
#   sudo scripts/install-pi.sh --dry-run       print what it would do, change nothing
#   sudo scripts/install-pi.sh --uninstall     remove the service and the program
#   sudo scripts/install-pi.sh --uninstall --purge   ... and config, data and user too
set -euo pipefail

PREFIX=/opt/edge-app
VENV="$PREFIX/venv"
CONFIG_DIR=/etc/edge-app
CONFIG="$CONFIG_DIR/config.toml"
STATE_DIR=/var/lib/edge-app
MODELS_DIR="$STATE_DIR/models"
UNIT=/etc/systemd/system/edge-app.service
SERVICE_USER=edge-app
# apt's Python: the one apt's numpy, OpenCV and picamera2 are installed for (a python3
# earlier on PATH, such as pyenv's, would not see them).
PYTHON=/usr/bin/python3
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
APT_PACKAGES=(python3-venv python3-pip python3-numpy python3-opencv)

model=mobilenet_v1_1.0_224_int8
action=install
purge=0
start=1
dry_run=0
CONSTRAINTS=""
cleanup() { [ -z "$CONSTRAINTS" ] || rm -f "$CONSTRAINTS"; }
trap cleanup EXIT

usage() {
  cat <<EOF
Usage: sudo $0 [--model NAME|FILE] [--no-start] [--dry-run]
       sudo $0 --uninstall [--purge] [--dry-run]

Installs edge-app from $SRC as the systemd service edge-app:
  apt packages   ${APT_PACKAGES[*]} python3-picamera2 (without recommends)
  program        $VENV (a venv with --system-site-packages: apt's numpy,
                 OpenCV and picamera2 are used, never replaced by pip's)
  model          $MODELS_DIR (edge-app models fetch, or --model FILE)
  user           $SERVICE_USER (system user in the video group)
  config         $CONFIG (from config/edge-app.example.toml; kept if present)
  unit           $UNIT

Options:
  --model NAME|FILE  a model name from 'edge-app models list', or a .tflite file to copy
                     (default: $model)
  --no-start         install and enable, but do not (re)start the service
  --dry-run          print the commands instead of running them
  --uninstall        stop and remove the service and $PREFIX, and clear its MQTT
                     topics and Home Assistant entities (edge-app mqtt unpublish)
  --purge            with --uninstall: also remove $CONFIG_DIR, $STATE_DIR and the user
  -h, --help         this help
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --model)
      [ $# -ge 2 ] || { echo "install-pi.sh: --model needs a value" >&2; exit 2; }
      model="$2"
      shift 2
      ;;
    --model=*) model="${1#--model=}"; shift ;;
    --no-start) start=0; shift ;;
    --dry-run) dry_run=1; shift ;;
    --uninstall) action=uninstall; shift ;;
    --purge) purge=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install-pi.sh: unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$purge" -eq 1 ] && [ "$action" != uninstall ]; then
  echo "install-pi.sh: --purge goes with --uninstall" >&2
  exit 2
fi

say() { printf '==> %s\n' "$*"; }
warn() { printf 'install-pi.sh: warning: %s\n' "$*" >&2; }
die() { printf 'install-pi.sh: error: %s\n' "$*" >&2; exit 1; }

# Runs a command, or prints it with --dry-run.
run() {
  if [ "$dry_run" -eq 1 ]; then
    printf '+ %s\n' "$*"
  else
    "$@"
  fi
}

have_systemd() { [ -d /run/systemd/system ]; }

check_system() {
  if [ "$(id -u)" -ne 0 ] && [ "$dry_run" -eq 0 ]; then
    die "run as root: sudo $0"
  fi
  local codename=""
  if [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
  fi
  case "$codename" in
    bookworm | trixie) ;;
    *) warn "made for Raspberry Pi OS Bookworm or Trixie; this is '${codename:-unknown}'" ;;
  esac
  case "$(uname -m)" in
    armv6l | armv7l)
      warn "32-bit OS: the TFLite runtime (ai-edge-litert) has no wheels for it;" \
        "use 64-bit Raspberry Pi OS" ;;
  esac
  if ! have_systemd; then
    warn "systemd is not running here: the unit is installed but not started"
  fi
}

install_apt_packages() {
  say "apt packages (without recommends)"
  local packages=("${APT_PACKAGES[@]}")
  # python3-picamera2 comes from the Raspberry Pi repository; elsewhere (plain Debian)
  # USB cameras, files and streams still work through OpenCV.
  if apt-cache show python3-picamera2 >/dev/null 2>&1; then
    packages+=(python3-picamera2)
  else
    warn "python3-picamera2 is not available from apt here: no Pi camera support"
  fi
  run apt-get update
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "${packages[@]}"
}

create_user() {
  say "service user $SERVICE_USER (groups: video)"
  if ! getent passwd "$SERVICE_USER" >/dev/null; then
    run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
      --shell /usr/sbin/nologin --comment "edge-app service" "$SERVICE_USER"
  fi
  run usermod --append --groups video "$SERVICE_USER"
  run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR" "$MODELS_DIR"
}

install_program() {
  say "program in $VENV"
  if [ ! -x "$VENV/bin/python" ]; then
    run install -d -m 0755 "$PREFIX"
    run "$PYTHON" -m venv --system-site-packages "$VENV"
  fi
  # Pin numpy to apt's version so pip never installs a second numpy that apt's OpenCV
  # and picamera2 were not built for; pip fails clearly if that cannot be satisfied.
  local numpy_version
  if [ "$dry_run" -eq 1 ]; then
    numpy_version="$("$PYTHON" -c 'import numpy; print(numpy.__version__)' 2>/dev/null || echo APT)"
  else
    numpy_version="$("$PYTHON" -c 'import numpy; print(numpy.__version__)')"
  fi
  CONSTRAINTS="$(mktemp)"
  printf 'numpy==%s\n' "$numpy_version" >"$CONSTRAINTS"
  run "$VENV/bin/pip" install --quiet --upgrade --constraint "$CONSTRAINTS" "$SRC"
  if [ "$dry_run" -eq 0 ]; then
    "$VENV/bin/python" - <<'EOF'
import numpy
if not numpy.__file__.startswith("/usr/lib/python3"):
    raise SystemExit(f"numpy comes from {numpy.__file__}, not from apt")
EOF
  fi
  run install -m 0644 "$SRC/docs/SERVICE.md" "$PREFIX/SERVICE.md"
}

install_model() {
  say "model $model in $MODELS_DIR"
  if [ -f "$model" ]; then
    local name
    name="$(basename "$model")"
    run install -m 0640 -o "$SERVICE_USER" -g "$SERVICE_USER" "$model" "$MODELS_DIR/$name"
    model="$MODELS_DIR/$name"
  else
    run runuser -u "$SERVICE_USER" -- env EDGE_APP_MODELS_DIR="$MODELS_DIR" \
      "$VENV/bin/edge-app" models fetch "$model"
  fi
}

install_config() {
  say "configuration $CONFIG"
  run install -d -m 0750 -o root -g "$SERVICE_USER" "$CONFIG_DIR"
  if [ -e "$CONFIG" ]; then
    echo "    kept the existing $CONFIG"
  else
    # The example's defaults plus this install's model; readable by the service only
    # (it may come to hold a web token or an MQTT password).
    if [ "$dry_run" -eq 1 ]; then
      printf '+ write %s from config/edge-app.example.toml (model = "%s")\n' "$CONFIG" "$model"
    else
      sed "s|^model = \"mobilenet_v1_1.0_224_int8\"|model = \"$model\"|" \
        "$SRC/config/edge-app.example.toml" >"$CONFIG.new"
      chown root:"$SERVICE_USER" "$CONFIG.new"
      chmod 0640 "$CONFIG.new"
      mv "$CONFIG.new" "$CONFIG"
    fi
  fi
  run runuser -u "$SERVICE_USER" -- env EDGE_APP_MODELS_DIR="$MODELS_DIR" \
    "$VENV/bin/edge-app" config check "$CONFIG"
}

install_unit() {
  say "systemd unit $UNIT"
  run install -m 0644 "$SRC/systemd/edge-app.service" "$UNIT"
  if have_systemd; then
    run systemctl daemon-reload
    run systemctl enable edge-app.service
    if [ "$start" -eq 1 ]; then
      run systemctl restart edge-app.service
    fi
  fi
}

uninstall() {
  say "removing the edge-app service"
  if have_systemd && systemctl list-unit-files edge-app.service >/dev/null 2>&1; then
    run systemctl disable --now edge-app.service || true
  fi
  # Take the device off the MQTT broker and Home Assistant (its retained discovery
  # configs and states) while the program is still here; a broker that is away warns.
  if [ "$dry_run" -eq 1 ] || { [ -x "$VENV/bin/edge-app" ] && [ -e "$CONFIG" ]; }; then
    run "$VENV/bin/edge-app" mqtt unpublish --if-enabled --config "$CONFIG" \
      || warn "could not clear this device's MQTT topics (edge-app mqtt unpublish)"
  fi
  if [ -e "$UNIT" ]; then
    run rm -f "$UNIT"
    if have_systemd; then
      run systemctl daemon-reload
    fi
  fi
  if [ -e "$PREFIX" ]; then
    run rm -rf "$PREFIX"
  fi
  if [ "$purge" -eq 1 ]; then
    say "purging configuration, data and the service user"
    run rm -rf "$CONFIG_DIR" "$STATE_DIR"
    if getent passwd "$SERVICE_USER" >/dev/null; then
      run userdel "$SERVICE_USER"
    fi
  else
    echo "    kept $CONFIG_DIR and $STATE_DIR (--purge removes them)"
  fi
}

check_system
if [ "$action" = uninstall ]; then
  uninstall
  say "done"
  exit 0
fi
install_apt_packages
create_user
install_program
install_model
install_config
install_unit
say "done"
cat <<EOF
    status:   systemctl status edge-app
    log:      journalctl -u edge-app -f
    web view: http://127.0.0.1:8080/   (web.host and web.token in $CONFIG to serve the network)
    config:   sudoedit $CONFIG && sudo systemctl reload edge-app
EOF
