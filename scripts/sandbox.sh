#!/usr/bin/env bash
# The Asterisk 22 sandbox: a Debian sid chroot with Asterisk and SIPp, cached outside the checkout.
#
#   scripts/sandbox.sh ensure     build the chroot if missing (debootstrap sid, ~1 min, ~550 MB)
#   scripts/sandbox.sh start      install asterisk-conf/ into it, start Asterisk, wait until ARI answers
#   scripts/sandbox.sh stop       stop Asterisk (graceful, then SIGKILL)
#   scripts/sandbox.sh kill       SIGKILL Asterisk at once (for restart tests)
#   scripts/sandbox.sh status     exit 0 when Asterisk runs and ARI answers
#   scripts/sandbox.sh rx 'CMD'   run an Asterisk CLI command
#   scripts/sandbox.sh run CMD..  run a command inside the chroot (e.g. sipp)
#
# Environment: PBXBRAIN_SANDBOX (chroot dir, default /var/cache/pbxbrain/sandbox-sid),
# PBXBRAIN_SANDBOX_MIRROR (Debian mirror), PBXBRAIN_ASTERISK_CONF (config dir to install).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=${PBXBRAIN_SANDBOX:-/var/cache/pbxbrain/sandbox-sid}
MIRROR=${PBXBRAIN_SANDBOX_MIRROR:-http://deb.debian.org/debian}
CONF=${PBXBRAIN_ASTERISK_CONF:-$HERE/asterisk-conf}
ARI_URL=${PBXBRAIN_SANDBOX_ARI:-http://127.0.0.1:8088/ari/asterisk/info}
ARI_AUTH=${PBXBRAIN_SANDBOX_ARI_AUTH:-pbxbrain:pbxbrain-ari-secret}
PIDFILE=$ROOT/run/asterisk/pbxbrain-sandbox.pid
LOG=$ROOT/var/log/asterisk/sandbox-console.log

die() { echo "sandbox: $*" >&2; exit 1; }

preflight() {
    [ "$(id -u)" = 0 ] || die "needs root (chroot, debootstrap). Run as root, or use docker/ (docker compose up) or point pbxbrain at an existing Asterisk (README: 'Attach to an existing Asterisk')."
    [ -r /etc/debian_version ] || die "this is not a Debian machine: the sandbox is built with Debian's debootstrap. Use docker/ or an existing Asterisk 20+ (README)."
}

ensure() {
    preflight
    if [ -x "$ROOT/usr/sbin/asterisk" ] && [ -x "$ROOT/usr/bin/sipp" ] && [ -e "$ROOT/.pbxbrain-ready" ]; then
        return 0
    fi
    command -v debootstrap >/dev/null || {
        echo "sandbox: installing debootstrap" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    echo "sandbox: building Debian sid chroot with Asterisk + SIPp in $ROOT (about a minute)" >&2
    rm -rf "$ROOT.tmp"
    mkdir -p "$(dirname "$ROOT")"
    debootstrap --variant=minbase --include=asterisk,asterisk-core-sounds-en,sip-tester \
        sid "$ROOT.tmp" "$MIRROR" >"$(dirname "$ROOT")/debootstrap.log" 2>&1 \
        || die "debootstrap failed; see $(dirname "$ROOT")/debootstrap.log"
    rm -rf "$ROOT"
    mv "$ROOT.tmp" "$ROOT"
    touch "$ROOT/.pbxbrain-ready"
    echo "sandbox: $("$0" version)" >&2
}

pid() { [ -s "$PIDFILE" ] && cat "$PIDFILE" || true; }

running() {
    local p; p=$(pid)
    [ -n "$p" ] && kill -0 "$p" 2>/dev/null
}

ari_ready() { curl -fsS -m 2 -u "$ARI_AUTH" "$ARI_URL" >/dev/null 2>&1; }

prepare() {
    # Missing from Debian's package: without the recording dir, bridge recording answers 500.
    mkdir -p "$ROOT/run/asterisk" "$ROOT/var/spool/asterisk/recording" "$ROOT/var/log/asterisk"
    [ -e "$ROOT/var/run" ] || ln -s /run "$ROOT/var/run"
    mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
    [ -d "$CONF" ] || die "no Asterisk config directory $CONF"
    cp "$CONF"/*.conf "$ROOT/etc/asterisk/"
    chroot "$ROOT" chown -R asterisk:asterisk /etc/asterisk /var/lib/asterisk /var/run/asterisk \
        /var/log/asterisk /var/spool/asterisk
}

start() {
    ensure
    if running; then
        echo "sandbox: Asterisk already running (pid $(pid))" >&2
    else
        prepare
        # Run as the asterisk user: started as root it drops capabilities and cannot read its config.
        setsid chroot "$ROOT" asterisk -f -U asterisk -G asterisk -C /etc/asterisk/asterisk.conf \
            </dev/null >"$LOG" 2>&1 &
        echo $! >"$PIDFILE"
    fi
    for _ in $(seq 1 300); do
        ari_ready && { echo "sandbox: Asterisk up (pid $(pid)), ARI on ${ARI_URL%/ari/*}" >&2; return 0; }
        running || die "Asterisk exited during start-up; see $LOG"
        sleep 0.1
    done
    die "ARI did not answer within 30 s; see $LOG"
}

stop() {
    running || { rm -f "$PIDFILE"; return 0; }
    local p; p=$(pid)
    chroot "$ROOT" asterisk -rx 'core stop now' >/dev/null 2>&1 || kill "$p" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    pkill -9 -f "^asterisk -f -U asterisk" 2>/dev/null || true
    rm -f "$PIDFILE"
}

killnow() {
    local p; p=$(pid)
    [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    rm -f "$PIDFILE"
}

cmd=${1:-}; shift || true
case "$cmd" in
    ensure) ensure ;;
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    kill) killnow ;;
    status) running && ari_ready ;;
    rx) chroot "$ROOT" asterisk -rx "$*" ;;
    run) chroot "$ROOT" "$@" ;;
    root) echo "$ROOT" ;;
    version) chroot "$ROOT" asterisk -V; chroot "$ROOT" sipp -v 2>&1 | grep -m1 -i 'sipp' || true ;;
    *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
