#!/usr/bin/env bash
# run-one.sh LABEL — boot one fetched kernel with the base initramfs plus its
# modules under qemu (software emulation), and write a one-line verdict to
# $VM_OUT/LABEL/verdict:
#   <label> PASS|FAIL <secs>s <features...> failed=<pkg.Test,...|-> [reason]
# Exit status 0 only when the guest finished and every test binary passed.
#
# Environment: VM_CACHE, VM_OUT, VM_TIMEOUT (seconds per VM, default 600),
# VM_MEM (MiB, default 1024), QEMU (default qemu-system-x86_64).
set -euo pipefail

label=${1:?usage: run-one.sh LABEL}
cache=${VM_CACHE:-$HOME/.cache/flowtrace/vm}
out=${VM_OUT:?VM_OUT must be set}
timeout_s=${VM_TIMEOUT:-600}
kdir=$cache/kernels/$label
dir=$out/$label
rm -rf "$dir"
mkdir -p "$dir/stage/etc/ftvm"

kver=$(cat "$kdir/kver")
cp -a "$kdir/modroot/lib" "$dir/stage/"
cp "$kdir/load.list" "$dir/stage/etc/ftvm/load.list"
echo "FTVM_LABEL='$label'" >"$dir/stage/etc/ftvm/label"
# The label rides in the config file that init sources; appending keeps the
# base archive's settings.
cat "$out/base/etc/ftvm/config" "$dir/stage/etc/ftvm/label" >"$dir/stage/etc/ftvm/config"
(cd "$dir/stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$dir/kernel.cpio"
cat "$out/base.cpio" "$dir/kernel.cpio" >"$dir/initrd.img"
rm -rf "$dir/stage" "$dir/kernel.cpio"

# -smp 1 with plain TCG: multi-threaded TCG with 2 vCPUs crashed boots now
# and then (shared/VM.md); two VMs side by side use both host cores instead.
# -nic none: the guest has no network device at all, so test traffic cannot
# leave the VM's own namespaces. panic=-1 + -no-reboot turn a guest panic
# into a qemu exit instead of a hang.
start=$(date +%s)
set +e
timeout -k 10 "$timeout_s" "${QEMU:-qemu-system-x86_64}" \
	-accel tcg -cpu max -smp 1 -m "${VM_MEM:-1024}" \
	-nodefaults -no-user-config -display none -nic none -no-reboot \
	-kernel "$kdir/vmlinuz" -initrd "$dir/initrd.img" \
	-append "console=ttyS0 panic=-1 oops=panic random.trust_cpu=on quiet loglevel=4" \
	-serial "file:$dir/console.log" -serial "file:$dir/results.txt" \
	</dev/null >"$dir/qemu.log" 2>&1
qrc=$?
set -e
secs=$(($(date +%s) - start))
rm -f "$dir/initrd.img"

res=$dir/results.txt
touch "$res"
tr -d '\r' <"$res" >"$res.clean" && mv "$res.clean" "$res"
features=$(grep -m1 '^FTVM-FEATURES' "$res" | cut -d' ' -f2- || true)
features=${features:-kernel=$kver probe=missing}
failed=$(grep '^FTVM-TEST' "$res" | awk '
	{ pkg=""; rc=""; f="";
	  for (i = 2; i <= NF; i++) { split($i, kv, "=");
	    if (kv[1] == "pkg") pkg = kv[2]; if (kv[1] == "rc") rc = kv[2];
	    if (kv[1] == "failed") f = substr($i, 8) }
	  if (rc != "0") { n = split(f, t, ","); if (n == 0) print pkg ".exit_" rc;
	    for (j = 1; j <= n; j++) print pkg "." t[j] } }' | paste -sd, -)
tests=$(grep -c '^FTVM-TEST' "$res" || true)
modfail=$(grep '^FTVM-MODULE-FAIL' "$res" | awk '{n=split($2,p,"/"); print p[n]}' | paste -sd, - || true)

verdict=PASS
reason=""
if [[ $qrc == 124 || $qrc == 137 ]]; then
	verdict=FAIL
	running=$(grep -a '^ftvm: === ' "$dir/console.log" | tail -n1 | awk '{print $3}' || true)
	reason="timeout after ${timeout_s}s in ${running:-boot} (last console line: $(tail -n1 "$dir/console.log" | tr -d '\r' | cut -c1-100))"
elif ! grep -q '^FTVM-DONE' "$res"; then
	verdict=FAIL
	reason="guest did not finish (qemu exit $qrc; see $dir/console.log)"
elif [[ -n $failed ]]; then
	verdict=FAIL
fi
[[ $tests -gt 0 ]] || { verdict=FAIL; reason=${reason:-no test binary ran}; }
line="$label $verdict ${secs}s $features tests=$tests failed=${failed:--}"
[[ -n $modfail ]] && line+=" module_fail=$modfail"
[[ -n $reason ]] && line+=" reason=\"$reason\""
echo "$line" >"$dir/verdict"
echo "$line"
[[ $verdict == PASS ]]
