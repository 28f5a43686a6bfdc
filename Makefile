# SPDX-License-Identifier: GPL-2.0-only
# kvm-rs top-level Makefile. Target names are stable: docs, CI and scripts use them.
#
#   make              the three modules, against KDIR (default: the pinned test kernel)
#   make kernel       build (once, cached in $KVM_RS_CACHE) the pinned test kernel
#   make check        the README's test command: host tests, lint, VM tests (CI runs this)
#   make run          the main job: boot the test VM, load our modules, run a guest
#   make selftests    KVM selftests in the TCG VM: TESTS="..." MODULES=ours|intree|both
#   make host-test    cargo test of the no_std logic (seconds, no VM)
#   make lint         rustfmt --check, clippy (host crates and modules), C warnings
#   make setup        install the host packages and tools (idempotent)

SHELL := /bin/bash
ROOT := $(CURDIR)
ENV := source $(ROOT)/scripts/env.sh &&

# The pinned kernel's build dir, unless KDIR is given (any Rust-enabled 7.2 tree).
ifeq ($(origin KDIR),undefined)
KDIR := $(shell $(ENV) $(ROOT)/scripts/kernel.sh --dir 2>/dev/null)
KDIR_DEP := kernel
endif
LLVM ?= 1

.PHONY: all modules kernel check run selftests host-test lint clean setup clippy fmt-check

all: modules

setup:
	$(ROOT)/scripts/setup-host.sh

kernel:
	@$(ENV) $(ROOT)/scripts/kernel.sh >/dev/null

modules: $(KDIR_DEP)
	@$(ENV) $(MAKE) -C $(KDIR) M=$(ROOT) LLVM=$(LLVM) modules

host-test:
	@$(ENV) cargo test --workspace --quiet

fmt-check:
	@$(ENV) cargo fmt --all --check
	@$(ENV) rustfmt --edition 2021 --check $$(git -C $(ROOT) ls-files 'src/*.rs' 'arch/*.rs')

clippy: $(KDIR_DEP)
	@$(ENV) cargo clippy --workspace --all-targets --quiet -- -D warnings
	@$(ENV) $(MAKE) -C $(KDIR) M=$(ROOT) LLVM=$(LLVM) CLIPPY=1 KCFLAGS=-Werror modules

lint: fmt-check clippy

check: $(KDIR_DEP)
	@$(ENV) $(ROOT)/scripts/check.sh

run: modules
	@$(ENV) $(ROOT)/tests/run-guest.sh

selftests: modules
	@$(ENV) $(ROOT)/tests/selftests.sh $(if $(TESTS),--tests "$(TESTS)") --modules $(or $(MODULES),both)

clean:
	@$(ENV) $(MAKE) -C $(KDIR) M=$(ROOT) clean
	rm -rf $(ROOT)/target
