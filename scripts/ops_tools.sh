#!/usr/bin/env bash
# Installs the operations tools the tests call, idempotent and cached:
#
#   promtool   Prometheus' rule checker, from Debian's `prometheus` package.
#              Only the binary is unpacked (into $IHEARD_HOME/cache/promtool):
#              installing the package itself would also register and start
#              a Prometheus server, which nothing here wants.
#   prometheus Prometheus' server, from the same unpacked Debian package
#              (the binary only; nothing registered or started: the alert
#              tests start it themselves on an instance's port).
#   chromium   headless browser for the end-to-end widget test (Debian's
#              `chromium`, installed with apt-get when missing).
#
# Usage: scripts/ops_tools.sh promtool|prometheus|chromium|all
# Prints the absolute path of each tool it was asked for, one a line.
# Parallel callers queue on a lock.
set -euo pipefail

IHEARD_HOME="${IHEARD_HOME:-$HOME/.cache/iheardai}"
CACHE_DIR="$IHEARD_HOME/cache"
PROMTOOL_DIR="$CACHE_DIR/promtool"
mkdir -p "$CACHE_DIR"

log() { printf '[ops_tools] %s\n' "$*" >&2; }
die() { printf '[ops_tools] ERROR: %s\n' "$*" >&2; exit 1; }

APT_UPDATED=0
apt_update_once() {
  if ((APT_UPDATED == 0)); then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
}

promtool_path() {
  if command -v promtool >/dev/null 2>&1; then command -v promtool; return 0; fi
  [[ -x "$PROMTOOL_DIR/usr/bin/promtool" ]] && { echo "$PROMTOOL_DIR/usr/bin/promtool"; return 0; }
  return 1
}

prometheus_path() {
  if command -v prometheus >/dev/null 2>&1; then command -v prometheus; return 0; fi
  [[ -x "$PROMTOOL_DIR/usr/bin/prometheus" ]] && { echo "$PROMTOOL_DIR/usr/bin/prometheus"; return 0; }
  return 1
}

install_prometheus() {
  prometheus_path && return 0
  unpack_prometheus_deb
  "$PROMTOOL_DIR/usr/bin/prometheus" --version >/dev/null 2>&1 || die "unpacked prometheus does not run"
  prometheus_path
}

install_promtool() {
  promtool_path && return 0
  unpack_prometheus_deb
  "$PROMTOOL_DIR/usr/bin/promtool" --version >/dev/null 2>&1 || die "unpacked promtool does not run"
  promtool_path
}

unpack_prometheus_deb() {
  [[ $EUID -eq 0 ]] || die "need root for apt-get; install promtool yourself and rerun"
  apt_update_once
  local tmp
  tmp="$(mktemp -d)"
  chmod 755 "$tmp"  # apt-get download runs as _apt and writes here
  log "apt-get download prometheus (unpacking its binaries only)"
  (cd "$tmp" && apt-get download -qq prometheus >/dev/null)
  rm -rf "$PROMTOOL_DIR.tmp" && mkdir -p "$PROMTOOL_DIR.tmp"
  dpkg-deb -x "$tmp"/prometheus_*.deb "$PROMTOOL_DIR.tmp"
  rm -rf "$tmp" "$PROMTOOL_DIR" && mv "$PROMTOOL_DIR.tmp" "$PROMTOOL_DIR"
}

chromium_path() {
  local name
  for name in chromium chromium-browser; do
    command -v "$name" >/dev/null 2>&1 && { command -v "$name"; return 0; }
  done
  return 1
}

install_chromium() {
  chromium_path && return 0
  [[ $EUID -eq 0 ]] || die "need root for apt-get; install chromium yourself and rerun"
  apt_update_once
  log "apt-get install chromium"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium fonts-liberation >/dev/null
  chromium_path
}

exec 9>"$CACHE_DIR/ops_tools.lock"
flock 9
case "${1:-all}" in
  promtool) install_promtool ;;
  prometheus) install_prometheus ;;
  chromium) install_chromium ;;
  all) install_promtool; install_prometheus; install_chromium ;;
  *) die "usage: $0 promtool|prometheus|chromium|all" ;;
esac
