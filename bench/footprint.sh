#!/usr/bin/env bash
# Footprint of a node holding many shared replicas: start a standalone
# `nexstor server` (one sparse file pool, NVMe/TCP on loopback, no metrics
# listener), create REPLICAS thin replicas and share each over NVMe/TCP
# (one subsystem per replica), let it settle, then sample the process's
# user+system CPU time (/proc/PID/stat utime+stime) over WINDOW seconds,
# COUNT times, with nothing driving it, and its resident set (VmRSS). Then
# the server is stopped and started again on the same data (every replica
# imported and shared again) and sampled once more. Prints Markdown: the
# time to create and share, the restart time, and per window the CPU used
# as a percentage of one core, RSS and threads, with the load average, and
# the goal verdicts: under 128 MiB resident, and about zero idle CPU (a
# median under 0.05 % of one core: fewer than three clock ticks a minute,
# room for a garbage collection but not for anything that wakes on a
# schedule; with a short -w one tick is more than that, so read the verdict
# of a quick run as noise).
#
# Usage: bench/footprint.sh [-r REPLICAS] [-w WINDOW] [-k COUNT] [-s SETTLE] [-d DIR] [-G SETTING]
#   -r REPLICAS  replicas to create and share (default 1000)
#   -w WINDOW    seconds per sample (default 60)
#   -k COUNT     samples (default 3)
#   -s SETTLE    seconds to wait after the last share (default 10)
#   -d DIR       scratch directory (default: a new one under
#                ${TMPDIR:-/var/tmp}); removed afterwards unless KEEP=1
#   -G SETTING   run the server with GODEBUG=SETTING, e.g. schedtrace=0
#                for the runtime's default monitor, as `nexstor server
#                --steady-monitor=false` runs (see docs/config.md)
# Ports: BENCH_PORT_BASE (default 21000) + 124 (gRPC) and + 420 (NVMe/TCP).
# Needs go and awk.
set -euo pipefail
export LC_ALL=C

REPLICAS=1000
WINDOW=60
COUNT=3
SETTLE=10
DIR=""
GODEBUG_SETTING=""
while getopts "r:w:k:s:d:G:h" opt; do
	case $opt in
	r) REPLICAS=$OPTARG ;;
	w) WINDOW=$OPTARG ;;
	k) COUNT=$OPTARG ;;
	s) SETTLE=$OPTARG ;;
	d) DIR=$OPTARG ;;
	G) GODEBUG_SETTING=$OPTARG ;;
	*) sed -n '2,29p' "$0"; exit 2 ;;
	esac
done
[ "$REPLICAS" -ge 1 ] && [ "$WINDOW" -ge 1 ] && [ "$COUNT" -ge 1 ] ||
	{ echo "footprint.sh: -r, -w and -k must be at least 1" >&2; exit 2; }
for tool in go awk; do
	command -v "$tool" >/dev/null || { echo "footprint.sh: $tool is missing" >&2; exit 1; }
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh" # machine_line, median, cpu_ticks
PORT_BASE=${BENCH_PORT_BASE:-21000}
GRPC=127.0.0.1:$((PORT_BASE + 124))
NVMF=127.0.0.1:$((PORT_BASE + 420))
if [ -z "$DIR" ]; then
	DIR=$(mktemp -d "${TMPDIR:-/var/tmp}/nexstor-footprint-bench.XXXXXX")
else
	mkdir -p "$DIR"
fi
PID=""
stop_server() {
	[ -n "$PID" ] || return 0
	kill "$PID" 2>/dev/null || true
	wait "$PID" 2>/dev/null || true
	PID=""
}
cleanup() {
	stop_server
	[ -n "${KEEP:-}" ] || rm -rf "$DIR"
}
trap cleanup EXIT
log() { echo "footprint.sh: $*" >&2; }

log "building into $DIR/bin"
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$DIR/bin/" ./cmd/nexstor ./cmd/nexctl)
nexctl() { "$DIR/bin/nexctl" --engine "$GRPC" "$@"; }

