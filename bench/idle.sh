#!/usr/bin/env bash
# Idle cost of `nexstor dev`: start the dev system (NODES nodes and the demo
# volume, as `nexstor dev` runs them, in a scratch directory), wait until
# it is ready and has settled, then sample the process's user+system CPU
# time (/proc/PID/stat utime+stime) over WINDOW seconds, COUNT times, with
# nothing driving it. Prints, per window, the CPU used as a percentage of
# one core and the resident set size (VmRSS) at the end of the window, then
# the median, and the goal verdict of this tree's system (under 0.5 % of
# one core); the machine's load average is printed with every window, as
# other processes slow the clock ticks down only when the CPUs are short.
#
# With -b REV, a second system built from git revision REV (the baseline)
# runs beside it, on its own ports and data, and both are sampled over the
# same windows: a shared machine's load then weighs on both alike.
#
# Usage: bench/idle.sh [-n NODES] [-w WINDOW] [-k COUNT] [-s SETTLE] [-b REV] [-d DIR] [-P]
#   -n NODES   storage nodes (default 3, `nexstor dev`'s default)
#   -w WINDOW  seconds per sample (default 60)
#   -k COUNT   samples (default 3)
#   -s SETTLE  seconds to wait after the nodes have joined and the banner
#              is out, before the first sample (default 20)
#   -b REV     also run the system of git revision REV (a commit, a branch)
#              beside this tree's, ports moved up by 1000; each runs with
#              its own default for the Go runtime's monitor (`nexstor dev`
#              kept it on its steady schedule from e5b9583 to just before
#              c8fdb21): export GODEBUG=schedtrace=0, or =2147483647, to
#              run both alike
#   -d DIR     scratch directory for the binaries and the dev system
#              (default: a new one under ${TMPDIR:-/var/tmp}); removed
#              afterwards unless KEEP=1
#   -P         run the system under bench/devpprof (the same system, plus a
#              pprof listener), take a CPU profile over one more window and
#              print its top (cumulative and flat)
# Ports: see BENCH_PORT_BASE in bench/lib.sh; metrics are served, as by
# `nexstor dev`, on base+502 (node i: +i), and never scraped. Needs go, jq,
# awk (and git, tar with -b).
set -euo pipefail
export LC_ALL=C

NODES=3
WINDOW=60
COUNT=3
SETTLE=20
DIR=""
PROFILE=0
BASE=""
while getopts "n:w:k:s:b:d:Ph" opt; do
	case $opt in
	n) NODES=$OPTARG ;;
	w) WINDOW=$OPTARG ;;
	k) COUNT=$OPTARG ;;
	s) SETTLE=$OPTARG ;;
	b) BASE=$OPTARG ;;
	d) DIR=$OPTARG ;;
	P) PROFILE=1 ;;
	*) sed -n '2,36p' "$0"; exit 2 ;;
	esac
done
[ "$WINDOW" -ge 1 ] && [ "$COUNT" -ge 1 ] && [ "$NODES" -ge 1 ] ||
	{ echo "idle.sh: -n, -w and -k must be at least 1" >&2; exit 2; }

for tool in go jq awk $([ -z "$BASE" ] || echo git tar); do
	command -v "$tool" >/dev/null || { echo "idle.sh: $tool is missing" >&2; exit 1; }
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PORT_BASE=${BENCH_PORT_BASE:-21000}
if [ -z "$DIR" ]; then
	DIR=$(mktemp -d "${TMPDIR:-/var/tmp}/nexstor-idle-bench.XXXXXX")
else
	mkdir -p "$DIR"
fi
# PIDS and NAMES: the systems running, this tree's first.
PIDS=()
NAMES=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	[ -n "${KEEP:-}" ] || rm -rf "$DIR"
}
trap cleanup EXIT
log() { echo "idle.sh: $*" >&2; }

log "building into $DIR/bin"
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$DIR/bin/" ./cmd/nexstor ./cmd/nexctl ./bench/devpprof)
if [ -n "$BASE" ]; then
	BASE_REV=$(git -C "$ROOT" rev-parse --short "$BASE^{commit}")
	log "building $BASE ($BASE_REV) into $DIR/base/bin"
	mkdir -p "$DIR/base/src"
	git -C "$ROOT" archive "$BASE_REV" | tar -x -C "$DIR/base/src"
	(cd "$DIR/base/src" && CGO_ENABLED=0 go build -o "$DIR/base/bin/" ./cmd/nexstor ./cmd/nexctl)
fi

