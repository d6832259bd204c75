#!/usr/bin/env bash
# Install edge-agent as a systemd service on Raspberry Pi OS (Bookworm / Trixie) or Debian.
#
#   sudo systemd/install.sh                 install or upgrade from this checkout, enable, start
#   sudo systemd/install.sh --uninstall     remove the service and the venv; keep config and data
#   sudo systemd/install.sh --uninstall --purge   ... and the config, the buffer and the user
#
# Options: --root DIR (or DESTDIR=DIR) install into a staging root instead of / (the venv's
# scripts then point into DIR; nothing is started), --no-start (enable only), --python PY,
# --pip-args "ARGS" (e.g. "--no-index --find-links /media/wheels" on an offline Pi),
# --remote-config (let signed config.apply write /etc/edge-agent: the unit's drop-in
# remote-config.conf, folder 0770 and file 0660 for the group; kept by later re-runs).
# Idempotent: re-running upgrades the venv and the unit, never touches an existing config.
set -euo pipefail

NAME=edge-agent
SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${DESTDIR:-/}
UNINSTALL=0
PURGE=0
START=1
REMOTE=0
PYTHON=${PYTHON:-python3}
PIP_ARGS=${EDGE_AGENT_PIP_ARGS:-}

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT=${2:?--root needs a directory}; shift ;;
        --root=*) ROOT=${1#*=} ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        --no-start) START=0 ;;
        --remote-config) REMOTE=1 ;;
        --python) PYTHON=${2:?}; shift ;;
        --pip-args) PIP_ARGS=${2?}; shift ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
    esac
    shift
done
[ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ] && { echo "install.sh: --purge goes with --uninstall" >&2; exit 2; }
ROOT=$(cd "$ROOT" 2>/dev/null && pwd) || { echo "install.sh: root $ROOT does not exist" >&2; exit 2; }
R=${ROOT%/}   # "" for the real root

OPT=$R/opt/$NAME
VENV=$OPT/venv
ETC=$R/etc/$NAME
STATE=$R/var/lib/$NAME
UNIT=$R/etc/systemd/system/$NAME.service
DROPIN=$R/etc/systemd/system/$NAME.service.d/remote-config.conf
UDEV=$R/etc/udev/rules.d/99-$NAME-serial.rules

say() { printf '%s: %s\n' "$NAME" "$*"; }
live() { [ -z "$R" ] && [ -d /run/systemd/system ]; }   # systemd runs this very root

