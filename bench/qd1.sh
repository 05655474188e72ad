#!/usr/bin/env bash
# QD1 latency, server CPU per I/O and QD32 throughput through NBD.
#
# Targets, side by side, each workload on all of them in turn (A B A B):
#   raw:    fio on a plain file, ioengine=io_uring direct=1 (the floor);
#   nbdkit: nbdkit's file plugin, cache=none (see -c), on a plain file;
#   new:    `nexstor server` built from this tree, a uring:// pool (O_DIRECT; see -c),
#           a thin replica shared over NBD;
#   old:    the same, built from git revision REV (only with -B REV).
# NBD targets are driven by fio's nbd engine (libnbd). Every target is
# pre-filled first, so that reads hit allocated clusters. Each server runs
# with its build's default for the Go runtime's monitor (steady from
# e5b9583 on, except c8fdb21 to 9fe711d; see docs/config.md,
# --steady-monitor): export GODEBUG=schedtrace=0, or =2147483647, to run
# old and new alike.
#
# For each workload it prints the medians over the rounds: IOPS, p50 and p99
# of the total latency (lat_ns), the latency added over raw at p50 and p99,
# IOPS as a ratio of raw, and for the servers: CPU per I/O (utime+stime of
# the whole process over the I/Os of the run), context switches per I/O
# (voluntary+involuntary, all threads; not for nbdkit), and with -S the system calls per I/O
# (one extra strace -c -f run per server and workload, not timed); then the
# goal verdicts of new: QD1 p50 at most 30 µs over raw, QD32 IOPS at least
# 0.5x raw, server CPU per I/O at QD1 no higher than at QD32.
#
# Usage: bench/qd1.sh [-d DIR] [-s SIZE_MIB] [-t SECONDS] [-r ROUNDS] [-B REV] [-S] [-W NAMES] [-c MODE]
#   -d DIR       scratch directory (default: new under ${TMPDIR:-/var/tmp})
#   -s SIZE_MIB  size of every target (default 256)
#   -t SECONDS   runtime per run (default 10, plus 1 s ramp)
#   -r ROUNDS    rounds; medians are reported (default 3)
#   -B REV       also measure nexstor built from git revision REV ("old")
#   -S           count system calls per I/O with strace (extra runs)
#   -W NAMES     the workloads, comma-separated (default: the four 4 KiB
#                ones); write-1m-qd8 (1 MiB sequential writes at QD8, goal
#                0.9x raw) is there for before/after runs of the large-I/O
#                path with -B (raw's buffers are on 4 KiB pages: see
#                nbd.sh's raw-uring-huge for the fair raw baseline)
#   -c MODE      direct (default): the pools are opened with O_DIRECT and
#                nbdkit runs with cache=none; buffered: the pools with
#                direct=false and nbdkit with its default cache, both through
#                the page cache (raw stays io_uring direct=1, the floor)
set -euo pipefail

SIZE_MIB=256
RUNTIME=10
RAMP=1
ROUNDS=3
DIR=""
BASE=""
STRACE=""
ONLY=""
CACHE=direct
while getopts "d:s:t:r:B:SW:c:h" opt; do
	case $opt in
	d) DIR=$OPTARG ;;
	s) SIZE_MIB=$OPTARG ;;
	t) RUNTIME=$OPTARG ;;
	r) ROUNDS=$OPTARG ;;
	B) BASE=$OPTARG ;;
	S) STRACE=1 ;;
	W) ONLY=$OPTARG ;;
	c) CACHE=$OPTARG ;;
	*) sed -n '2,41p' "$0"; exit 2 ;;
	esac
done
case $CACHE in
direct) POOL_Q="" NBDKIT_CACHE="cache=none" ;;
buffered) POOL_Q="&direct=false" NBDKIT_CACHE="" ;;
*) echo "qd1.sh: -c $CACHE: want direct or buffered" >&2; exit 2 ;;
esac

for tool in fio nbdkit nbdinfo jq go awk; do
	command -v "$tool" >/dev/null || { echo "qd1.sh: $tool is missing (apt-get install fio nbdkit libnbd-bin jq)" >&2; exit 1; }
