#!/usr/bin/env bash
# install-moto.sh - installs moto's S3 server (from PyPI) for the end-to-end test of s3:// caches
# (e2e/tests/caches.rs), which pushes to a real S3 API on loopback. `make test` runs it.
# Idempotent: a no-op when $RECONIX_MOTO_VENV/bin/moto_server exists.
#
# What it does:
#   1. as root, apt-get install python3-venv when Python's venv module is missing;
#   2. creates a virtualenv at $RECONIX_MOTO_VENV (default /opt/reconix-moto);
#   3. pip installs moto[server] (moto_server, plus boto3 which the test uses for a bucket policy).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

log() { echo "install-moto: $*" >&2; }

venv="${RECONIX_MOTO_VENV:-/opt/reconix-moto}"
if [ -x "$venv/bin/moto_server" ]; then
  log "moto already installed in $venv"
  exit 0
fi

if ! command -v python3 >/dev/null 2>&1; then
  log "error: python3 is missing (apt-get install python3 python3-venv)"
  exit 1
fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    log "error: python3's venv module is missing: run 'sudo apt-get install python3-venv'"
    exit 1
  fi
  log "installing python3-venv"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi

log "creating $venv and installing moto[server]"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5,<6'
if [ ! -x "$venv/bin/moto_server" ]; then
  log "error: $venv/bin/moto_server is missing after the install"
  exit 1
fi
log "moto $("$venv/bin/python" -c 'import moto; print(moto.__version__)') installed in $venv"
