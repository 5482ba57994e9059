#!/bin/busybox sh
# /init of a flowtrace matrix VM. Human-readable output goes to the console
# (ttyS0); machine-readable lines go to the second serial port (ttyS1), which
# the host reads from a file:
#   FTVM-BOOT kernel=...              /init started
#   FTVM-MODULE-FAIL path err         a module did not load (tests may still pass)
#   FTVM-FEATURES key=value...        from ftvm-probe
#   FTVM-TEST pkg=... rc=... pass=N fail=N skip=N secs=N failed=T1,T2
#   FTVM-DONE secs=N                  everything ran; the VM powers off next
# A VM that never prints FTVM-DONE hung or crashed: the host's timeout kills it.

/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s /bin
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
set -o pipefail
# busybox's shell runs its own applets before PATH lookups: every real tool is
# called by full path below (the Go tests use PATH and get the real ones).

mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null ||
	mount -t debugfs debugfs /sys/kernel/debug
mkdir -p /run/netns /var /root
ln -sf /run /var/run
hostname ftvm

. /etc/ftvm/config
# The guest has no Go toolchain: tests that would `go build` the CLI can use
# the static binary built on the host instead.
[ -x /usr/local/bin/flowtrace ] && export FLOWTRACE_BIN=/usr/local/bin/flowtrace
# Tests of kernel-independent parts that need a Go toolchain or large
# binaries (the Kubernetes control plane) run natively, not in the VMs.
export FLOWTRACE_IN_VM=1
res=/dev/ttyS1
t0=$(date +%s)
echo "FTVM-BOOT kernel=$(uname -r) label=$FTVM_LABEL" >$res
echo "ftvm: kernel $(uname -r) ($FTVM_LABEL), $(grep -c . /etc/ftvm/load.list) modules to load"

# Modules in dependency order (resolved on the host). The kernel's own
# request_module (nft expressions, conntrack helpers) uses kmod's modprobe
# on the same pruned tree.
echo /sbin/modprobe >/proc/sys/kernel/modprobe
while read -r m; do
	[ -n "$m" ] || continue
	if ! out=$(/sbin/insmod "$m" 2>&1); then
		echo "$out" | grep -q 'File exists' && continue
		echo "FTVM-MODULE-FAIL $m $(echo "$out" | tr ' \n' '_ ')" >$res
		echo "ftvm: insmod $m: $out"
	fi
done </etc/ftvm/load.list
/usr/sbin/ip link set lo up

# Which datapath features are live, from flowtrace's own load path.
/usr/sbin/ip netns add ftvmprobe
obj=$(ls /usr/local/share/flowtrace/bpf/*.o 2>/dev/null | head -n1)
/usr/sbin/ip netns exec ftvmprobe /usr/local/bin/ftvm-probe ${obj:+-object "$obj"} >/tmp/probe.out 2>/tmp/probe.err
echo "ftvm: probe rc=$?: $(cat /tmp/probe.err)"
/usr/sbin/ip netns del ftvmprobe
if grep -q '^FTVM-FEATURES' /tmp/probe.out; then
	grep '^FTVM-FEATURES' /tmp/probe.out >$res
else
	echo "FTVM-FEATURES kernel=$(uname -r) probe=error" >$res
fi
cat /tmp/probe.out

for bin in /tests/*.test; do
	pkg=$(basename "$bin" .test)
	echo "ftvm: === $pkg"
	s=$(date +%s)
	# Tests may write relative paths: give each its own scratch directory.
	mkdir -p "/tmp/$pkg" && cd "/tmp/$pkg" || exit 1
	FLOWTRACE_REQUIRE_PRIVILEGED=1 "$bin" -test.v -test.count=1 \
		-test.timeout="$FTVM_TEST_TIMEOUT" $FTVM_TESTFLAGS 2>&1 | tee "/tmp/$pkg.log"
	rc=$?
	cd /
	# Top-level results only: subtests are indented.
	pass=$(grep -c '^--- PASS' "/tmp/$pkg.log")
	fail=$(grep -c '^--- FAIL' "/tmp/$pkg.log")
	skip=$(grep -c '^--- SKIP' "/tmp/$pkg.log")
	failed=$(grep '^--- FAIL' "/tmp/$pkg.log" | awk '{print $3}' | tr '\n' ',' | sed 's/,$//')
	# A panic or timeout fails without a "--- FAIL" line: name it.
	if [ "$rc" != 0 ] && [ -z "$failed" ]; then
		failed=$(grep -m1 -oE '^(panic: .{0,60}|test timed out.*)' "/tmp/$pkg.log" | tr ' ,' '__')
		failed=${failed:-exit_$rc}
	fi
	echo "FTVM-TEST pkg=$pkg rc=$rc pass=$pass fail=$fail skip=$skip secs=$(($(date +%s) - s)) failed=$failed" >$res
done

echo "FTVM-DONE secs=$(($(date +%s) - t0))" >$res
sync
poweroff -f
