#!/usr/bin/env bash
# Install this edgecls bundle (profile @PROFILE@) on the device.
#   sudo ./install.sh [--dry-run] [--no-boot-config] [--no-start] [--pip-spec SPEC] [--mqtt-password-file FILE]
#   sudo ./install.sh --uninstall [--dry-run]     (also clears the service's retained MQTT messages)
# It checks the system first (64-bit ARM or x86-64, Python >= 3.10 with venv), then installs edgecls in a venv that
# sees the system's packages (picamera2), the model and profile beside it, the boot configuration lines (only those
# not already there), and the systemd service, which it starts unless a reboot is needed first. For the AI Camera it
# installs imx500-all and imx500-tools and makes the sensor's network.rpk from packerOut.zip with imx500-package.
# --pip-spec SPEC (or EDGECLS_PIP_SPEC) installs SPEC from your own index instead of the bundled wheel.
# --mqtt-password-file FILE (or EDGECLS_MQTT_PASSWORD) stores the MQTT password in a root-only (0600) file.
set -euo pipefail
umask 022

# The bundle's settings, each value validated and shell-quoted by edgecls deploy (edgecls/device/installer.py):
# the only generated lines of this script.
@VALUES@

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DRY_RUN=0
BOOT_CONFIG=1
START=1
UNINSTALL=0
DRY_FLAG=()
PASSWORD_FILE=""
if [ -n "${EDGECLS_PIP_SPEC:-}" ]; then PIP_SPEC="$EDGECLS_PIP_SPEC"; fi
while [ "$#" -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1; DRY_FLAG=(--dry-run) ;;
    --no-boot-config) BOOT_CONFIG=0 ;;
    --no-start) START=0 ;;
    --uninstall) UNINSTALL=1 ;;
    --pip-spec) [ "$#" -ge 2 ] || { echo "install.sh: --pip-spec needs a value" >&2; exit 2; }; PIP_SPEC="$2"; shift ;;
    --mqtt-password-file)
      [ "$#" -ge 2 ] || { echo "install.sh: --mqtt-password-file needs a file" >&2; exit 2; }
      PASSWORD_FILE="$2"; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { echo "install.sh: $*"; }
fail() { echo "install.sh: $*" >&2; exit 1; }
run() {
  # Print each step; with --dry-run, only print it.
  echo "+ $*"
  if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}
systemd_running() { [ -d /run/systemd/system ]; }
finish() {
  # The last line: what was done; with --dry-run, that nothing was.
  if [ "$DRY_RUN" = 1 ]; then
    say "dry run: nothing was changed (the + lines are the steps it would take)"
  else
    say "$*"
  fi
}
clear_mqtt() {
  # The service's retained MQTT messages (its status, Home Assistant's discovery configs) off the broker, with the
  # installed edgecls and the stored password. A broker that cannot be reached is a warning: the uninstall goes on.
  local edgecls="$PREFIX/venv/bin/edgecls"
  echo "+ $edgecls ${MQTT_CLEAR[*]}"
  [ "$DRY_RUN" = 0 ] || return 0
  # with the password from the root-only EnvironmentFile this script writes:
  # shellcheck source=/dev/null
  if [ -x "$edgecls" ] \
    && (if [ -r "$ENV_FILE" ]; then set -a; . "$ENV_FILE"; set +a; fi; exec "$edgecls" "${MQTT_CLEAR[@]}"); then
    return 0
  fi
  echo "install.sh: warning: the service's retained MQTT messages (its status, Home Assistant's discovery configs)" \
    "are still on the broker; the uninstall goes on. Clear them later from any machine with edgecls:" \
    "edgecls$(printf ' %q' "${MQTT_CLEAR[@]}")" >&2
}

case "$PREFIX" in
  ""|/|/bin|/boot|/etc|/home|/lib|/opt|/root|/usr|/usr/local|/var|/var/lib) fail "refusing the prefix '$PREFIX'" ;;
esac

if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
  fail "run it as root: sudo $0"
