#!/usr/bin/env bash
# install-chromium.sh - installs Debian's headless-capable Chromium for the browser end-to-end
# test (e2e/tests/browser.rs), which opens the status page and saves the screenshots under
# docs/img/. `make test` runs it as root. Idempotent: a no-op when `chromium` is on PATH.
#
# What it does:
#   1. apt-get install chromium (no recommends: no desktop integration, no extra fonts) and
#      fonts-dejavu-core, so that the screenshots have readable text on a bare machine.
#   2. prints `chromium --version`.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

log() { echo "install-chromium: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root"
  exit 1
fi

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if ! dpkg-query -W -f='${Status}' fonts-dejavu-core 2>/dev/null | grep -q 'install ok installed'; then
  missing+=(fonts-dejavu-core)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "chromium already installed"
fi

if ! command -v chromium >/dev/null 2>&1; then
  log "error: chromium is not on PATH after installing it"
  exit 1
fi
chromium --version 2>/dev/null