# start BINDIR DATA PORTBASE [pprof] starts a dev system (bench/lib.sh's
# dev_start, with metrics on as in `nexstor dev`) and waits for its banner.
start() {
	local bin=$1 data=$2 how=${4:-}
	BENCH_PORT_BASE=$3
	. "$ROOT/bench/lib.sh"
	DEV_METRICS_PORT=$((DEV_PORT_BASE + 502))
	if ! dev_start "$bin" "$data" "$NODES" 1GiB "$how"; then
		[ -z "$DEV_PID" ] || PIDS+=("$DEV_PID")
		exit 1
	fi
	PIDS+=("$DEV_PID")
	# Ready: `nexstor dev` prints its banner once the demo volume is
	# published (devpprof prints "ready").
	for _ in $(seq 1200); do
		grep -q -e 'is running' -e '^ready$' "$data.out" 2>/dev/null && return 0
		kill -0 "$DEV_PID" 2>/dev/null || break
		sleep 0.1
	done
	log "the dev system of $bin did not come up; the end of its log ($data.log):"
	tail -n 20 "$data.log" >&2
	exit 1
}

log "starting the dev system ($NODES nodes)"
start "$DIR/bin" "$DIR/dev" "$PORT_BASE" "$([ "$PROFILE" = 1 ] && echo pprof)"
NAMES+=("this tree")
PPROF_ADDR=$DEV_PPROF
if [ -n "$BASE" ]; then
	log "starting the dev system of $BASE ($NODES nodes)"
	start "$DIR/base/bin" "$DIR/base/dev" $((PORT_BASE + 1000))
	if [ "${BASE#"$BASE_REV"}" = "$BASE" ]; then
		NAMES+=("$BASE ($BASE_REV)")
	else
		NAMES+=("$BASE")
	fi
fi
. "$ROOT/bench/lib.sh" # machine_line, median, cpu_ticks
log "ready; settling for $SETTLE s"
sleep "$SETTLE"

HZ=$(getconf CLK_TCK)
rss_mib() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
threads() { awk '/^Threads:/ { print $2 }' "/proc/$1/status"; }

echo "$(machine_line); $NODES nodes, demo volume published, ${WINDOW}s windows"
echo
echo "| window | system | CPU % of one core | RSS MiB | threads | load average (1 5 15 min) |"
echo "|---:|---|---:|---:|---:|---|"
declare -A PCTS RSSS
for i in $(seq "$COUNT"); do
	c0=()
	for p in "${PIDS[@]}"; do c0+=("$(cpu_ticks "$p")"); done
	t0=$EPOCHREALTIME
	sleep "$WINDOW"
	c1=()
	for p in "${PIDS[@]}"; do c1+=("$(cpu_ticks "$p")"); done
	t1=$EPOCHREALTIME
	us=$((${t1/./} - ${t0/./}))
	load=$(cut -d' ' -f1-3 /proc/loadavg)
	for j in "${!PIDS[@]}"; do
		pct=$(awk -v t=$((c1[j] - c0[j])) -v hz="$HZ" -v us="$us" 'BEGIN { printf "%.2f", 100 * t / hz / (us / 1e6) }')
		rss=$(rss_mib "${PIDS[j]}")
		echo "| $i | ${NAMES[j]} | $pct | $rss | $(threads "${PIDS[j]}") | $load |"
		PCTS[$j]+="$pct "
		RSSS[$j]+="$rss "
	done
done
echo
for j in "${!PIDS[@]}"; do
	echo "Median, ${NAMES[j]}: $(echo "${PCTS[$j]}" | median) % of one core, $(echo "${RSSS[$j]}" | median) MiB resident."
done
echo
echo "- ${NAMES[0]}: median $(echo "${PCTS[0]}" | median) % of one core, idle (goal < 0.5 %): $(echo "${PCTS[0]}" | median | awk '{ print ($1 < 0.5 ? "met" : "**missed**") }')"

if [ "$PROFILE" = 1 ]; then
	log "taking a CPU profile over $WINDOW s"
	go tool pprof -proto "http://$PPROF_ADDR/debug/pprof/profile?seconds=$WINDOW" >"$DIR/idle.pprof" 2>/dev/null
	echo
	echo "#### CPU profile of this tree's system over ${WINDOW}s: top by cumulative time"
	echo
	echo '```'
	go tool pprof -top -cum -nodecount=40 "$DIR/idle.pprof" 2>/dev/null | sed -n '4,48p'
	echo '```'
	[ -z "${KEEP:-}" ] || log "profile: $DIR/idle.pprof"
fi
echo
echo "Reproduce: bench/idle.sh -n $NODES -w $WINDOW -k $COUNT -s $SETTLE${BASE:+ -b $BASE}$([ "$PROFILE" = 1 ] && echo " -P")"