fi

# ---- uninstall ----------------------------------------------------------------------------------------------------
if [ "$UNINSTALL" = 1 ]; then
  if command -v systemctl >/dev/null 2>&1 && [ -e "/etc/systemd/system/$SERVICE" ]; then
    if systemd_running; then run systemctl disable --now "$SERVICE"; else run systemctl disable "$SERVICE"; fi
  fi
  run rm -f "/etc/systemd/system/$SERVICE" "/etc/systemd/system/multi-user.target.wants/$SERVICE"
  if systemd_running; then run systemctl daemon-reload; fi
  if [ "${#MQTT_CLEAR[@]}" -gt 0 ]; then clear_mqtt; fi
  if [ -n "$BOOT_FILE" ] && [ -f "$BOOT_FILE" ] && [ -f "$HERE/edgecls_bootconfig.py" ]; then
    rc=0
    python3 "$HERE/edgecls_bootconfig.py" remove "$BOOT_FILE" "${DRY_FLAG[@]}" || rc=$?
    case "$rc" in 0|10|11) ;; *) fail "could not take the edgecls lines out of $BOOT_FILE" ;; esac
  fi
  run rm -f "$ENV_FILE"
  [ ! -d "$(dirname "$ENV_FILE")" ] || run rmdir --ignore-fail-on-non-empty "$(dirname "$ENV_FILE")"
  run rm -rf "$PREFIX"
  if id "$SERVICE_USER" >/dev/null 2>&1 && [ "$(id -u "$SERVICE_USER")" -lt 1000 ]; then
    run userdel "$SERVICE_USER"
  fi
  finish "uninstalled; $STATE_DIR (the service's results) is left in place: remove it yourself if you do not need it"
  exit 0
fi

# ---- checks, before anything changes ------------------------------------------------------------------------------
case "$(uname -m)" in
  aarch64|arm64|x86_64) ;;
  armv6l|armv7l|armhf|arm*)
    fail "this is a 32-bit ARM system ($(uname -m)); the LiteRT interpreter has wheels for 64-bit ARM (aarch64) \
only: install Raspberry Pi OS (64-bit) and run this again" ;;
  *) fail "$(uname -m) is not supported: edgecls runs on 64-bit ARM (aarch64) and x86-64" ;;
esac
command -v python3 >/dev/null 2>&1 || fail "python3 is missing: sudo apt-get install python3 python3-venv"
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || fail "edgecls needs Python >= 3.10; this system has $(python3 -V 2>&1)"
python3 -c 'import venv, ensurepip' 2>/dev/null \
  || fail "Python's venv is missing: sudo apt-get install python3-venv (then run this again)"
PY_VERSION="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ -n "$WHEELHOUSE_PYTHON" ] && [ "$PY_VERSION" != "$WHEELHOUSE_PYTHON" ]; then
  fail "this bundle's wheels are for Python $WHEELHOUSE_PYTHON and this system has $PY_VERSION: make the bundle \
with the --wheelhouse that matches this system"
fi
if command -v sha256sum >/dev/null 2>&1 && [ -f "$HERE/SHA256SUMS" ]; then
  (cd "$HERE" && sha256sum --check --quiet --strict SHA256SUMS) \
    || fail "files in $HERE do not match SHA256SUMS: the bundle is damaged; copy it again"
fi
if [ -z "$PIP_SPEC" ] && [ ! -f "$HERE/wheels/$WHEEL" ]; then
  fail "wheels/$WHEEL is missing from the bundle; copy it again"
fi
case "$PIP_SPEC" in -*) fail "--pip-spec takes a requirement, not an option: $PIP_SPEC" ;; esac
PASSWORD=""
if [ -n "$PASSWORD_FILE" ]; then
  [ -r "$PASSWORD_FILE" ] || fail "cannot read the MQTT password file $PASSWORD_FILE"
  IFS= read -r PASSWORD < "$PASSWORD_FILE" || true
  PASSWORD="${PASSWORD%$'\r'}"
  [ -n "$PASSWORD" ] || fail "the MQTT password file $PASSWORD_FILE is empty"
