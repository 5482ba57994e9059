#!/usr/bin/env bash
# Installs what flowtrace's build, demo and tests need on a fresh Debian
# machine of this kind, and only what is missing. Safe to run repeatedly.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have clang-19 || need+=(clang-19 llvm-19)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
have bpftool || need+=(bpftool)
have nft || need+=(nftables)
have ip || need+=(iproute2)
have ping || need+=(iputils-ping)
have nc || need+=(netcat-openbsd)
have iperf3 || need+=(iperf3)
have tcpdump || need+=(tcpdump)

if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "missing packages: ${need[*]} (run as root, or: apt-get install ${need[*]})" >&2
		exit 1
	fi
	echo "installing: ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >/dev/null
	# The first install on a fresh machine can hit a transient dpkg error;
	# a second run completes it.
	apt-get install -y -q "${need[@]}" >/dev/null || apt-get install -y -q "${need[@]}" >/dev/null
fi

if ! have go && [ -x /usr/local/go/bin/go ]; then
	export PATH=/usr/local/go/bin:$PATH
fi
if ! have go; then
	echo "Go is missing: install Go 1.26 (/usr/local/go)" >&2
	exit 1
fi

# bpffs and tracefs are not mounted at boot on these machines.
if [ "$(id -u)" = 0 ]; then
	mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf || true
fi
