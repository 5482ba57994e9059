#!/usr/bin/env bash
# build-initramfs.sh — build the kernel-independent part of the matrix VMs'
# initramfs: busybox, the real networking tools with their shared libraries,
# the static Go test binaries and ftvm-probe, and /init. Each kernel's modules
# go into a second, small archive (run-one.sh) that is concatenated to this
# one: the kernel unpacks concatenated newc archives in order.
#
# Environment: VM_OUT (build dir), VM_PKGS (Go packages to test, e.g.
# "./pkg/datapath ./test"), VM_TESTFLAGS (extra go test flags, e.g.
# "-test.run=TestDrop"), VM_TEST_TIMEOUT (per test binary, default 300s).
# Output: $VM_OUT/base.cpio (uncompressed: unpacking gzip under TCG is slower
# than copying the bytes).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${VM_OUT:?VM_OUT must be set}
pkgs=${VM_PKGS:?VM_PKGS must be set}
stage=$out/base
mkdir -p "$out"
rm -rf "$stage"
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc/ftvm,proc,sys,dev,run,tmp,tests,lib/modules}

log() { printf 'vm-initramfs: %s\n' "$*" >&2; }

# Static Go binaries: CGO off so they need no libc in the guest; -s -w keeps
# the archive small (the embedded BPF objects are data, not symbols).
t0=$(date +%s)
(
	cd "$repo"
	# shellcheck disable=SC2086 # VM_PKGS is a list
	CGO_ENABLED=0 go test -c -ldflags='-s -w' -o "$stage/tests/" $pkgs
	CGO_ENABLED=0 go build -ldflags='-s -w' -o "$stage/usr/local/bin/ftvm-probe" ./test/vm/probe
	if [[ -d cmd/flowtrace ]]; then
		CGO_ENABLED=0 go build -ldflags='-s -w' -o "$stage/usr/local/bin/flowtrace" ./cmd/flowtrace
	fi
)
# The datapath's BPF object(s), for ftvm-probe's per-program report: the
# datapath stops at its first load error; this shows every program's fate.
mkdir -p "$stage/usr/local/share/flowtrace/bpf"
find "$repo/pkg/datapath" -maxdepth 1 -name '*_bpfel.o' -exec cp {} "$stage/usr/local/share/flowtrace/bpf/" \;
log "go binaries built in $(($(date +%s) - t0))s: $(cd "$stage/tests" && ls | tr '\n' ' ')"

bb=$(command -v busybox)
ldd "$bb" >/dev/null 2>&1 && {
	echo "build-initramfs.sh: $bb is not static (apt-get install busybox-static)" >&2
	exit 1
}
cp "$bb" "$stage/bin/busybox"

# Real tools, not busybox applets: the tests need iproute2's netns, nft and
# full ping/nc behaviour. Each is copied with the shared libraries ldd lists,
# at the same paths, plus the dynamic loader.
copy_elf() {
	local src=$1 dst=$2 lib
	mkdir -p "$stage/$(dirname "$dst")"
	cp -L "$src" "$stage/$dst"
	for lib in $(ldd "$src" 2>/dev/null | grep -oE '/[^ ]+'); do
		[[ -e $stage/$lib ]] && continue
		mkdir -p "$stage/$(dirname "$lib")"
		cp -L "$lib" "$stage/$lib"
	done
}
# bridge: the extended lab (VXLAN fdb entries) calls it.
need=(ip tc bridge nft sysctl ping nc kmod)
for tool in "${need[@]}"; do
	p=$(command -v "$tool") || {
		echo "build-initramfs.sh: $tool not found (apt-get install iproute2 nftables procps iputils-ping netcat-openbsd kmod)" >&2
		exit 1
	}
	p=$(readlink -f "$p")
	case $tool in
	ip | tc | bridge | nft | sysctl) copy_elf "$p" "usr/sbin/$tool" ;;
	*) copy_elf "$p" "usr/bin/$tool" ;;
	esac
done
ln -s ping "$stage/usr/bin/ping6"
ln -s ping "$stage/usr/bin/ping4"
for m in modprobe insmod rmmod lsmod depmod modinfo; do ln -s /usr/bin/kmod "$stage/sbin/$m"; done
for f in /etc/protocols /etc/services /etc/iproute2 /usr/share/iproute2 /usr/lib/iproute2; do
	[[ -e $f ]] || continue
	mkdir -p "$stage/$(dirname "$f")"
	cp -a "$f" "$stage/$f"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$stage/etc/passwd"
echo 'root:x:0:' >"$stage/etc/group"

install -m 0755 "$here/init.sh" "$stage/init"
cat >"$stage/etc/ftvm/config" <<EOF
FTVM_TEST_TIMEOUT='${VM_TEST_TIMEOUT:-300s}'
FTVM_TESTFLAGS='${VM_TESTFLAGS:-}'
EOF

(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$out/base.cpio.tmp"
mv "$out/base.cpio.tmp" "$out/base.cpio"
log "base.cpio: $(du -h "$out/base.cpio" | cut -f1)"