elif [ -n "${EDGECLS_MQTT_PASSWORD:-}" ]; then
  PASSWORD="$EDGECLS_MQTT_PASSWORD"
fi
case "$PASSWORD" in *[[:cntrl:]]*) fail "the MQTT password holds control characters" ;; esac
if [ "$IMX500" = 1 ]; then
  case "$(uname -m)" in
    aarch64|arm64) ;;
    *) fail "profile $PROFILE is for the Raspberry Pi AI Camera, whose packages ($IMX500_PACKAGES, from Raspberry Pi's \
archive) exist for Raspberry Pi OS on a Raspberry Pi only; this is $(uname -m)" ;;
  esac
fi
if [ "$EDGETPU" = 1 ] && ! ldconfig -p 2>/dev/null | grep -q "libedgetpu.so.1"; then
  echo "install.sh: libedgetpu.so.1 is not installed. Add the Coral apt repository" \
    "(https://coral.ai/software/#debian-packages), then: sudo apt-get install $EDGETPU_PACKAGES" >&2
  [ "$DRY_RUN" = 1 ] || exit 1
fi

# ---- system packages ----------------------------------------------------------------------------------------------
APT_UPDATED=0
if [ "$PICAM" = 1 ] && ! python3 -c "import picamera2" 2>/dev/null; then
  case "$(uname -m)" in
    aarch64|arm64)
      # picamera2 comes from the Raspberry Pi OS archive, not from pip; the venv sees it through system site packages.
      if ! grep -rqs "raspberrypi" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "install.sh: warning: python3-picamera2 is in the Raspberry Pi OS archive (archive.raspberrypi.com)," \
          "which this system's apt sources do not name" >&2
      fi
      run apt-get update
      APT_UPDATED=1
      run apt-get install -y python3-picamera2 ;;
    *)
      # Raspberry Pi OS ships picamera2 for its boards (64-bit ARM) only: there is no such package to install here.
      echo "install.sh: warning: profile $PROFILE uses the Raspberry Pi camera (picamera2), which exists on a" \
        "Raspberry Pi only; this is $(uname -m), so python3-picamera2 is not installed and the service will not" \
        "find that camera here (a USB camera: the profile linux-usb-camera)" >&2 ;;
  esac
fi

# The AI Camera: the sensor's firmware (imx500-all) and imx500-package (imx500-tools), from Raspberry Pi's archive.
# The firmware is loaded when the camera is probed at boot: newly installed, it needs a reboot.
IMX500_FIRMWARE_NEW=0
if [ "$IMX500" = 1 ]; then
  MISSING=()
  for pkg in $IMX500_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || MISSING+=("$pkg")
  done
  if [ "${#MISSING[@]}" -gt 0 ]; then
    [ "$APT_UPDATED" = 1 ] || run apt-get update
    run apt-get install -y "${MISSING[@]}" || fail "${MISSING[*]} could not be installed: they come from Raspberry \
Pi's archive (archive.raspberrypi.com), which Raspberry Pi OS has in its apt sources"
    case " ${MISSING[*]} " in *" imx500-all "*) IMX500_FIRMWARE_NEW=1 ;; esac
  fi
fi

# numpy: the venv uses the system's numpy when there is one, so that system modules built against it (picamera2's
# simplejpeg and pidng on Raspberry Pi OS) keep working; pip then picks OpenCV and LiteRT builds that accept it.
CONSTRAINT=""
SYSTEM_NUMPY="$(python3 -c 'import numpy; print(numpy.__version__)' 2>/dev/null || true)"
if [ -n "$SYSTEM_NUMPY" ]; then
  CONSTRAINT="numpy==$SYSTEM_NUMPY"
  say "numpy: keeping the system's numpy $SYSTEM_NUMPY in the venv (constraint $CONSTRAINT), so system modules" \
    "built against it keep working"
