#!/usr/bin/env bash
# make demo: the built-in lab end to end. Brings up the two-node lab, runs the
# agent in the first node's namespace, makes traffic (a policy-blocked
# connection, a closed port, a Service, a Service without endpoints, a packet
# too big for the overlay), shows what `flowtrace observe` reports for each,
# and tears everything down.
set -euo pipefail
BIN=$(realpath "${1:-bin/flowtrace}")
PREFIX=${FLOWTRACE_LAB_PREFIX:-ft}
WORK=$(mktemp -d /tmp/flowtrace-demo.XXXXXX)
SOCK=$WORK/flowtrace.sock
IDS=$WORK/identity.json
AGENT_PID=
SERVERS=()

if [ "$(id -u)" != 0 ]; then
	echo "make demo needs root (network namespaces, BPF)" >&2
	exit 1
fi

cleanup() {
	[ ${#SERVERS[@]} -gt 0 ] && kill "${SERVERS[@]}" 2>/dev/null || true
	[ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null || true
	"$BIN" lab down --prefix "$PREFIX" --identity-file "$IDS" >/dev/null 2>&1 || true
	rm -rf "$WORK"
}
trap cleanup EXIT

inpod() { local ns=$1; shift; ip netns exec "$PREFIX-$ns" "$@"; }
# serve starts a server in a pod in the background. Not through inpod: a
# backgrounded function is a subshell, $! its pid, and killing it left the
# server running (and the pod's namespace alive) after the lab was gone.
serve() { local ns=$1; shift; ip netns exec "$PREFIX-$ns" "$@" >/dev/null 2>&1 & SERVERS+=($!); }
say() { printf '\n\033[1m%s\033[0m\n' "$*"; }

say "# flowtrace lab up"
"$BIN" lab up --prefix "$PREFIX" --identity-file "$IDS"

# A new lab's interfaces send IPv6 MLD reports for a couple of seconds;
# nothing listens for them, so the kernel drops them (NOT_SPECIFIED in
# ip6_mc_input). Real drops, but not what this demo is about.
sleep 2

say "# ip netns exec $PREFIX-node flowtrace agent ...   (log: $WORK/agent.log)"
ip netns exec "$PREFIX-node" "$BIN" agent --socket "$SOCK" --identity-file "$IDS" --node-name lab-node >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 100); do
	"$BIN" status --server "$SOCK" >/dev/null 2>&1 && break
	kill -0 "$AGENT_PID" 2>/dev/null || { cat "$WORK/agent.log"; echo "agent exited" >&2; exit 1; }
	sleep 0.1
done
"$BIN" status --server "$SOCK"

say "# traffic"
serve backend nc -l -k 10.244.0.20 8080
serve backend2 nc -l -k 10.244.0.21 8080
sleep 0.3
echo "frontend -> db:5432 (a NetworkPolicy-like nftables rule drops it):"
inpod frontend nc -z -w 2 10.244.0.30 5432 || echo "  connection timed out"
echo "frontend -> backend:9999 (nothing listens there):"
inpod frontend nc -z -w 2 10.244.0.20 9999 || echo "  connection refused"
echo "frontend -> shop/web 10.96.0.10:80 (kube-proxy DNATs it to a backend :8080):"
inpod frontend nc -z -w 2 10.96.0.10 80 && echo "  connected"
echo "frontend -> shop/ghost 10.96.0.20:80 (a Service without endpoints):"
inpod frontend nc -z -w 2 10.96.0.20 80 || echo "  connection refused"
echo "frontend -> api on lab-node2, 300 kB over TCP (pods send 1500-byte packets; the overlay carries 1350):"
serve api nc -l 10.244.1.10 8080
sleep 0.3
head -c 300000 /dev/zero | inpod frontend nc -N -w 3 10.244.1.10 8080 && echo "  sent (TCP learned the path MTU from the ICMP error)"
kill "${SERVERS[@]}" 2>/dev/null || true
SERVERS=()
sleep 0.5

say "# flowtrace observe --verdict DROPPED"
echo "# which packets the kernel dropped, where, why, and between which pods:"
"$BIN" observe --server "$SOCK" --verdict DROPPED --last 20

say "# flowtrace observe --verdict TRANSLATED"
echo "# each connection through a Service: the VIP the client used and the backend it reached:"
"$BIN" observe --server "$SOCK" --verdict TRANSLATED --last 20

say "# flowtrace observe --verdict MTU_EXCEEDED"
echo "# a packet too big for its path, the device whose MTU it exceeds, and the ICMP error that went back:"
"$BIN" observe --server "$SOCK" --verdict MTU_EXCEEDED --last 20

say "# flowtrace observe --to-service shop/web --last 6"
echo "# the Service stays on the connection's flows after DNAT, at the backend too:"
"$BIN" observe --server "$SOCK" --to-service shop/web --last 6 2>/dev/null || "$BIN" observe --server "$SOCK" --last 6

say "# flowtrace lab down"
