#!/usr/bin/env bash
# Reproduces the figures of docs/PERFORMANCE.md on this machine, loopback only:
#   1. the floor (a go-smtp server that discards) and mailgate in one run of mailgate-load;
#   2. the rate with about 1,000 tickets stored, then again after STORED more messages, with
#      mailgate's peak RSS (split into its own memory and the mapped database file).
# mailgate runs from a throwaway config in a temporary directory: durable commits on the disk
# that holds $TMPDIR, full SPF/DKIM/DMARC verification against mailgate-load's DNS responder.
#
#   bash cmd/mailgate-load/bench.sh                 # the README's figures (about 112,000 messages)
#   N=2000 STORED=5000 bash cmd/mailgate-load/bench.sh   # a quick look
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-20000}             # messages per measured run
STORED=${STORED:-89000}   # messages sent between the two measurements of the store's growth
C=${C:-8}                 # connections
SIZE=${SIZE:-8192}        # bytes per message
KEY=${KEY:-ed25519}       # DKIM key kind: ed25519 or rsa
SMTP=${SMTP:-127.0.0.1:2625}
DNS=${DNS:-127.0.0.1:5354}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mailgate-bench.XXXXXX")
pid=""
cleanup() {
	if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
	rm -rf "$WORK"
}
trap cleanup EXIT

go build -o "$WORK/mailgate" ./cmd/mailgate
go build -o "$WORK/mailgate-load" ./cmd/mailgate-load
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$WORK/data.key"
chmod 600 "$WORK/data.key"
cat > "$WORK/mailgate.toml" <<TOML
hostname = "mx.bench.test"
data_dir = "$WORK/data"
key_file = "$WORK/data.key"

[smtp]
listen = ["$SMTP"]
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
TOML

"$WORK/mailgate" serve -config "$WORK/mailgate.toml" > "$WORK/serve.out" 2> "$WORK/serve.log" &
pid=$!
for _ in $(seq 100); do grep -q '^ready$' "$WORK/serve.out" && break; sleep 0.1; done
grep -q '^ready$' "$WORK/serve.out" || { cat "$WORK/serve.out" "$WORK/serve.log"; exit 1; }

echo "== machine"
echo "$(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(free -g | awk '/Mem:/{print $2}') GB RAM; $(uname -sr); $(go version | cut -d' ' -f3)"
echo "data on: $(df -h "$WORK" | awk 'NR==2{print $1, $2}'); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

load() { "$WORK/mailgate-load" -addr "$SMTP" -to support@bench.test -c "$C" -size "$SIZE" -dkim-gen "$KEY" -dns-serve "$DNS" -pid "$pid" "$@"; }
rss() { grep -E 'VmHWM|RssAnon|RssFile' /proc/$pid/status | tr -s ' \t' ' ' | paste -sd' '; echo "database: $(du -h "$WORK/data/mailgate.db" | cut -f1)"; }

echo "== warm-up: 1,000 messages"
load -n 1000 | tail -n +3
echo "== 1. floor and mailgate, $N messages each, $C connections, $SIZE bytes, DKIM ($KEY), about 1,000 tickets stored"
load -floor -n "$N"
rss
echo "== filling the store: $STORED more messages"
load -n "$STORED" | tail -n +3
echo "== 2. mailgate with $((1000 + N + STORED)) tickets stored, $N messages"
load -n "$N" | tail -n +3
rss
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