done
[ -z "$STRACE" ] || command -v strace >/dev/null || { echo "qd1.sh: -S needs strace" >&2; exit 1; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
PORT_BASE=${BENCH_PORT_BASE:-22000}
TCK=$(getconf CLK_TCK)
[ -n "$DIR" ] || DIR=$(mktemp -d "${TMPDIR:-/var/tmp}/nexstor-qd1.XXXXXX")
mkdir -p "$DIR"
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	[ -n "${KEEP:-}" ] || rm -rf "$DIR"
}
trap cleanup EXIT
log() { echo "qd1.sh: $*" >&2; }
wait_for() {
	local what=$1
	shift
	for _ in $(seq 600); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	log "$what did not come up"
	cat "$DIR"/*.log >&2 2>/dev/null || true
	return 1
}

TARGETS=(raw nbdkit new)
log "building nexstor from this tree"
(cd "$ROOT" && CGO_ENABLED=0 go build -o "$DIR/new/" ./cmd/nexstor ./cmd/nexctl)
if [ -n "$BASE" ]; then
	log "building nexstor from $BASE"
	mkdir -p "$DIR/old-src"
	git -C "$ROOT" archive "$BASE" | tar -x -C "$DIR/old-src"
	(cd "$DIR/old-src" && CGO_ENABLED=0 go build -o "$DIR/old/" ./cmd/nexstor ./cmd/nexctl)
	TARGETS=(raw nbdkit old new)
fi

declare -A OPTS PID_OF
# start_nexstor NAME INDEX
start_nexstor() {
	local t=$1 i=$2 grpc=127.0.0.1:$((PORT_BASE + 124 + i)) nbd=127.0.0.1:$((PORT_BASE + 809 + i)) uri
	local ctl=("$DIR/$t/nexctl" --insecure --engine "$grpc")
	"$DIR/$t/nexstor" server --insecure --data-dir "$DIR/$t-data" --grpc "$grpc" --nbd "$nbd" --nvmf "" --discovery "" --metrics "" --log-level warn >>"$DIR/$t.log" 2>&1 &
	PIDS+=($!)
	PID_OF[$t]=$!
	wait_for "nexstor ($t)" "${ctl[@]}" version
	"${ctl[@]}" pool create p "uring://$DIR/pool-$t.img?size=$((SIZE_MIB + 256))MiB$POOL_Q" >/dev/null
	"${ctl[@]}" replica create r --pool p --size "${SIZE_MIB}MiB" --thin >/dev/null
	uri=$("${ctl[@]}" replica share r --protocol nbd | tail -n1)
	OPTS[$t]="--ioengine=nbd --uri=$uri"
}
i=0
for t in "${TARGETS[@]}"; do
	case $t in
	raw)
		truncate -s "${SIZE_MIB}M" "$DIR/raw.img"
		OPTS[raw]="--ioengine=io_uring --direct=1 --filename=$DIR/raw.img"
		PID_OF[raw]=""
		;;
	nbdkit)
		truncate -s "${SIZE_MIB}M" "$DIR/plain.img"
		nbdkit -f --exit-with-parent -i 127.0.0.1 -p $((PORT_BASE + 810)) file "$DIR/plain.img" $NBDKIT_CACHE &
		PIDS+=($!)
		PID_OF[nbdkit]=$!
		wait_for nbdkit nbdinfo "nbd://127.0.0.1:$((PORT_BASE + 810))"
		OPTS[nbdkit]="--ioengine=nbd --uri=nbd://127.0.0.1:$((PORT_BASE + 810))"
		;;
	*) start_nexstor "$t" $i ;;
	esac
	i=$((i + 1))
done
for t in "${TARGETS[@]}"; do
	log "pre-fill $t"
	# shellcheck disable=SC2086
	fio --name=prefill ${OPTS[$t]} --rw=write --bs=1m --iodepth=8 --size="${SIZE_MIB}m" --output-format=json >/dev/null
done

WORKLOADS=(
	"randread-4k-qd1|--rw=randread --bs=4k --iodepth=1"
	"randwrite-4k-qd1|--rw=randwrite --bs=4k --iodepth=1"
	"randread-4k-qd32|--rw=randread --bs=4k --iodepth=32"
	"randwrite-4k-qd32|--rw=randwrite --bs=4k --iodepth=32"
)
if [ -n "$ONLY" ]; then
	ALL=("${WORKLOADS[@]}" "write-1m-qd8|--rw=write --bs=1m --iodepth=8")
	WORKLOADS=()
	for n in ${ONLY//,/ }; do
		found=""
		for w in "${ALL[@]}"; do
			[ "${w%%|*}" = "$n" ] && WORKLOADS+=("$w") found=1
		done
		[ -n "$found" ] || { log "-W: no workload $n (there are: $(printf '%s ' "${ALL[@]%%|*}"))"; exit 2; }
	done
fi
COMMON="--numjobs=1 --size=${SIZE_MIB}m --time_based --runtime=$RUNTIME --ramp_time=$RAMP --randrepeat=0 --norandommap --lat_percentiles=1 --output-format=json"

ticks() { [ -n "$1" ] && awk '{ print $14 + $15 }' "/proc/$1/stat" || echo 0; }
ctxsw() { # voluntary + involuntary context switches of all threads of a process
	[ -n "$1" ] || { echo 0; return; }
	cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^(non)?voluntary_ctxt_switches/ { s += $2 } END { print s + 0 }'
}
declare -A IOPS P50 P99 CPU CSW SYS
run_one() { # run_one TARGET WORKLOAD
	local t=$1 w=$2 name opts out dir c0 c1 s0 s1 ios pid
	name=${w%%|*} opts=${w#*|} out="$DIR/$t-$name.json" dir=write
	[[ $name == randread* ]] && dir=read
	pid=${PID_OF[$t]}
	c0=$(ticks "$pid") s0=$(ctxsw "$pid")
	# shellcheck disable=SC2086
	fio --name="$name" ${OPTS[$t]} $opts $COMMON | sed -n '/^{/,$p' >"$out"
	c1=$(ticks "$pid") s1=$(ctxsw "$pid")
	[ "$(jq '.jobs[0].error' "$out")" = 0 ] || { log "$t $name: fio error"; cat "$out" >&2; exit 1; }
	# I/Os of the whole run, ramp included, to divide the server's counters by.
	ios=$(jq ".jobs[0].$dir.total_ios" "$out")
	ios=$(awk -v n="$ios" -v r="$RUNTIME" -v ramp="$RAMP" 'BEGIN { printf "%.0f", n * (r + ramp) / r }')
	IOPS[$t,$name]+="$(jq ".jobs[0].$dir.iops" "$out") "
	P50[$t,$name]+="$(jq ".jobs[0].$dir.lat_ns.percentile[\"50.000000\"] / 1000" "$out") "
	P99[$t,$name]+="$(jq ".jobs[0].$dir.lat_ns.percentile[\"99.000000\"] / 1000" "$out") "
	CPU[$t,$name]+="$(awk -v t=$((c1 - c0)) -v hz="$TCK" -v n="$ios" 'BEGIN { printf "%.1f", (n > 0 ? t / hz * 1e6 / n : 0) }') "
	CSW[$t,$name]+="$(awk -v s=$((s1 - s0)) -v n="$ios" 'BEGIN { printf "%.2f", (n > 0 ? s / n : 0) }') "
}
# strace_one TARGET WORKLOAD: system calls of the server per I/O.
strace_one() {
	local t=$1 w=$2 name opts out dir st calls
	name=${w%%|*} opts=${w#*|} out="$DIR/$t-$name-strace.json" st="$DIR/$t-$name.strace" dir=write
	[[ $name == randread* ]] && dir=read
	strace -c -f -p "${PID_OF[$t]}" -o "$st" 2>/dev/null &
	local sp=$!
	sleep 1
	# shellcheck disable=SC2086
	fio --name="$name" ${OPTS[$t]} $opts ${COMMON/--ramp_time=$RAMP/--ramp_time=0} --runtime=3 | sed -n '/^{/,$p' >"$out"
	kill -INT $sp
	wait $sp 2>/dev/null || true
	calls=$(awk '$NF == "total" { print $4 }' "$st")
	SYS[$t,$name]=$(awk -v c="$calls" -v n="$(jq ".jobs[0].$dir.total_ios" "$out")" 'BEGIN { printf "%.2f", (n > 0 ? c / n : 0) }')
}

for w in "${WORKLOADS[@]}"; do
	for r in $(seq "$ROUNDS"); do
		for t in "${TARGETS[@]}"; do
			log "${w%%|*}: $t (round $r of $ROUNDS)"
			run_one "$t" "$w"
		done
	done
	if [ -n "$STRACE" ]; then
		for t in "${TARGETS[@]}"; do
			[ -n "${PID_OF[$t]}" ] && strace_one "$t" "$w"
		done
	fi
done

GOALS=() # the goal verdicts of new, printed under the table
f1() { awk -v v="$1" 'BEGIN { printf "%.1f", v }'; }
f0() { awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }
echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, load average at the end $(cut -d' ' -f1-3 /proc/loadavg), cache mode $CACHE, ${SIZE_MIB} MiB on $(df -T "$DIR" | awk 'NR==2 { print $2 }'), ${RUNTIME} s per run, median of $ROUNDS rounds, $(fio --version), $(nbdkit --version | head -n1)${BASE:+, old = $(git -C "$ROOT" rev-parse --short "$BASE")}."
echo
echo "| workload | target | IOPS | ×raw | p50 µs | p99 µs | p50 added | p99 added | server CPU µs/IO | ctx sw/IO | syscalls/IO |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for w in "${WORKLOADS[@]}"; do
	n=${w%%|*}
	ri=$(median <<<"${IOPS[raw,$n]}") r50=$(median <<<"${P50[raw,$n]}") r99=$(median <<<"${P99[raw,$n]}")
	for t in "${TARGETS[@]}"; do
		io=$(median <<<"${IOPS[$t,$n]}") p50=$(median <<<"${P50[$t,$n]}") p99=$(median <<<"${P99[$t,$n]}")
		cpu="" csw="" sc=""
		if [ "$t" != raw ]; then
			cpu=$(median <<<"${CPU[$t,$n]}") csw=$(median <<<"${CSW[$t,$n]}") sc=${SYS[$t,$n]:-}
			# nbdkit serves each connection on threads that exit with it,
			# taking their counters along (their CPU time stays counted).
			[ "$t" != nbdkit ] || csw=n/a
		fi
		echo "| $n | $t | $(f0 "$io") | $(awk -v a="$io" -v b="$ri" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }') | $(f1 "$p50") | $(f1 "$p99") | $(f1 "$(awk -v a="$p50" -v b="$r50" 'BEGIN { print a - b }')") | $(f1 "$(awk -v a="$p99" -v b="$r99" 'BEGIN { print a - b }')") | $cpu | $csw | $sc |"
		[ "$t" != new ] || GOALS+=("$(awk -v n="$n" -v io="$io" -v ri="$ri" -v p="$p50" -v rp="$r50" 'BEGIN {
			if (n ~ /qd1$/) { d = p - rp; printf "- %s p50 %+.1f µs over raw io_uring (goal <= 30 µs): %s", n, d, (d <= 30 ? "met" : "**missed**") }
			else { g = (n ~ /^write-1m/ ? 0.9 : 0.5); r = (ri > 0 ? io / ri : 0); printf "- %s IOPS %.2fx raw io_uring (goal >= %.2fx): %s", n, r, g, (r >= g ? "met" : "**missed**") } }')")
	done
done
# CPU per I/O at QD1 no higher than at QD32: one outstanding I/O must not
# cost more than one of 32 batched ones.
for op in randread-4k randwrite-4k; do
	[ -n "${CPU[new,$op-qd1]:-}" ] && [ -n "${CPU[new,$op-qd32]:-}" ] || continue
	c1=$(median <<<"${CPU[new,$op-qd1]}") c32=$(median <<<"${CPU[new,$op-qd32]}")
	GOALS+=("$(awk -v n="$op" -v a="$c1" -v b="$c32" 'BEGIN { printf "- %s server CPU per I/O %.1f µs at QD1, %.1f µs at QD32 (goal: QD1 <= QD32): %s", n, a, b, (a <= b ? "met" : "**missed**") }')")
done
echo
printf '%s\n' "${GOALS[@]}"
echo
echo "Reproduce: bench/qd1.sh -s $SIZE_MIB -t $RUNTIME -r $ROUNDS${BASE:+ -B $BASE}${STRACE:+ -S}${ONLY:+ -W $ONLY}$([ "$CACHE" = direct ] || echo " -c $CACHE")"