[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (sudo)" >&2; exit 1; }

# useradd/userdel/chown against the root's own /etc files (--prefix), ids looked up there too.
prefix_args() { if [ -n "$R" ]; then echo "--prefix $R"; fi; }
uid_of() { awk -F: -v n="$1" '$1 == n { print $3 }' "$R/etc/passwd"; }
gid_of() { awk -F: -v n="$1" '$1 == n { print $3 }' "$R/etc/group"; }

systemctl_() {
    if [ -n "$R" ]; then systemctl --root="$R" "$@"; else systemctl "$@"; fi
}

uninstall() {
    if live; then
        systemctl disable --now "$NAME.service" 2>/dev/null || true
    elif [ -e "$UNIT" ] && command -v systemctl >/dev/null; then
        systemctl_ disable "$NAME.service" >/dev/null 2>&1 || true
    fi
    rm -f "$UNIT" "$DROPIN"
    rmdir "$(dirname "$DROPIN")" 2>/dev/null || true
    if [ -e "$UDEV" ] && grep -q '^# edge-agent udev rules' "$UDEV"; then rm -f "$UDEV"; fi
    rm -rf "$OPT"
    live && systemctl daemon-reload
    if [ "$PURGE" = 1 ]; then
        rm -rf "$ETC" "$STATE"
        if [ -n "$(uid_of $NAME)" ]; then
            # shellcheck disable=SC2046
            userdel $(prefix_args) "$NAME" 2>/dev/null || true
        fi
        if [ -n "$(gid_of $NAME)" ]; then
            # shellcheck disable=SC2046
            groupdel $(prefix_args) "$NAME" 2>/dev/null || true
        fi
        say "removed, including configuration, buffer and user"
    else
        say "removed; kept configuration ($ETC), buffer ($STATE) and user $NAME (--purge removes them)"
    fi
}

install_all() {
    if [ -z "$R" ] && [ -r /etc/os-release ]; then
        # shellcheck disable=SC1091
        . /etc/os-release
        case "${VERSION_CODENAME:-}" in
            bookworm|trixie) ;;
            *) say "warning: tested on Raspberry Pi OS / Debian bookworm and trixie, this is ${PRETTY_NAME:-unknown}" ;;
        esac
    fi
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "install.sh: Python >= 3.11 needed ($PYTHON)" >&2; exit 1; }

    # 1. the system user: no login, no home of its own; serial via dialout, BLE via bluetooth (D-Bus policy).
    if [ -z "$(uid_of $NAME)" ]; then
        # shellcheck disable=SC2046
        useradd $(prefix_args) --system --user-group --home-dir /var/lib/$NAME --no-create-home \
            --shell /usr/sbin/nologin --comment "edge-agent gateway" "$NAME"
        say "created system user $NAME"
    fi
    local groups=()
    for g in dialout bluetooth; do
        if [ -n "$(gid_of $g)" ]; then groups+=("$g"); else say "note: no group $g on this system, skipped"; fi
    done
    if [ ${#groups[@]} -gt 0 ]; then
        # shellcheck disable=SC2046
        usermod $(prefix_args) -a -G "$(IFS=,; echo "${groups[*]}")" "$NAME"
    fi
    local uid gid
    uid=$(uid_of $NAME); gid=$(gid_of $NAME)

    # 2. the venv, with the project installed from this checkout (not editable: the checkout may go).
    install -d -m 0755 "$OPT"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
        say "created $VENV"
    fi
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade $PIP_ARGS "$SRC"
    "$VENV/bin/python" -m compileall -q "$VENV/lib" >/dev/null 2>&1 || true  # read-only at run time
    install -m 0644 "$SRC/docs/DEPLOY.md" "$OPT/DEPLOY.md"
    say "installed $("$VENV/bin/edge-agent" --version 2>/dev/null || echo "$NAME") in $VENV"

    # 3. configuration: root-owned, readable by the service's group only (writable too with
    # --remote-config, or when an earlier run installed the drop-in); never overwritten.
    local dmode=0750 fmode=0640
    [ -e "$DROPIN" ] && REMOTE=1
    [ "$REMOTE" = 1 ] && { dmode=0770; fmode=0660; }
    install -d -m "$dmode" -o 0 -g "$gid" "$ETC"
    if [ ! -e "$ETC/agent.toml" ]; then
        install -m "$fmode" -o 0 -g "$gid" "$SRC/config/example.toml" "$ETC/agent.toml"
        say "copied the example configuration to $ETC/agent.toml: edit it (gateway.id, uplink, devices)"
    else
        chown 0:"$gid" "$ETC/agent.toml"; chmod "$fmode" "$ETC/agent.toml"
        say "kept existing $ETC/agent.toml"
    fi
    # The buffer lives here (systemd's StateDirectory= would create it too).
    install -d -m 0750 -o "$uid" -g "$gid" "$STATE"

    # 4. the unit and the udev example.
    install -D -m 0644 "$SRC/systemd/$NAME.service" "$UNIT"
    if [ "$REMOTE" = 1 ]; then
        install -D -m 0644 "$SRC/systemd/remote-config.conf" "$DROPIN"
        say "remote configuration allowed: $DROPIN ($ETC writable for group $NAME)"
    fi
    if [ ! -e "$UDEV" ]; then
        install -D -m 0644 "$SRC/systemd/99-$NAME-serial.rules" "$UDEV"
        say "installed the udev example $UDEV (all rules commented out: adapt one per adapter)"
    fi

    # 5. enable, and start when the configuration is valid.
    if live; then
        systemctl daemon-reload
        if command -v udevadm >/dev/null; then udevadm control --reload || true; fi
        systemctl enable "$NAME.service" >/dev/null
        if [ "$START" = 1 ]; then
            if "$VENV/bin/edge-agent" config check --config "$ETC/agent.toml" >/dev/null 2>&1; then
                systemctl restart "$NAME.service"
                say "enabled and (re)started: systemctl status $NAME; journalctl -u $NAME -f"
            else
                say "enabled but NOT started: fix $ETC/agent.toml (edge-agent config check --config $ETC/agent.toml), then: systemctl start $NAME"
            fi
        fi
    elif command -v systemctl >/dev/null; then
        if systemctl_ enable "$NAME.service" >/dev/null 2>&1; then
            say "enabled in ${R:-/} (systemd is not running here: not started)"
        else
            say "systemd is not running and offline enabling failed: run 'systemctl enable --now $NAME' on the target"
        fi
    else
        say "no systemctl here: run 'systemctl enable --now $NAME' on the target"
    fi
}

if [ "$UNINSTALL" = 1 ]; then uninstall; else install_all; fi
