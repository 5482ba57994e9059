#!/usr/bin/env bash
# run-matrix.sh [LABEL...] — the whole kernel matrix: fetch the kernels (in
# parallel with building the test binaries), then boot VM_JOBS VMs at a time
# and print one line per kernel. Exits non-zero if any kernel fails.
#
# Environment (defaults in test/vm/vm.mk): KERNELS, VM_CACHE, VM_OUT, VM_PKGS,
# VM_JOBS, VM_TIMEOUT, VM_MEM, VM_TESTFLAGS, VM_TEST_TIMEOUT.
# The summary is also written to $VM_OUT/matrix.txt.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
export VM_CACHE=${VM_CACHE:-$HOME/.cache/flowtrace/vm}
export VM_OUT=${VM_OUT:-$VM_CACHE/out}
export VM_PKGS=${VM_PKGS:-./pkg/datapath ./pkg/attach ./pkg/ifwatch ./pkg/netnsutil ./pkg/lab ./pkg/dropreason}
jobs=${VM_JOBS:-2}
if [[ $# -gt 0 ]]; then kernels=("$@"); else read -r -a kernels <<<"${KERNELS:-5.10 6.1 6.12 newest}"; fi

for tool in qemu-system-x86_64 busybox cpio zstd xz depmod modprobe apt-get dpkg-deb timeout; do
	command -v "$tool" >/dev/null || {
		echo "run-matrix.sh: $tool missing; install: apt-get install qemu-system-x86 busybox-static cpio zstd xz-utils kmod" >&2
		exit 2
	}
done
mkdir -p "$VM_OUT" "$VM_CACHE"
t0=$(date +%s)

# Downloads are network-bound and the Go build CPU-bound: overlap them.
fetch_pids=()
for k in "${kernels[@]}"; do
	"$here/fetch-kernel.sh" "$k" >"$VM_OUT/fetch-$k.log" 2>&1 &
	fetch_pids+=($!)
done
"$here/build-initramfs.sh"
fetch_failed=()
for i in "${!kernels[@]}"; do
	if ! wait "${fetch_pids[$i]}"; then fetch_failed+=("${kernels[$i]}"); fi
	sed 's/^/  /' "$VM_OUT/fetch-${kernels[$i]}.log" >&2
done
t_prep=$(($(date +%s) - t0))
echo "vm-test: prepared ${#kernels[@]} kernels and the initramfs in ${t_prep}s; booting $jobs at a time" >&2

runnable=()
for k in "${kernels[@]}"; do
	if [[ " ${fetch_failed[*]} " == *" $k "* ]]; then
		echo "$k FAIL 0s fetch failed (see $VM_OUT/fetch-$k.log)" >"$VM_OUT/fetch-$k.verdict"
	else
		runnable+=("$k")
	fi
done
if [[ ${#runnable[@]} -gt 0 ]]; then
	printf '%s\n' "${runnable[@]}" | xargs -P "$jobs" -I{} "$here/run-one.sh" {} >/dev/null || true
fi

rc=0
{
	for k in "${kernels[@]}"; do
		if [[ -f $VM_OUT/fetch-$k.verdict ]]; then
			cat "$VM_OUT/fetch-$k.verdict"
		elif [[ -f $VM_OUT/$k/verdict ]]; then
			cat "$VM_OUT/$k/verdict"
		else
			echo "$k FAIL 0s no verdict (run-one.sh crashed)"
		fi
	done
} >"$VM_OUT/matrix.txt"
echo "vm-test: kernel matrix (${#kernels[@]} kernels, $(($(date +%s) - t0))s total; logs in $VM_OUT/<kernel>/):"
while read -r line; do
	echo "  $line"
	[[ $(awk '{print $2}' <<<"$line") == PASS ]] || rc=1
done <"$VM_OUT/matrix.txt"
exit $rc
