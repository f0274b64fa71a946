#!/usr/bin/env bash
# Supply-chain checks: `cargo deny --offline check` (advisories, bans, licenses, sources) with the
# RustSec advisory database snapshot in ../shared/rustsec/advisory-db, since the machines that
# build reconix cannot reach GitHub to fetch it (see that folder's README). The snapshot is
# copied into target/advisory-dbs/ (writable, ignored by git) and made a git repository, which is
# what cargo-deny expects to find at `db-path` (deny.toml); the copy is refreshed when the
# snapshot's commit changes. The workspace and the fuzz targets (fuzz/Cargo.lock) are both
# checked. Extra arguments go to `cargo deny check`, e.g. `advisories`.
set -euo pipefail
cd "$(dirname "$0")/.."

src=../shared/rustsec/advisory-db
# cargo-deny names the folder after a hash of the database URL, the default
# https://github.com/rustsec/advisory-db; deny.toml keeps that URL so the name stays valid.
dst=target/advisory-dbs/advisory-db-3157b0e258782691
readme=../shared/rustsec/README.md

if [ ! -d "$src" ]; then
  echo "deny: no advisory database at $src (CI clones the repo next to a shared/ folder)" >&2
  exit 1
fi
if ! command -v cargo-deny >/dev/null 2>&1; then
  echo "deny: installing cargo-deny (about 4 CPU-minutes)" >&2
  cargo install --locked cargo-deny
fi

stamp=$(sha256sum "$readme" | cut -d' ' -f1)
if [ "$(cat "$dst.stamp" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$dst"
  mkdir -p "$(dirname "$dst")"
  cp -R "$src" "$dst"
  chmod -R u+w "$dst"
  (
    cd "$dst"
    git init -q
    git add -A
    git -c user.name=reconix -c user.email=ci@reconix.invalid commit -qm "RustSec snapshot" --no-gpg-sign
  )
  echo "$stamp" >"$dst.stamp"
fi

# cargo-deny reads every dependency's manifest, and `--offline` keeps cargo from downloading
# them: fetch first (a no-op once they are there). The libfuzzer-sys licence exception in
# deny.toml concerns the fuzz tree only.
cargo fetch --quiet --locked
cargo deny --offline check --hide-inclusion-graph --allow license-exception-not-encountered "$@"
# The fuzz targets are their own workspace with their own Cargo.lock (fuzz/): same rules.
cargo fetch --quiet --locked --manifest-path fuzz/Cargo.toml
cargo deny --manifest-path fuzz/Cargo.toml --offline check --hide-inclusion-graph \
  --allow license-not-encountered "$@"