else
  say "numpy: none in the system; pip installs its own into the venv"
fi

# ---- the service user, the venv, the files ------------------------------------------------------------------------
if ! id "$SERVICE_USER" >/dev/null 2>&1; then
  run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
fi
for group in $SERVICE_GROUPS; do
  getent group "$group" >/dev/null || run groupadd --system "$group"
  run usermod -aG "$group" "$SERVICE_USER"
done

run install -d -m 755 "$PREFIX"
run python3 -m venv --system-site-packages "$PREFIX/venv"
PIP=("$PREFIX/venv/bin/pip" install --upgrade --disable-pip-version-check)
if [ -n "$CONSTRAINT" ]; then
  [ "$DRY_RUN" = 1 ] || echo "$CONSTRAINT" > "$PREFIX/constraints.txt"
  PIP+=(--constraint "$PREFIX/constraints.txt")
fi
if [ -n "$WHEELHOUSE_PYTHON" ]; then
  PIP+=(--no-index --find-links "$HERE/wheels")  # everything comes from the bundle: no internet needed
elif [ -z "$PIP_SPEC" ]; then
  PIP+=(--find-links "$HERE/wheels")
fi
if [ -n "$PIP_SPEC" ]; then
  run "${PIP[@]}" "$PIP_SPEC"
else
  run "${PIP[@]}" "$HERE/wheels/${WHEEL}[$EXTRAS]"
  # the same version number may hold new code: put this bundle's edgecls in place whatever pip thinks
  run "$PREFIX/venv/bin/pip" install --disable-pip-version-check --force-reinstall --no-deps --no-index \
    "$HERE/wheels/$WHEEL"
fi
if [ "$IMX500" = 1 ]; then run install -d -m 755 "$PREFIX/imx500"; fi
for f in "${INSTALL_FILES[@]}"; do
  run install -m 644 "$HERE/$f" "$PREFIX/$f"
done

# ---- the AI Camera's network: imx500-package makes network.rpk from packerOut.zip, here on the device ------------
# Again only when the bundle brings another packerOut.zip (its checksum is kept beside the .rpk); the new .rpk is
# made in a folder of its own and renamed into place, so a failure leaves the old one as it was.
if [ "$IMX500" = 1 ]; then
  RPK="$PREFIX/imx500/network.rpk"
  PACKAGE_SUM="$(sha256sum "$HERE/imx500/packerOut.zip" | cut -d' ' -f1)"
  if [ -f "$RPK" ] && [ "$(cat "$RPK.sha256" 2>/dev/null || true)" = "$PACKAGE_SUM" ]; then
    say "the AI Camera's network $RPK is up to date (made from this packerOut.zip)"
  else
    if [ "$DRY_RUN" = 0 ]; then
      command -v imx500-package >/dev/null 2>&1 \
        || fail "imx500-package is missing although imx500-tools was installed: sudo apt-get install --reinstall imx500-tools"
      WORK="$(mktemp -d "$PREFIX/imx500/.package.XXXXXX")"
    else
      WORK="$PREFIX/imx500/.package.XXXXXX"
    fi
    run imx500-package -i "$PREFIX/imx500/packerOut.zip" -o "$WORK" \
      || { rm -rf "$WORK"; fail "imx500-package could not make the network from $PREFIX/imx500/packerOut.zip (its \
output is above)"; }
    if [ "$DRY_RUN" = 0 ] && [ ! -s "$WORK/network.rpk" ]; then
      rm -rf "$WORK"
      fail "imx500-package made no network.rpk from $PREFIX/imx500/packerOut.zip (its output is above)"
    fi
    run install -m 644 "$WORK/network.rpk" "$RPK.new"
    run mv -f "$RPK.new" "$RPK"
    echo "+ write $RPK.sha256 (the checksum of the packerOut.zip it was made from)"
    [ "$DRY_RUN" = 1 ] || echo "$PACKAGE_SUM" > "$RPK.sha256"
    run rm -rf "$WORK"
  fi
