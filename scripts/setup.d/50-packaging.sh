#!/usr/bin/env bash
# Packaging and deployment checks: cargo-deb (builds the .deb), openssl (the
# certificate script), systemd-analyze (verifies the units; this machine has
# no systemd as PID 1, but the analyzer works offline), mosquitto_passwd.
# Idempotent: each tool is installed only when missing.
set -euo pipefail
need=()
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v mosquitto_passwd >/dev/null 2>&1 || need+=(mosquitto)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]} (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if ! cargo deb --version >/dev/null 2>&1; then
  echo "== installing cargo-deb"
  cargo install cargo-deb --locked
fi
