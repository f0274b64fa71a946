#!/usr/bin/env bash
# install-nix.sh - reconix's own installer: Nix for root on a Debian bookworm machine
# (no systemd, no network except Debian's package mirror). `make test` and `make demo` run it.
# Nix 2.8 facts behind each setting are in the project's research notes (nix-lab).
#
# What it does (idempotent, safe to re-run):
#   1. apt-get install nix-bin (Nix 2.8.0), busybox-static (static /bin/sh for the
#      build sandbox: Debian's nix has an EMPTY sandbox-paths default, so without it
#      every `builder = "/bin/sh"` fails with "executing '/bin/sh': No such file"),
#      and git (Nix's git+file:// fetcher shells out to `git`).
#   2. creates the nixbld group and build users nixbld1..N (default build-users-group).
#   3. writes /etc/nix/nix.conf: flakes on, sandbox on (no silent fallback),
#      no substituters, no global flake registry (both would go to the network),
#      eval cache off (it hides real eval errors, and parallel `nix eval` runs
#      collide on its SQLite files).
#   4. initialises the store (/nix/store, /nix/var/nix/db).
#   5. optional: START_DAEMON=1 starts `nix-daemon` in the background (no systemd)
#      so clients can use NIX_REMOTE=daemon; pid in /run/nix-daemon.pid.
#   6. smoke test: builds a trivial derivation in the sandbox and checks that
#      the sandbox really hides the host's /usr.
#   7. prints `nix --version`.
#
# Environment knobs: NIXBLD_USERS (default 8), START_DAEMON (0|1, default 0),
#                    SKIP_SMOKE_TEST (0|1, default 0).
set -euo pipefail

NIXBLD_USERS="${NIXBLD_USERS:-8}"
START_DAEMON="${START_DAEMON:-0}"
SKIP_SMOKE_TEST="${SKIP_SMOKE_TEST:-0}"
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" -ne 0 ]; then
  echo "install-nix.sh: must run as root" >&2
  exit 1
fi

log() { echo "install-nix: $*" >&2; }

# --- 1. packages --------------------------------------------------------------
missing=()
for pkg in nix-bin busybox-static git; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing: ${missing[*]}"
  apt-get update -qq
  # --no-install-recommends: skip nix-setup-systemd (systemd units we cannot use).
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "packages already installed"
fi

BUSYBOX=/bin/busybox
if [ ! -x "$BUSYBOX" ]; then
  log "error: $BUSYBOX missing after installing busybox-static"
  exit 1
fi

# --- 2. build users -----------------------------------------------------------
if ! getent group nixbld >/dev/null; then
  groupadd --system nixbld
fi
for i in $(seq 1 "$NIXBLD_USERS"); do
  if ! id "nixbld$i" >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /var/empty \
      --shell /usr/sbin/nologin --gid nixbld --groups nixbld \
      --comment "Nix build user $i" "nixbld$i"
  fi
done

# --- 3. nix.conf --------------------------------------------------------------
mkdir -p /etc/nix
conf_tmp="$(mktemp)"
cat >"$conf_tmp" <<EOF
# Written by install-nix.sh (Nix 2.8.0 from Debian bookworm). Re-running the script rewrites it.
build-users-group = nixbld
experimental-features = nix-command flakes
# Sandboxed builds: user+mount+net+pid namespaces work on this VM. Fail instead of
# silently building unsandboxed if the sandbox cannot be set up.
sandbox = true
sandbox-fallback = false
# Debian's build has no built-in sandbox shell: give builders a static /bin/sh.
sandbox-paths = /bin/sh=$BUSYBOX
# Offline machine: no binary cache and no global flake registry (both are network).
substituters =
flake-registry =
connect-timeout = 5
download-attempts = 1
# The flake eval cache hides the real error on re-evaluation ("not a derivation",
# "cached failure") and parallel nix eval processes contend on its SQLite DB.
eval-cache = false
trusted-users = root
max-jobs = auto
cores = 0
EOF
if [ -f /etc/nix/nix.conf ] && ! cmp -s "$conf_tmp" /etc/nix/nix.conf; then
  if ! head -1 /etc/nix/nix.conf | grep -q 'Written by install-nix.sh'; then
    cp /etc/nix/nix.conf "/etc/nix/nix.conf.bak.$(date +%s)"
    log "previous /etc/nix/nix.conf backed up"
  fi
fi
install -m 0644 "$conf_tmp" /etc/nix/nix.conf
rm -f "$conf_tmp"

# --- 4. store -----------------------------------------------------------------
nix-store --init

# --- 5. optional daemon -------------------------------------------------------
if [ "$START_DAEMON" = "1" ]; then
  pidfile=/run/nix-daemon.pid
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    log "nix-daemon already running (pid $(cat "$pidfile"))"
  else
    setsid nohup nix-daemon >/var/log/nix-daemon.log 2>&1 </dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 1 50); do
      [ -S /nix/var/nix/daemon-socket/socket ] && break
      sleep 0.1
    done
    log "nix-daemon started (pid $(cat "$pidfile")); use NIX_REMOTE=daemon"
  fi
fi

# --- 6. smoke test ------------------------------------------------------------
if [ "$SKIP_SMOKE_TEST" != "1" ]; then
  # shellcheck disable=SC2016  # $out is expanded by the builder, not by this shell
  out="$(nix-build --no-out-link -E 'derivation {
      name = "install-nix-smoke-test";
      system = builtins.currentSystem;
      builder = "/bin/sh";
      args = [ "-c" "if test -e /usr; then echo sandbox-not-active >&2; exit 1; fi; echo ok > $out" ];
    }' 2>/tmp/install-nix-smoke.log)" || {
    cat /tmp/install-nix-smoke.log >&2
    log "smoke test FAILED"
    exit 1
  }
  [ "$(cat "$out")" = ok ] || { log "smoke test produced unexpected output"; exit 1; }
  log "smoke test ok: sandboxed build of $out"
fi

# --- 7. version ---------------------------------------------------------------
nix --version
