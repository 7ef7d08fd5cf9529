#!/usr/bin/env bash
# Reproduces the figures of docs/PERFORMANCE.md on this machine, loopback only:
#   1. a store filled to about 110,000 tickets, and mailgate's peak RSS (its own memory and
#      the mapped database file, apart);
#   2. the rate with a small store (from 1,000 tickets) against the rate with the big one, in
#      alternating rounds on two daemons, so that whatever else the machine does hits both;
#   3. the floor (a go-smtp server that discards) and mailgate in one run of mailgate-load.
# Each mailgate runs from a throwaway config in a temporary directory: durable commits on the
# disk that holds $TMPDIR, full SPF/DKIM/DMARC verification against mailgate-load's DNS
# responder, which publishes the records of the key it signs with.
#
#   bash cmd/mailgate-load/bench.sh                          # the documented run (~166,000 messages)
#   N=2000 STORED=5000 M=1000 bash cmd/mailgate-load/bench.sh   # a quick look
#   MAILGATE=/tmp/old/mailgate N=10000 STORED=200 M=200 ROUNDS=1 bash cmd/mailgate-load/bench.sh
#                                                              # another build of mailgate
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-20000}             # messages in the floor/mailgate run
STORED=${STORED:-110000}  # messages sent to the big store before its rounds
M=${M:-5000}              # messages per alternating round
ROUNDS=${ROUNDS:-3}
C=${C:-8}                 # connections
SIZE=${SIZE:-8192}        # bytes per message
KEY=${KEY:-ed25519}       # DKIM key kind: ed25519 or rsa
SMALL=${SMALL:-127.0.0.1:2625}
BIG=${BIG:-127.0.0.1:2626}
DNS=${DNS:-127.0.0.1:5354}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mailgate-bench.XXXXXX")
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT

# MAILGATE=path/to/mailgate measures a binary built elsewhere (an A/B against another commit).
if [ -n "${MAILGATE:-}" ]; then cp "$MAILGATE" "$WORK/mailgate"; else go build -o "$WORK/mailgate" ./cmd/mailgate; fi
go build -o "$WORK/mailgate-load" ./cmd/mailgate-load

# start NAME ADDR: a daemon with its own data dir and key; sets $started to its pid.
start() {
	local dir="$WORK/$1"
	mkdir -p "$dir"
	head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/data.key"
	chmod 600 "$dir/data.key"
	cat > "$dir/mailgate.toml" <<TOML
hostname = "mx.bench.test"
data_dir = "$dir/data"
key_file = "$dir/data.key"

[smtp]
listen = ["$2"]
max_conns_per_ip = 1000                 # every client is 127.0.0.1
messages_per_minute_per_ip = 100000000

[dns]
resolver = "$DNS"                       # mailgate-load -dns-serve answers for load.example

[[queue]]
name = "support"
address = "support@bench.test"

[outbound]
dkim_domain = "bench.test"

[web]
listen = "127.0.0.1:0"

[metrics]
listen = "127.0.0.1:0"                  # two daemons may run at once
TOML
	: > "$dir/serve.out"
	"$WORK/mailgate" serve -config "$dir/mailgate.toml" > "$dir/serve.out" 2> "$dir/serve.log" &
	started=$!
	pids+=("$started")
	for _ in $(seq 100); do grep -q '^ready$' "$dir/serve.out" && return; sleep 0.1; done
	cat "$dir/serve.out" "$dir/serve.log"
	exit 1
}

start small "$SMALL"; small=$started
start big "$BIG"; big=$started

echo "== machine"
echo "$(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(free -g | awk '/Mem:/{print $2}') GB RAM; $(uname -sr); $(go version | cut -d' ' -f3)"
echo "data on: $(df -h "$WORK" | awk 'NR==2{print $1, $2}'); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# load ADDR PID ARGS...
# Every run signs with a new key, published under a new selector: mailgate caches DNS answers,
# so a new key under an old selector would fail DKIM for a minute, as after a careless rotation.
runs=0
load() {
	local addr=$1 pid=$2
	shift 2
	runs=$((runs + 1))
	"$WORK/mailgate-load" -addr "$addr" -to support@bench.test -c "$C" -size "$SIZE" -dkim-gen "$KEY" -dkim-selector "load$runs" -dns-serve "$DNS" -pid "$pid" "$@"
}
# rss PID NAME MESSAGES: peak memory, and the disk the store takes (database and segments,
# blocks actually allocated) per message it holds.
rss() {
	local data="$WORK/$2/data"
	local db segs
	db=$(du -B1 "$data/mailgate.db" | cut -f1)
	segs=$(du -sB1 "$data/mailgate.db.segments" 2>/dev/null | cut -f1)
	segs=${segs:-0}
	echo "$(grep -E 'VmHWM|RssAnon|RssFile' /proc/$1/status | tr -s ' \t' ' ' | paste -sd' '); database $((db >> 20)) MB + segments $((segs >> 20)) MB = $(((db + segs) / $3)) bytes per message ($3 messages)"
}

echo "== warm-up: 1,000 messages to the small store"
load "$SMALL" "$small" -n 1000 | tail -n +3
echo "== 1. filling the big store: $STORED messages"
load "$BIG" "$big" -n "$STORED" | tail -n +3
rss "$big" big "$STORED"
echo "== 2. small store against big store, $ROUNDS alternating rounds of $M messages"
# Every message opens a ticket, so the counts are the tickets stored.
in_small=1000
in_big=$STORED
# The order alternates (small then big, big then small, ...): a machine that slows down or
# speeds up over the run would otherwise always favour the store measured first.
small_round() {
	echo "round $r: small store, $in_small tickets"
	load "$SMALL" "$small" -n "$M" | tail -n +3
}
big_round() {
	echo "round $r: big store, $in_big tickets"
	load "$BIG" "$big" -n "$M" | tail -n +3
}
for r in $(seq "$ROUNDS"); do
	if [ $((r % 2)) = 1 ]; then small_round; big_round; else big_round; small_round; fi
	in_small=$((in_small + M))
	in_big=$((in_big + M))
done
echo "== 3. floor and mailgate (small store, $in_small tickets), $N messages each, $C connections, $SIZE bytes, DKIM ($KEY)"
load "$SMALL" "$small" -floor -n "$N"
rss "$small" small "$((in_small + N))"
rss "$big" big "$in_big"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
