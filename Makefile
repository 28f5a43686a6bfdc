# SPDX-License-Identifier: GPL-2.0-only
# kvm-rs top-level Makefile. Target names are stable: docs, CI and scripts use them.
#
#   make              the three modules, against KDIR (default: the pinned test kernel)
#   make kernel       build (once, cached in $KVM_RS_CACHE) the pinned test kernel
#   make check        the README's test command: host tests, lint, VM tests (CI runs this)
#   make run          the main job: boot the test VM, load our modules, run a guest
#   make selftests    KVM selftests in the TCG VM: TESTS="..." MODULES=ours|intree|both
#   make bench        in-tree vs ours in one TCG boot, real time and -icount (out/bench/)
#   make fuzz        differential fuzzing in-tree vs ours, a campaign on ours (out/fuzz/)
#   make host-test    cargo test of the no_std logic (seconds, no VM)
#   make lint         rustfmt --check, clippy (host crates and modules), C warnings
#   make setup        install the host packages and tools (idempotent; run, check do it)

SHELL := /bin/bash
ROOT := $(CURDIR)
ENV := source $(ROOT)/scripts/env.sh &&

# KDIR: any Rust-enabled 7.2 build tree; by default the pinned test kernel, built on
# first use (scripts/kernel.sh). Resolved inside recipes so that `make setup` can run
# on a machine that has nothing installed yet.
KDIR ?=
LLVM ?= 1
KDIR_SH = $(if $(KDIR),$(KDIR),$$($(ROOT)/scripts/kernel.sh))
KMAKE = $(ENV) kdir=$(KDIR_SH) && $(MAKE) -C $$kdir M=$(ROOT) LLVM=$(LLVM)

.PHONY: all modules kernel check run selftests bench fuzz host-test lint clean setup clippy fmt-check

all: modules

setup:
	$(ROOT)/scripts/setup-host.sh

kernel:
	@$(ENV) $(ROOT)/scripts/kernel.sh >/dev/null

modules:
	@$(KMAKE) modules

host-test:
	@$(ENV) $(ROOT)/scripts/kernel.sh --source >/dev/null && cargo test --workspace --quiet

fmt-check:
	@$(ENV) $(ROOT)/scripts/kernel.sh --source >/dev/null
	@$(ENV) cargo fmt --all --check
	@$(ENV) rustfmt --edition 2021 --check $$(git -C $(ROOT) ls-files 'src/*.rs' 'arch/*.rs')

clippy:
	@$(ENV) $(ROOT)/scripts/kernel.sh --source >/dev/null
	@$(ENV) cargo clippy --workspace --all-targets --quiet -- -D warnings
	@$(KMAKE) CLIPPY=1 KCFLAGS=-Werror KRUSTFLAGS=-Dwarnings modules

lint: fmt-check clippy

check: setup
	@$(ENV) $(ROOT)/scripts/check.sh

run: setup modules
	@$(ENV) $(ROOT)/tests/vm-check.sh run

selftests: modules
	@$(ENV) $(ROOT)/tests/selftests.sh $(if $(LIST),--list $(LIST)) $(if $(TESTS),--tests "$(TESTS)") --modules $(or $(MODULES),both)

bench: setup modules
	@$(ENV) $(ROOT)/scripts/bench.sh

fuzz: setup modules
	@$(ENV) $(ROOT)/scripts/fuzz.sh

clean:
	@$(KMAKE) clean
	rm -rf $(ROOT)/target