# start_server starts the server on DIR/data and waits until it serves;
# sets STARTED to the seconds that took.
start_server() {
	local t0=$EPOCHREALTIME
	if nexctl pool list >/dev/null 2>&1; then
		log "something already answers on $GRPC: stop it, or move the ports with BENCH_PORT_BASE"
		exit 1
	fi
	env ${GODEBUG_SETTING:+GODEBUG="$GODEBUG_SETTING"} "$DIR/bin/nexstor" server --insecure --data-dir "$DIR/data" --grpc "$GRPC" --nbd "" \
		--nvmf "$NVMF" --discovery "" --metrics "" >>"$DIR/server.log" 2>&1 &
	PID=$!
	for _ in $(seq 6000); do
		if nexctl pool list >/dev/null 2>&1; then
			STARTED=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
			return 0
		fi
		kill -0 "$PID" 2>/dev/null || break
		sleep 0.05
	done
	log "the server did not come up; the end of its log:"
	tail -n 20 "$DIR/server.log" >&2
	exit 1
}

HZ=$(getconf CLK_TCK)
rss_mib() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
threads() { awk '/^Threads:/ { print $2 }' "/proc/$1/status"; }
# sample NAME samples the server over one window and prints a table row.
PCTS=""
RSSS=""
sample() {
	local c0 c1 t0 t1 us pct rss
	c0=$(cpu_ticks "$PID")
	t0=$EPOCHREALTIME
	sleep "$WINDOW"
	c1=$(cpu_ticks "$PID")
	t1=$EPOCHREALTIME
	us=$((${t1/./} - ${t0/./}))
	pct=$(awk -v t=$((c1 - c0)) -v hz="$HZ" -v us="$us" 'BEGIN { printf "%.3f", 100 * t / hz / (us / 1e6) }')
	rss=$(rss_mib "$PID")
	echo "| $1 | $pct | $rss | $(threads "$PID") | $(cut -d' ' -f1-3 /proc/loadavg) |"
	PCTS+="$pct "
	RSSS+="$rss "
}

log "starting the server"
start_server
nexctl pool create p0 "file://$DIR/p0.img?size=$((REPLICAS * 16 + 1024))MiB" >/dev/null
rss0=$(rss_mib "$PID")
log "creating and sharing $REPLICAS replicas"
t0=$EPOCHREALTIME
for i in $(seq "$REPLICAS"); do
	nexctl replica create "r$i" --pool p0 --size 16MiB --thin >/dev/null
	nexctl replica share "r$i" --protocol nvmf >/dev/null
done
made=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
shared=$(nexctl replica list -o json | grep -c '^    "share": {' || true)
[ "$shared" -eq "$REPLICAS" ] || { log "$shared replicas shared, want $REPLICAS"; exit 1; }
log "settling for $SETTLE s"
sleep "$SETTLE"

echo "$(machine_line); $REPLICAS thin replicas of 16 MiB, each shared over NVMe/TCP, ${WINDOW}s windows${GODEBUG_SETTING:+; server run with GODEBUG=$GODEBUG_SETTING}"
echo
echo "Server RSS with the pool and no replica: $rss0 MiB. Creating and sharing $REPLICAS replicas through nexctl (two calls each): $made s."
echo
echo "| window | CPU % of one core | RSS MiB | threads | load average (1 5 15 min) |"
echo "|---|---:|---:|---:|---|"
for i in $(seq "$COUNT"); do sample "$i"; done
stop_server
start_server
restart=$STARTED
shared=$(nexctl replica list -o json | grep -c '^    "share": {' || true)
[ "$shared" -eq "$REPLICAS" ] || { log "after the restart $shared replicas shared, want $REPLICAS"; exit 1; }
sleep "$SETTLE"
sample "after a restart"
echo
echo "Median: $(echo "$PCTS" | median) % of one core, $(echo "$RSSS" | median) MiB resident. After a restart on the same data the server answered in $restart s, with all $REPLICAS shares restored."
echo
rss_max=$(echo "$RSSS" | tr ' ' '\n' | awk 'NF' | sort -g | tail -n1)
echo "- resident set at most $rss_max MiB with $REPLICAS shared replicas (goal < 128 MiB): $(awk -v r="$rss_max" 'BEGIN { print (r < 128 ? "met" : "**missed**") }')"
cpu_med=$(echo "$PCTS" | median)
echo "- idle CPU median $cpu_med % of one core with $REPLICAS shared replicas (goal about zero: < 0.05 %): $(awk -v c="$cpu_med" 'BEGIN { print (c < 0.05 ? "met" : "**missed**") }')"
echo
echo "Reproduce: bench/footprint.sh -r $REPLICAS -w $WINDOW -k $COUNT -s $SETTLE${GODEBUG_SETTING:+ -G $GODEBUG_SETTING}"
