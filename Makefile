# reconix — the two commands a newcomer needs are `make demo` and `make test`.
CARGO ?= cargo
SHELL := /bin/bash

.PHONY: demo test nix chromium moto fmt lint unit bench build deny fuzz

# Installs and configures Nix (Debian's nix-bin 2.8 + static busybox) when run as root; the script
# is idempotent and fast on re-runs. As a non-root user we only check that Nix is there.
nix:
	@if [ "$$(id -u)" = 0 ]; then bash scripts/install-nix.sh; \
	elif ! command -v nix >/dev/null 2>&1; then \
	  echo "nix not found: run 'sudo bash scripts/install-nix.sh' first" >&2; exit 1; \
	else nix --version; fi

# Installs Debian's chromium for the browser test (e2e/tests/browser.rs) when run as root; the
# script is idempotent. As a non-root user we only check that chromium is there.
chromium:
	@if [ "$$(id -u)" = 0 ]; then bash scripts/install-chromium.sh; \
	elif ! command -v chromium >/dev/null 2>&1; then \
	  echo "chromium not found: run 'sudo bash scripts/install-chromium.sh' first" >&2; exit 1; \
	else chromium --version 2>/dev/null; fi

# Installs moto's S3 server (PyPI) into a virtualenv for the s3:// cache test; idempotent.
moto:
	@bash scripts/install-moto.sh

build:
	$(CARGO) build -p reconix

demo: nix build
	$(CARGO) run -q -p reconix -- demo $(if $(DIR),--dir $(DIR),)

fmt:
	$(CARGO) fmt --all --check

lint:
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

unit:
	@if command -v cargo-nextest >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --all-features --no-fail-fast; \
	else $(CARGO) test --workspace --all-features --no-fail-fast; fi

test: nix chromium moto fmt lint deny unit

# Supply chain (deny.toml): advisories from the offline RustSec snapshot in ../shared/rustsec,
# licences, banned crates and sources. scripts/deny.sh installs cargo-deny when it is missing
# (about 4 CPU-minutes, 8 minutes on a busy 2-core machine).
deny:
	@bash scripts/deny.sh

# Fuzzing (fuzz/, nightly + libFuzzer; not part of `make test`): every target for FUZZ_SECONDS
# each, starting from the committed seed corpus; new inputs go to target/fuzz-corpus/ so the
# committed corpus stays small. Any crash, panic, leak or timeout fails. Crash reproducers land
# in fuzz/artifacts/<target>/; fuzz/dict/<target>.dict, when there is one, gives libFuzzer the
# format's tokens.
FUZZ_SECONDS ?= 60
FUZZ_TOOLCHAIN ?= +nightly
fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install --locked cargo-fuzz
	cd fuzz && $(CARGO) $(FUZZ_TOOLCHAIN) fuzz build
	@cd fuzz && for t in $$($(CARGO) $(FUZZ_TOOLCHAIN) fuzz list); do \
	  mkdir -p ../target/fuzz-corpus/$$t; \
	  echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
	  $(CARGO) $(FUZZ_TOOLCHAIN) fuzz run $$t ../target/fuzz-corpus/$$t corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=30 -print_final_stats=1 \
	    $$([ -f dict/$$t.dict ] && echo -dict=dict/$$t.dict) || exit 1; \
	done

bench: nix
	$(CARGO) build --release -p reconix -p reconix-e2e -p reconix-agent --bins
	$(CARGO) run --release -q -p reconix-e2e --bin reconix-bench -- $(BENCH_ARGS)