fi
if [ "$HERE" != "$PREFIX" ]; then run install -m 755 "$HERE/install.sh" "$PREFIX/install.sh"; fi
run install -d -m 750 -o "$SERVICE_USER" -g "$(id -gn "$SERVICE_USER" 2>/dev/null || echo "$SERVICE_USER")" "$STATE_DIR"

if [ -n "$PASSWORD" ]; then
  echo "+ write $ENV_FILE (root only, mode 0600) with $PASSWORD_ENV"
  if [ "$DRY_RUN" = 0 ]; then
    install -d -m 700 "$(dirname "$ENV_FILE")"
    escaped="${PASSWORD//\\/\\\\}"; escaped="${escaped//\"/\\\"}"; escaped="${escaped//\$/\\\$}"
    escaped="${escaped//\`/\\\`}"
    tmp="$(umask 077 && mktemp "$(dirname "$ENV_FILE")/.edgecls.env.XXXXXX")"
    printf '%s="%s"\n' "$PASSWORD_ENV" "$escaped" > "$tmp"
    chmod 600 "$tmp"
    mv -f "$tmp" "$ENV_FILE"
  fi
elif [ "$MQTT_USER" = 1 ] && [ ! -f "$ENV_FILE" ]; then
  echo "install.sh: warning: the service's MQTT sink names a user but no password was given: run this again" \
    "with --mqtt-password-file FILE if the broker wants one" >&2
fi

# ---- boot configuration -------------------------------------------------------------------------------------------
NEED_REBOOT=0
REBOOT_WHY=""
reboot_to() { NEED_REBOOT=1; REBOOT_WHY="${REBOOT_WHY:+$REBOOT_WHY and to }$1"; }
if [ "$BOOT_CONFIG" = 1 ] && [ -n "$BOOT_FILE" ]; then
  if [ ! -f "$BOOT_FILE" ]; then
    echo "install.sh: $BOOT_FILE not found; add the lines in config.txt.fragment to the boot configuration" \
      "yourself" >&2
  else
    rc=0
    python3 "$HERE/edgecls_bootconfig.py" apply "$BOOT_FILE" --profile "$PROFILE" "${BOOT_ARGS[@]}" \
      "${DRY_FLAG[@]}" || rc=$?
    case "$rc" in
      0|11) ;;
      10) reboot_to "apply the boot configuration ($BOOT_FILE.edgecls-backup holds the old one)" ;;
      *) fail "could not update $BOOT_FILE (nothing else is changed by this step)" ;;
    esac
  fi
fi

if [ "$IMX500_FIRMWARE_NEW" = 1 ]; then reboot_to "load the AI Camera's firmware (imx500-all was just installed)"; fi

# ---- the service --------------------------------------------------------------------------------------------------
run install -m 644 "$HERE/$SERVICE" "/etc/systemd/system/$SERVICE"
if systemd_running; then
  run systemctl daemon-reload
  run systemctl enable "$SERVICE"
  if [ "$NEED_REBOOT" = 1 ]; then
    finish "installed and enabled; reboot to $REBOOT_WHY: the service starts then"
  elif [ "$START" = 1 ]; then
    run systemctl restart "$SERVICE"
    finish "installed and started; follow it with: journalctl -u $SERVICE -f"
  else
    finish "installed and enabled, not started (--no-start): sudo systemctl start $SERVICE"
  fi
else
  # An image build (pi-gen, sdm) or a chroot: no running systemd to talk to.
  if command -v systemctl >/dev/null 2>&1; then
    run systemctl enable "$SERVICE"
  else
    run install -d -m 755 /etc/systemd/system/multi-user.target.wants
    run ln -sf "/etc/systemd/system/$SERVICE" "/etc/systemd/system/multi-user.target.wants/$SERVICE"
  fi
  finish "installed and enabled; systemd is not running here (a chroot or an image build), so $SERVICE was not" \
    "started: it starts at the device's next boot"
fi
