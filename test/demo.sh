#!/usr/bin/env bash
# make demo: the built-in lab end to end. Brings up the lab, runs the agent in
# the lab's node namespace, makes traffic (a policy-blocked connection and a
# closed port), shows what `flowtrace observe --verdict DROPPED` reports, and
# tears everything down.
set -euo pipefail
BIN=$(realpath "${1:-bin/flowtrace}")
PREFIX=${FLOWTRACE_LAB_PREFIX:-ft}
WORK=$(mktemp -d /tmp/flowtrace-demo.XXXXXX)
SOCK=$WORK/flowtrace.sock
IDS=$WORK/identity.json
AGENT_PID=

if [ "$(id -u)" != 0 ]; then
	echo "make demo needs root (network namespaces, BPF)" >&2
	exit 1
fi

cleanup() {
	[ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null || true
	"$BIN" lab down --prefix "$PREFIX" --identity-file "$IDS" >/dev/null 2>&1 || true
	rm -rf "$WORK"
}
trap cleanup EXIT

inpod() { local ns=$1; shift; ip netns exec "$PREFIX-$ns" "$@"; }
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

say "# traffic: frontend -> backend:8080 (allowed), frontend -> db:5432 (blocked by policy), frontend -> backend:9999 (closed port)"
inpod backend nc -l -k 10.244.0.20 8080 >/dev/null 2>&1 &
NC_PID=$!
sleep 0.3
inpod frontend sh -c 'echo hello | nc -N -w 2 10.244.0.20 8080' || true
inpod frontend nc -z -w 2 10.244.0.30 5432 || echo "frontend -> db:5432: connection timed out (dropped)"
inpod frontend nc -z -w 2 10.244.0.20 9999 || echo "frontend -> backend:9999: connection refused"
kill "$NC_PID" 2>/dev/null || true
sleep 0.5

say "# flowtrace observe --verdict DROPPED"
"$BIN" observe --server "$SOCK" --verdict DROPPED --last 20

say "# flowtrace observe --pod shop/frontend --last 8"
"$BIN" observe --server "$SOCK" --pod shop/frontend --last 8

say "# flowtrace lab down"
