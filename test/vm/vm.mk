# Kernel matrix under qemu and the Vagrantfile check. Included from the
# top-level Makefile; every path is relative to the repository root.
#
#   make vm-test                      # 5.10 6.1 6.12 newest, 2 VMs at a time
#   make vm-test KERNELS="5.10 6.18"  # any subset; X.Y = trixie-backports X.Y
#   make vm-test VM_TESTFLAGS=-test.run=TestDrop
#   make vm-fetch                     # only download/extract kernels (cache)
#   make vm-deps                      # apt-get install the host tools (root)
#   make vagrant-validate             # offline check of the Vagrantfile
#
# Kernels and their extracted modules are cached in VM_CACHE; a rerun only
# rebuilds the test binaries and the initramfs. Results: $(VM_OUT)/matrix.txt
# plus per-kernel console.log / results.txt.

KERNELS ?= 5.10 6.1 6.12 newest
# ./test (the e2e package) joins automatically once it has tests.
VM_PKGS ?= ./pkg/datapath ./pkg/attach ./pkg/ifwatch ./pkg/netnsutil ./pkg/lab ./pkg/dropreason \
	$(if $(wildcard test/*_test.go),./test)
VM_CACHE ?= $(HOME)/.cache/flowtrace/vm
VM_OUT ?= $(VM_CACHE)/out
VM_JOBS ?= 2
# Under TCG the suites run ~15-50x slower than natively (datapath: 6 s ->
# 315 s on 6.1, 600+ s on 5.10, whose older JIT and verifier are slower:
# every test that loads the object verifies it for ~8 s); a hung guest is
# killed after VM_TIMEOUT, a hung test binary after VM_TEST_TIMEOUT (go test
# -timeout, which also prints the stuck goroutines). datapath alone took
# 1150-1470 s on 5.10 and ~1200 s on 6.1 in December 2026, two guests
# sharing the 2 CPUs: VM_TEST_TIMEOUT leaves it room, and VM_TIMEOUT the
# other packages' ~4 minutes on top.
VM_TIMEOUT ?= 3000
VM_TEST_TIMEOUT ?= 2400s
VM_MEM ?= 1024
VM_TESTFLAGS ?=

VM_DIR := test/vm
VM_ENV = VM_CACHE='$(VM_CACHE)' VM_OUT='$(VM_OUT)' VM_PKGS='$(strip $(VM_PKGS))' \
	VM_JOBS='$(VM_JOBS)' VM_TIMEOUT='$(VM_TIMEOUT)' VM_TEST_TIMEOUT='$(VM_TEST_TIMEOUT)' \
	VM_MEM='$(VM_MEM)' VM_TESTFLAGS='$(VM_TESTFLAGS)'

VM_APT := qemu-system-x86 busybox-static cpio zstd xz-utils kmod iproute2 nftables procps iputils-ping netcat-openbsd

.PHONY: vm-test vm-fetch vm-deps vm-clean vagrant-validate

vm-test:
	$(VM_ENV) $(VM_DIR)/run-matrix.sh $(KERNELS)

vm-fetch:
	@set -e; for k in $(KERNELS); do VM_CACHE='$(VM_CACHE)' $(VM_DIR)/fetch-kernel.sh $$k; done

vm-deps:
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(VM_APT)

vm-clean:
	rm -rf '$(VM_OUT)'

# Debian's vagrant package validates offline; --no-install-recommends keeps
# it from pulling in a host kernel, grub and NFS server.
vagrant-validate:
	@command -v vagrant >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends vagrant
	VAGRANT_CHECKPOINT_DISABLE=1 vagrant validate --ignore-provider
